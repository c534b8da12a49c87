"""Kafka topics as an event source: each service reads its topics as a consumer group of its own.

Every message is recorded in the intake (dedup key: service, provider, topic, partition, offset) before
its offset is committed, by hand: a manager killed in between reads the message again, and the intake
drops the duplicate; a broker that goes away is retried with backoff from the last commit, so nothing is
lost. A message no job could read (not JSON, not base64, no value) is recorded as a failed event with its
reason and committed like the others: the consumer moves on.

Only the leader consumes (``workers.leader``): one member per group, as one process follows MinIO, so
replicas coming and going do not rebalance the groups, and the intake's group commit sees every message.
The client library (aiokafka) is loaded only once a service has a Kafka input (``events.kafka_client``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from oscar_manager.domain.kafka_inputs import KafkaInput, kafka_inputs, message_dedup_key
from oscar_manager.domain.service import Service
from oscar_manager.errors import BadRequest
from oscar_manager.events.following import FollowsInputs
from oscar_manager.operations.intake import Message
from oscar_manager.storage.base import StorageUnavailable
from oscar_manager.storage.egress import EgressPolicy

if TYPE_CHECKING:
    from oscar_manager.events.kafka_client import Consumer, Received

log = logging.getLogger(__name__)

# Services with Kafka inputs, each with when it was created (messages older than it are not its events).
KafkaServices = Callable[[], Awaitable[list[tuple[Service, datetime]]]]
# Records a service's messages (``Intake.messages``); returns once they are committed to the database.
Record = Callable[[Service, list[Message]], Awaitable[object]]
# The service as it is now (a consumer outlives updates that leave its input alone), None once deleted.
Load = Callable[[str], Awaitable[Service | None]]


def service_inputs(service: Service) -> list[KafkaInput]:
    return kafka_inputs(
        service.name,
        [(io.storage_provider, io.path) for io in service.input],
        service.storage_providers.get("kafka", {}),
    )


class KafkaBrokers:
    """Checks at service create/update that the brokers of its Kafka inputs answer (``operations``
    calls it before anything is written)."""

    def __init__(self, egress: EgressPolicy, *, timeout: float) -> None:
        self._egress = egress
        self._timeout = timeout

    async def check(self, service: Service, *, previous: Service | None = None) -> None:
        """A 400 for a broker the manager may not connect to, a 503 naming the provider for brokers that
        do not answer; inputs the update leaves as they were are not checked again."""
        before = set(service_inputs(previous)) if previous is not None else set()
        inputs = [item for item in service_inputs(service) if item not in before]
        if not inputs:
            return
        from oscar_manager.events import kafka_client  # aiokafka: only with Kafka inputs

        for item in inputs:
            where = f"storage_providers.{item.connection.provider}.bootstrap_servers"
            for server in item.connection.bootstrap_servers:
                reason = self._egress.endpoint_refusal(f"kafka://{server}")
                if reason is not None:
                    raise BadRequest(
                        f"{where}: {server!r} is {reason}, which the manager does not connect to"
                    )
            try:
                await kafka_client.topics(item.connection, within=self._timeout)
            except kafka_client.BrokerError as exc:
                raise StorageUnavailable(
                    f"storage provider {item.connection.provider!r}: the Kafka brokers "
                    f"{', '.join(item.connection.bootstrap_servers)} do not answer ({exc})"
                ) from None


@dataclass(frozen=True, slots=True)
class _Follow:
    item: KafkaInput
    since_ms: int


class KafkaSource(FollowsInputs):
    def __init__(
        self,
        *,
        services: KafkaServices,
        load: Load,
        record: Record,
        refresh_interval: float = 10.0,
        max_backoff: float = 30.0,
    ) -> None:
        self._services = services
        self._load = load
        self._record = record
        super().__init__(refresh_interval)
        self._max_backoff = max_backoff
        self._consumers: dict[str, tuple[_Follow, asyncio.Task[None]]] = {}
        self.connected: set[str] = set()  # consumers (service/provider) in their group now
        self.errors: dict[str, str] = {}  # consumer -> why it is down, while it is

    async def stop_all(self) -> None:
        await self._stop(set(self._consumers))

    async def refresh(self) -> None:
        """One consumer per (service, provider); one whose input changed starts again with the change."""
        wanted: dict[str, _Follow] = {}
        for service, created in await self._services():
            try:
                items = service_inputs(service)
            except BadRequest as exc:  # stored before a check it would fail: say so, follow the rest
                log.error("service %s: its Kafka input cannot be followed: %s", service.name, exc.message)
                continue
            for item in items:
                since_ms = int(created.timestamp() * 1000)
                wanted[f"{service.name}/{item.connection.provider}"] = _Follow(item, since_ms)
        stale = {key for key, (follow, _task) in self._consumers.items() if wanted.get(key) != follow}
        await self._stop(stale)
        for key, follow in wanted.items():
            if key not in self._consumers:
                task = asyncio.create_task(self._follow(key, follow), name=f"kafka-{key}")
                self._consumers[key] = (follow, task)

    async def _stop(self, keys: set[str]) -> None:
        tasks = [self._consumers.pop(key)[1] for key in keys]
        for key in keys:
            self.errors.pop(key, None)
            self.connected.discard(key)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _follow(self, key: str, follow: _Follow) -> None:
        from oscar_manager.events import kafka_client  # aiokafka: only once a service has a Kafka input

        delay = 0.5
        item = follow.item
        while True:
            try:
                async with kafka_client.consuming(
                    item.connection, group_id=item.group_id, topics=list(item.topics)
                ) as consumer:
                    self.connected.add(key)
                    self.errors.pop(key, None)
                    delay = 0.5
                    await self._consume(consumer, follow)
            except kafka_client.BrokerError as exc:
                self.errors[key] = f"the Kafka brokers do not answer: {exc}"
                log.warning("consuming %s: %s; retrying in %.1f s", key, exc, delay)
            except Exception as exc:
                # The intake (database) may fail too: nothing was committed, so the messages come again.
                self.errors[key] = f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
                log.exception("consuming %s failed; retrying in %.1f s", key, delay)
            self.connected.discard(key)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_backoff)

    async def _consume(self, consumer: Consumer, follow: _Follow) -> None:
        async with contextlib.aclosing(consumer.batches()) as batches:
            async for received in batches:
                service = await self._load(follow.item.service)
                if service is None:
                    return  # deleted: the next refresh stops this consumer
                messages = [self._message(follow, m) for m in received if m.timestamp >= follow.since_ms]
                if messages:
                    await self._record(service, messages)
                # Only now, with every message recorded: a crash before this reads them again.
                await consumer.commit_through(received)

    @staticmethod
    def _message(follow: _Follow, received: Received) -> Message:
        item = follow.item
        key = message_dedup_key(
            item.service,
            item.connection.provider,
            received.topic,
            received.partition,
            received.offset,
            received.timestamp,
        )
        return Message(dedup_key=key, value=received.value)
