"""The Kafka client (aiokafka) behind ``events.kafka``: the only module that imports it, itself imported only
once a service has a Kafka input (or one is being created), so an idle manager never loads it."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]
from aiokafka.helpers import create_ssl_context  # type: ignore[import-untyped]

from oscar_manager.domain.kafka_inputs import KafkaConnection

# How long one metadata request or connection attempt may take before the brokers count as unreachable.
REQUEST_TIMEOUT_MS = 10_000
# Messages taken at once; while none comes, how often the brokers are asked whether they are still there.
BATCH_RECORDS = 500
HEALTH_INTERVAL = 5.0
# A consumer leaving its group tells the brokers; with them gone it would retry for long: given up after this.
STOP_WITHIN = 5.0


class BrokerError(Exception):
    """The brokers could not be reached or refused what was asked (the reason is the client's)."""


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    partition: int
    offset: int
    timestamp: int  # milliseconds since the epoch
    value: bytes | None


def _ssl_context(connection: KafkaConnection) -> ssl.SSLContext | None:
    if not connection.security_protocol.endswith("SSL"):
        return None
    context: ssl.SSLContext = create_ssl_context(cadata=connection.ca_cert or None)
    if not connection.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _options(connection: KafkaConnection) -> dict[str, Any]:
    options: dict[str, Any] = {
        "bootstrap_servers": list(connection.bootstrap_servers),
        "security_protocol": connection.security_protocol,
        "ssl_context": _ssl_context(connection),
        "request_timeout_ms": REQUEST_TIMEOUT_MS,
        "client_id": "oscar-manager",
    }
    if connection.sasl_mechanism:
        options |= {
            "sasl_mechanism": connection.sasl_mechanism,
            "sasl_plain_username": connection.sasl_username,
            "sasl_plain_password": connection.sasl_password,
        }
    return options


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, KafkaError) else f"{type(exc).__name__}: {text}"


async def topics(connection: KafkaConnection, *, within: float) -> set[str]:
    """The topics the brokers show: answers once they are reachable (and the login works), else
    :class:`BrokerError` within about ``within`` seconds."""
    consumer = AIOKafkaConsumer(**_options(connection), enable_auto_commit=False)
    try:
        async with asyncio.timeout(within):
            await _start(consumer)
            found: set[str] = await consumer.topics()
            return found
    except (KafkaError, OSError, TimeoutError) as exc:
        raise BrokerError(_reason(exc)) from None
    finally:
        await _stop(consumer)


class Consumer:
    """A consumer group member reading some topics, committing only what it is told to."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        # A fetch still waiting when its batch gave up: the next batch takes its answer.
        self._fetch: asyncio.Task[dict[Any, list[Any]]] | None = None

    async def batch(self, *, wait: float, max_records: int) -> list[Received]:
        """What arrived within about ``wait`` seconds. While the group has given this member no partitions
        (e.g. with the brokers gone) the client waits for an assignment for ever: the fetch is then left
        running, not cancelled (the client takes cancellations badly), and this answers nothing."""
        if self._fetch is None:
            self._fetch = asyncio.ensure_future(
                self._consumer.getmany(timeout_ms=int(wait * 1000), max_records=max_records)
            )
        done, _ = await asyncio.wait({self._fetch}, timeout=wait + 1.0)
        if not done:
            return []
        fetch, self._fetch = self._fetch, None
        try:
            found = fetch.result()
        except KafkaError as exc:
            raise BrokerError(_reason(exc)) from None
        return [
            Received(
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                timestamp=record.timestamp,
                value=record.value,
            )
            for records in found.values()
            for record in records
        ]

    async def batches(self) -> AsyncGenerator[list[Received], None]:
        """Batches as they arrive, for ever. While none does, the brokers are asked every
        :data:`HEALTH_INTERVAL` whether they are still there (a :class:`BrokerError` when they are not)."""
        checked = time.monotonic()
        while True:
            received = await self.batch(wait=1.0, max_records=BATCH_RECORDS)
            if received:
                checked = time.monotonic()
                yield received
            elif time.monotonic() - checked > HEALTH_INTERVAL:
                await self.check()
                checked = time.monotonic()

    async def commit_through(self, received: list[Received]) -> None:
        """Record in the group that ``received`` is read: each (topic, partition) up to its last offset."""
        next_offsets: dict[tuple[str, int], int] = {}
        for message in received:
            place = (message.topic, message.partition)
            next_offsets[place] = max(next_offsets.get(place, 0), message.offset + 1)
        await self.commit(next_offsets)

    async def commit(self, next_offsets: dict[tuple[str, int], int]) -> None:
        """Record in the group that each (topic, partition) is read up to (not including) its offset."""
        try:
            await self._consumer.commit(
                {
                    TopicPartition(topic, partition): offset
                    for (topic, partition), offset in next_offsets.items()
                }
            )
        except KafkaError as exc:
            raise BrokerError(_reason(exc)) from None

    def close(self) -> None:
        if self._fetch is not None:
            self._fetch.cancel()

    async def check(self) -> None:
        """Ask the brokers for their metadata: while they are down the client retries quietly, and this is
        what tells that it does."""
        try:
            await self._consumer.topics()
        except KafkaError as exc:
            raise BrokerError(_reason(exc)) from None


@contextlib.asynccontextmanager
async def consuming(
    connection: KafkaConnection, *, group_id: str, topics: list[str]
) -> AsyncIterator[Consumer]:
    """A member of ``group_id`` subscribed to ``topics``. A group with no committed offset starts at the
    oldest message (the caller skips those older than its service); offsets are committed by hand only."""
    consumer = AIOKafkaConsumer(
        *topics,
        **_options(connection),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # A topic made after the subscription is found within this (the default is five minutes).
        metadata_max_age_ms=10_000,
    )
    try:
        try:
            await _start(consumer)
        except KafkaError as exc:
            raise BrokerError(_reason(exc)) from None
        reader = Consumer(consumer)
        try:
            yield reader
        finally:
            reader.close()
    finally:
        await _stop(consumer)


async def _start(consumer: AIOKafkaConsumer) -> None:
    """Start, and when cancelled meanwhile let the start end first (within ``STOP_WITHIN``): a consumer
    whose start was cut short leaves the connections it opened to the garbage collector when stopped."""
    starting = asyncio.ensure_future(consumer.start())
    starting.add_done_callback(lambda task: task.cancelled() or task.exception())
    try:
        await asyncio.shield(starting)
    except asyncio.CancelledError:
        await asyncio.wait({starting}, timeout=STOP_WITHIN)
        raise


async def _stop(consumer: AIOKafkaConsumer) -> None:
    """Stop in a task of its own: the client's stop can end in a ``CancelledError`` of its own fetch task
    (with the brokers gone), which must not cancel the caller; and give up after ``STOP_WITHIN``."""
    stopping = asyncio.ensure_future(consumer.stop())
    stopping.add_done_callback(lambda task: task.cancelled() or task.exception())
    await asyncio.wait({stopping}, timeout=STOP_WITHIN)
