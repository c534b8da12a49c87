"""Amazon S3 inputs: bucket notifications read from SQS queues, one long-poll loop per queue.

For each queue the services' ``s3.<id>`` inputs name (``domain.s3_inputs``), the consumer makes the input
buckets send their new objects to it (where the credentials may set the buckets' notification rules;
else the queue is taken as fed already), lists the input folders for what arrived while nobody read the
queue, then long-polls it. Each record is checked with a HEAD of its object (which write it is: see
``domain.s3_inputs``), recorded in the intake for every service whose input folder holds the object, and
only once that is committed is the message deleted: a crash in between brings the message back, and the
intake's dedup key makes its second delivery the same event. A message that names no object (malformed,
or a record the manager cannot read) is recorded as a failed event of the queue's services, with why,
then deleted. S3's own test message (``s3:TestEvent``) is deleted and nothing else.

Every replica consumes: SQS gives each message to one of them at a time, and the dedup key covers a
redelivery. A queue that cannot be read is retried with backoff and reported by the readiness answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

from oscar_manager.domain.events import InputRoute, ObjectEvent, now_rfc3339, object_records
from oscar_manager.domain.s3_inputs import QueueSource, routes_by_queue, s3_generation
from oscar_manager.domain.service import Service
from oscar_manager.errors import OscarError
from oscar_manager.events.following import FollowsInputs
from oscar_manager.events.reconcile import Enqueue
from oscar_manager.storage.base import InvalidKey, ObjectInfo, ObjectStore, StorageError
from oscar_manager.storage.queues import MessageQueue, QueueMessage

log = logging.getLogger(__name__)

PRINCIPAL = "s3"
Sources = Callable[[], Awaitable[tuple[list[Service], list[InputRoute]]]]
OpenQueue = Callable[[QueueSource], AbstractAsyncContextManager[MessageQueue]]
OpenStore = Callable[[QueueSource], Awaitable[ObjectStore]]
# (store, bucket, queue ARN, prefixes) -> False when the credentials may not set the bucket's rules.
SetRules = Callable[[ObjectStore, str, str, set[str]], Awaitable[bool]]
Deliver = Callable[[list[ObjectEvent], Callable[[list[InputRoute]], list[InputRoute]]], Awaitable[object]]
FailDelivery = Callable[[list[str], str, bytes, str], Awaitable[object]]


def s3_event(info: ObjectInfo, *, event_time: str, event_name: str, principal: str) -> ObjectEvent:
    """The event of an S3 object as a record or a listing found it: keyed by what both agree on."""
    return ObjectEvent(
        bucket=info.bucket,
        key=info.key,
        etag=info.etag,
        size=info.size,
        event_time=event_time,
        event_name=event_name,
        principal=principal,
        generation=s3_generation(info.last_modified),
    )


class S3QueueConsumer(FollowsInputs):
    def __init__(
        self,
        *,
        sources: Sources,
        open_queue: OpenQueue,
        open_store: OpenStore,
        set_rules: SetRules,
        deliver: Deliver,
        enqueue: Enqueue,
        fail: FailDelivery,
        refresh_interval: float = 10.0,
        max_backoff: float = 30.0,
        wait: int = 20,
    ) -> None:
        self._sources = sources
        self._open_queue = open_queue
        self._open_store = open_store
        self._set_rules = set_rules
        self._deliver = deliver
        self._enqueue = enqueue
        self._fail = fail
        super().__init__(refresh_interval)
        self._max_backoff = max_backoff
        self._wait = wait
        self._routes: dict[QueueSource, list[InputRoute]] = {}
        self._loops: dict[QueueSource, asyncio.Task[None]] = {}
        self._configured: dict[QueueSource, frozenset[tuple[str, str]]] = {}
        self._arns: dict[QueueSource, str] = {}  # of the queues being read
        self.connected: set[str] = set()
        self.errors: dict[str, str] = {}  # queue -> why it cannot be read, while it cannot

    @property
    def consuming(self) -> bool:
        """Whether any service reads a queue (else this consumer only looks for one now and then)."""
        return bool(self._loops)

    async def stop_all(self) -> None:
        await self._stop(set(self._loops))

    async def refresh(self) -> None:
        """Consume exactly the queues the services' S3 inputs name. A queue read already whose input
        folders changed gets its buckets' rules now, then its folders listed (a service added on it
        gets the objects of its first moments)."""
        services, routes = await self._sources()
        self._routes = routes_by_queue(services, routes)
        gone = set(self._loops) - set(self._routes)
        for source in gone & set(self._arns):
            try:  # no service reads the queue any more: its buckets stop sending to it
                await self._configure(source, self._arns[source])
            except Exception as exc:
                log.warning("removing the bucket rules of SQS queue %s: %s", source.label, exc)
        await self._stop(gone)
        for source in self._routes:
            if source not in self._loops:
                self._loops[source] = asyncio.create_task(self._consume(source), name=f"sqs-{source.label}")
            elif source in self._arns and self._configured.get(source) != self._folders(source):
                try:
                    await self._configure(source, self._arns[source])
                    await self._reconcile(source)
                except Exception as exc:  # its loop sets the rules again before its next poll
                    log.warning("updating the inputs of SQS queue %s: %s", source.label, exc)

    async def reconcile(self) -> int:
        """List every S3 input folder for objects newer than their service and offer them to the intake."""
        found = 0
        for source in list(self._routes):
            try:
                found += await self._reconcile(source)
            except StorageError as exc:  # its queue's loop reports the bucket's trouble
                log.warning("reconciling the inputs of SQS queue %s: %s", source.label, exc.message)
        return found

    async def _stop(self, sources: set[QueueSource]) -> None:
        tasks = [self._loops.pop(source) for source in sources]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for source in sources:
            self._arns.pop(source, None)
            self.connected.discard(source.label)
            self.errors.pop(source.label, None)
            self._configured.pop(source, None)

    def _selector(self, source: QueueSource) -> Callable[[list[InputRoute]], list[InputRoute]]:
        """Which of the registry's routes (read when the events are written) this queue feeds."""
        mine = {(route.service, route.provider) for route in self._routes.get(source, [])}
        return lambda routes: [route for route in routes if (route.service, route.provider) in mine]

    async def _consume(self, source: QueueSource) -> None:
        delay = 0.5
        while True:
            try:
                async with self._open_queue(source) as queue:
                    self._arns[source] = await queue.arn()
                    await self._configure(source, self._arns[source])
                    self.connected.add(source.label)
                    self.errors.pop(source.label, None)
                    delay = 0.5
                    # Reading: what arrived before (or while no manager read the queue) is found by listing.
                    await self._reconcile(source)
                    while True:
                        await self._configure_if_changed(source, queue)
                        for message in await queue.receive(wait=self._wait):
                            await self._handle(source, queue, message)
            except StorageError as exc:
                self.errors[source.label] = exc.message
                log.warning("reading SQS queue %s: %s; retrying in %.1f s", source.label, exc.message, delay)
            except Exception as exc:
                # The intake (database) may fail too: the message comes back once its visibility lapses.
                self.errors[source.label] = f"{type(exc).__name__}: {exc}"
                log.exception("reading SQS queue %s failed; retrying in %.1f s", source.label, delay)
            self.connected.discard(source.label)
            self._arns.pop(source, None)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_backoff)

    async def _configure_if_changed(self, source: QueueSource, queue: MessageQueue) -> None:
        if self._configured.get(source) != self._folders(source):
            await self._configure(source, await queue.arn())
            await self._reconcile(source)

    def _folders(self, source: QueueSource) -> frozenset[tuple[str, str]]:
        return frozenset((route.bucket, route.folder) for route in self._routes.get(source, []))

    async def _configure(self, source: QueueSource, arn: str) -> None:
        """Each input bucket sends its new objects under the input folders to the queue; a bucket no
        input is on any more stops sending to it."""
        folders = self._folders(source)
        store = await self._open_store(source)
        by_bucket: dict[str, set[str]] = {bucket: set() for bucket, _ in self._configured.get(source, ())}
        for bucket, folder in folders:
            by_bucket.setdefault(bucket, set()).add(f"{folder}/" if folder else "")
        for bucket, prefixes in sorted(by_bucket.items()):
            await self._set_rules(store, bucket, arn, prefixes)
        self._configured[source] = folders

    async def _reconcile(self, source: QueueSource) -> int:
        store = await self._open_store(source)
        count = 0
        for route in self._routes.get(source, []):
            since = route.since.replace(microsecond=0)
            prefix = f"{route.folder}/" if route.folder else ""
            for info in await store.list_objects(route.bucket, prefix):
                if info.last_modified >= since:
                    event = s3_event(
                        info,
                        event_time=now_rfc3339(),
                        event_name="s3:ObjectCreated:Put",
                        principal=PRINCIPAL,
                    )
                    await self._enqueue(route.service, event)
                    count += 1
        if count:
            log.info("reconciled %d object(s) of the inputs read from queue %s", count, source.label)
        return count

    async def _handle(self, source: QueueSource, queue: MessageQueue, message: QueueMessage) -> None:
        """Record the message's objects (or why it has none), then delete it: never before the record
        is committed."""
        try:
            events = await self._events(source, message)
        except _Unusable as exc:
            services = sorted({route.service for route in self._routes.get(source, [])})
            log.warning("SQS queue %s: message %s recorded as failed: %s", source.label, message.id, exc)
            await self._fail(services, f"sqs:{source.label}:{message.id}", message.body.encode(), str(exc))
        else:
            if events:
                await self._deliver(events, self._selector(source))
        await queue.delete(message)

    async def _events(self, source: QueueSource, message: QueueMessage) -> list[ObjectEvent]:
        try:
            document = json.loads(message.body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _Unusable("the message is not JSON") from None
        if isinstance(document, dict) and document.get("Type") == "Notification":
            # S3 -> SNS -> SQS: the notification is the SNS envelope's Message, as text.
            try:
                document = json.loads(str(document.get("Message")))
            except json.JSONDecodeError:
                raise _Unusable("the SNS envelope's Message is not JSON") from None
        if isinstance(document, dict) and document.get("Event") == "s3:TestEvent":
            return []  # sent by S3 when a notification rule is set: nothing to run
        try:
            found = object_records(document)
        except OscarError as exc:
            raise _Unusable(exc.message) from None
        if found is None:
            raise _Unusable("the message is not an S3 event notification (no S3 Records)")
        store = await self._open_store(source)
        events = []
        for record_event, _record in found:
            if not record_event.event_name.removeprefix("s3:").startswith("ObjectCreated"):
                continue
            events.append(await self._checked(store, record_event))
        return events

    async def _checked(self, store: ObjectStore, record: ObjectEvent) -> ObjectEvent:
        """The record's object as S3 shows it now: which write it is (``domain.s3_inputs``). An object
        gone already keeps the record's own values: its job fails, visibly, instead of nothing."""
        try:
            info = await store.stat(record.bucket, record.key)
        except InvalidKey as exc:
            raise _Unusable(exc.message) from None
        # Other failures (credentials refused, S3 down) leave the message for later: it comes back.
        if info is None:
            return record
        return s3_event(
            info, event_time=record.event_time, event_name=record.event_name, principal=record.principal
        )


class _Unusable(Exception):
    """A message that names no object to run on."""
