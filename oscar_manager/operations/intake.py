"""The durable intake: every event is recorded, with its dedup key, before it is acknowledged.

Who a job belongs to (its owner, who may list it: ``operations.jobs``) is recorded with its event: the
OIDC user who invoked, or for a storage event the user whose own MinIO user uploaded the object
(``operations.uploaders``). Every delivery of one upload has the same dedup key, so one event and one job;
the first delivery recorded decides its owner, except that an event recorded without one (found by a
listing, which cannot tell who uploaded) takes the uploader a later delivery of MinIO's names.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from oscar_manager.domain.events import (
    WATCHED_PROVIDER,
    InputRoute,
    ObjectEvent,
    bounded_key,
    decode_payload,
    input_folders,
    notification,
    object_records,
    parse_json,
    payload_dedup_key,
    watched,
)
from oscar_manager.domain.jobs import job_name
from oscar_manager.domain.service import Service
from oscar_manager.errors import OscarError
from oscar_manager.operations.offload import off_loop
from oscar_manager.operations.uploaders import Uploaders
from oscar_manager.registry import Database, NewEvent, Transaction, WriteBatch
from oscar_manager.supervisor.reads import check_invocation, storage_reads


@dataclass(frozen=True, slots=True)
class Accepted:
    job_ids: list[str]
    new: int


@dataclass(frozen=True, slots=True)
class Routed:
    """What became of a batch of storage events."""

    new: int  # (service, object) events recorded for the first time
    duplicates: int  # already recorded: a redelivery, or found by two listeners
    ignored: int  # under no service's input folder (unknown bucket or prefix, folder markers)


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a broker for one service (``events.kafka``): its value is the job's event."""

    dedup_key: str
    value: bytes | None  # None: a tombstone (a key with no value), which no job can read


def _message_event(service: Service, message: Message) -> NewEvent:
    """The event of a message; one no job could ever read (a poison message) is recorded as failed with
    the reason, so the consumer moves on past it and the failure stays visible."""
    error = None
    if message.value is None:
        error = "the message has no value (a tombstone)"
    else:
        try:
            check_invocation(message.value, service=service, any_bucket=False)
        except OscarError as exc:
            error = f"the message cannot be a job's event: {exc.message}"
    return NewEvent(
        dedup_key=message.dedup_key,
        service=service.name,
        job_id=job_name(service.name, message.dedup_key),
        payload=message.value or b"",
        error=error,
    )


@dataclass(frozen=True, slots=True)
class _Item:
    """One job a request asks for."""

    dedup_key: str
    payload: bytes
    # The access key MinIO names as the object's writer, for an object of the manager's own storage.
    uploader: str = ""


def _single_record(document: dict[str, Any], record: Any) -> bytes:
    return json.dumps({**document, "Records": [record]}).encode()


def _own_storage_uploader(service: Service, event: ObjectEvent) -> str:
    """The event's uploader if its object is on the manager's own storage (each of the service's inputs
    holding it is): another storage's access keys name none of the manager's users."""
    holding = [folder for folder in input_folders(service) if folder.matches(event.bucket, event.key)]
    return event.uploader if holding and all(f.provider == WATCHED_PROVIDER for f in holding) else ""


def _items(
    service: Service, body: bytes, idempotency_key: str | None, legacy_until: datetime | None
) -> list[_Item]:
    """Each job a body asks for; raises 400 (or 403 for a storage event the job may not read) before
    anything is written."""
    document = parse_json(body)
    found = object_records(document)
    if found:
        assert isinstance(document, dict)
        # Folder markers (``in/sub/``, made by MinIO's console) are no one's input, as on /events/minio:
        # MinIO posting one here gets its 201 and no job, not a 400 it would retry.
        pairs = [(e, r) for e, r in found if not e.key.endswith("/")]
        # A job runs later, unattended and with no record of who asked for it: whoever sends it, its
        # storage events name objects under the service's inputs (the admin reads elsewhere with /run).
        storage_reads(service, [event for event, _ in pairs], any_bucket=False)
        whole = len(pairs) == 1 and len(found) == 1
        return [
            _Item(
                event.dedup_key(service.name, legacy_until=legacy_until),
                body if whole else _single_record(document, record),
                _own_storage_uploader(service, event),
            )
            for event, record in pairs
        ]
    decode_payload(body)  # a plain invocation must be JSON or base64, as the supervisor will read it
    return [_Item(payload_dedup_key(service.name, idempotency_key), body)]


def _new_event(service: str, item: _Item, owner: str | None) -> NewEvent:
    return NewEvent(
        dedup_key=item.dedup_key,
        service=service,
        job_id=job_name(service, item.dedup_key),
        payload=item.payload,
        owner=owner,
    )


def _accepted(events: list[NewEvent], recorded: list[bool]) -> Accepted:
    return Accepted(job_ids=[event.job_id for event in events], new=sum(recorded))


async def _record_upload(tx: Transaction, event: NewEvent) -> bool:
    """Record one delivery of an upload: False if already recorded (a redelivery, another source, a
    listing), which then takes the uploader this delivery names if it has no owner yet. Only the
    event's owner and its job's change, never the event itself: one upload is still one job."""
    [new] = await tx.events.enqueue_many([event])
    # The event first, then its job (if made already): a dispatch under way, which makes the job from
    # the event in the same transaction as its claim, holds the event's row until it commits, after
    # which the job row is there to fill. An event that had an owner gave it to its job.
    if not new and event.owner is not None and await tx.events.fill_owner(event.dedup_key, event.owner):
        await tx.jobs.fill_owner(event.job_id, event.owner)
    return new


class Intake:
    """Records events, and has the dispatcher claim them in the same transaction. Events arriving at the
    same time are written by one statement and committed together (group commit): each caller is
    answered once its own events are committed.

    ``dispatch`` is called once events are queued for writing (``Dispatcher.claim_after_writes``): the
    claim it queues runs after them in their transaction, so an event arriving alone costs one commit
    for its record and its claim.
    """

    def __init__(
        self, database: Database, *, dispatch: Callable[[], None], uploaders: Uploaders | None = None
    ) -> None:
        self._database = database
        self._dispatch = dispatch
        # None: users have no MinIO users of their own (no OIDC, or no MinIO), so no upload is a user's.
        self._uploaders = uploaders
        # Events of requests arriving together: one INSERT, one commit.
        self._batch: WriteBatch[NewEvent, bool] = WriteBatch(
            database, lambda tx, events: tx.events.enqueue_many(events), after_queued=dispatch
        )
        # Storage events since start: new, duplicates, ignored (shown by /system/info).
        self.counters: Counter[str] = Counter()
        self._legacy_until: datetime | None = None
        self._legacy_read = False

    async def _legacy_object_keys_until(self) -> datetime | None:
        """Until when object events were keyed by ETag alone (``ObjectEvent.dedup_key``); read once, as
        only a migration sets it."""
        if not self._legacy_read:
            async with self._database.reading() as tx:
                self._legacy_until = await tx.marks.legacy_object_keys_until()
            self._legacy_read = True
        return self._legacy_until

    async def _owners(self, uploaders: Iterable[str]) -> dict[str, str]:
        """access key -> uid, for the uploaders that are users' own MinIO users."""
        return {} if self._uploaders is None else await self._uploaders.owners(uploaders)

    async def invocation(
        self, *, service: Service, body: bytes, idempotency_key: str | None, owner: str | None = None
    ) -> Accepted:
        """``owner``: the OIDC user invoking, recorded on the jobs so they can list them. Without one
        (the service's token, as MinIO configured like upstream's posts with, or the admin), the jobs of
        storage events are the uploader's, as upstream takes them (``principalId``).

        Unlike the manager's own MinIO sources (:meth:`storage_events`), an event already recorded is
        left as it is: whoever holds the service's token can name any uploader here."""
        if owner and idempotency_key:
            # A user's Idempotency-Key names their own request, never the job of someone else.
            idempotency_key = f"{owner}\n{idempotency_key}"
        legacy_until = await self._legacy_object_keys_until()
        items = await off_loop(lambda: _items(service, body, idempotency_key, legacy_until), size=len(body))
        if not items:  # folder markers only
            return Accepted(job_ids=[], new=0)
        uploaded = {} if owner is not None else await self._owners(item.uploader for item in items)
        events = [_new_event(service.name, item, owner or uploaded.get(item.uploader)) for item in items]
        return _accepted(events, await self._batch.add(events))

    async def messages(self, *, service: Service, messages: list[Message]) -> Accepted:
        """Messages a broker delivered to ``service``, recorded (poison ones as failed events) before the
        caller acknowledges them; a redelivery has the same dedup key and is dropped. The jobs have no
        owner: the broker does not say who wrote a message."""
        events = await off_loop(
            lambda: [_message_event(service, message) for message in messages],
            size=sum(len(message.value or b"") for message in messages),
        )
        return _accepted(events, await self._batch.add(events))

    async def object_event(self, *, service: str, event: ObjectEvent) -> Accepted:
        """An object a listing found (``events.reconcile``). A listing does not tell who uploaded it, so
        its event has no owner; a delivery of MinIO's naming the uploader may still give it one
        (:meth:`storage_events`)."""
        payload = json.dumps(notification(event)).encode()
        legacy_until = await self._legacy_object_keys_until()
        item = _Item(event.dedup_key(service, legacy_until=legacy_until), payload)
        events = [_new_event(service, item, None)]
        return _accepted(events, await self._batch.add(events))

    async def storage_events(
        self,
        events: list[ObjectEvent],
        *,
        sources: Callable[[list[InputRoute]], list[InputRoute]] = watched,
    ) -> Routed:
        """Record each object event for every service whose input folder holds the object.

        ``sources``: which inputs the events' source reports on (the manager's own storage by default; a
        queue of Amazon S3 gives the inputs that read it).

        Routes are read in the same transaction as the events are written, so a service created a moment
        ago gets its events, and a deleted one none (those of the events' buckets only: a scan in the
        database, not every service's inputs read). The jobs are the uploader's (``ObjectEvent.uploader``)
        when that is a user's own MinIO user: the sources calling this are MinIO's own records (the listen
        stream, the webhook) and the folder watcher, whose events name no uploader.
        """

        legacy_until = await self._legacy_object_keys_until()
        owners = await self._owners(event.uploader for event in events)

        async def route(tx: Transaction) -> Routed:
            new = duplicates = ignored = 0
            routes = sources(await tx.services.input_routes(buckets={event.bucket for event in events}))
            for event in events:
                targets = [route for route in routes if route.matches(event.bucket, event.key)]
                if not targets or event.key.endswith("/"):
                    ignored += 1
                    continue
                payload = json.dumps(notification(event)).encode()
                owner = owners.get(event.uploader)
                for route in targets:
                    item = _Item(event.dedup_key(route.service, legacy_until=legacy_until), payload)
                    recorded = await _record_upload(tx, _new_event(route.service, item, owner))
                    new += recorded
                    duplicates += not recorded
            return Routed(new=new, duplicates=duplicates, ignored=ignored)

        written = self._database.queue_write(route)
        self._dispatch()
        routed = await written
        self.counters.update(new=routed.new, duplicates=routed.duplicates, ignored=routed.ignored)
        return routed

    async def failed_deliveries(
        self, *, services: Iterable[str], dedup_key: str, payload: bytes, reason: str
    ) -> int:
        """Record a delivery that names no object it could run on (a malformed message) as a failed event
        of each of ``services``, with ``reason``, so it is visible and never retried; returns how many
        were new (a redelivery of it is recorded once)."""
        keyed = [
            NewEvent(dedup_key=key, service=name, job_id=job_name(name, key), payload=payload)
            for name in sorted(set(services))
            for key in [bounded_key(f"{dedup_key}:{name}")]
        ]
        if not keyed:
            return 0
        async with self._database.transaction() as tx:
            new = await tx.events.enqueue_many(keyed)
            await tx.events.fail_recorded(
                [event.dedup_key for event, fresh in zip(keyed, new, strict=True) if fresh], error=reason
            )
        self.counters.update(failed=sum(new))
        return sum(new)
