"""MinIO's Kafka target as an event source: bucket notifications delivered through a Kafka topic, for sites
that want a broker between the storage and the manager (``OSCAR_MINIO_NOTIFY=kafka``).

MinIO publishes the same document its webhook posts, so each message goes the webhook's way: its object
events are routed by the intake to the services whose input folders hold them, with the same dedup key
as the webhook, the listen stream and the reconcile scan give that upload. The offset is committed only
once the intake has them (a crash reads them again; the dedup key drops the duplicates). A message that
is no bucket notification is logged and passed over: it names no object, so no service's event.

The buckets' notification rules are :class:`events.minio_webhook.WebhookRules` for a target of kind
``kafka``; the target itself is registered like the webhook's (``Runtime``). Only the leader consumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from oscar_manager.domain.events import ObjectEvent, object_events, parse_json
from oscar_manager.domain.kafka_inputs import KafkaConnection
from oscar_manager.errors import OscarError
from oscar_manager.events.reconcile import Deliver

if TYPE_CHECKING:
    from oscar_manager.events.kafka_client import Consumer

log = logging.getLogger(__name__)


def notification_events(value: bytes | None) -> list[ObjectEvent] | None:
    """The object events of one message (keys URL-encoded, as in the webhook's posts); None if it is no
    bucket notification."""
    try:
        return object_events(parse_json(value or b""))
    except (OscarError, ValueError):
        return None


class MinioKafkaSource:
    def __init__(
        self,
        connection: KafkaConnection,
        *,
        topic: str,
        group_id: str,
        deliver: Deliver,
        max_backoff: float = 30.0,
    ) -> None:
        self._connection = connection
        self._topic = topic
        self._group_id = group_id
        self._deliver = deliver
        self._max_backoff = max_backoff
        self.error = ""  # why the consumer is down, while it is
        self.skipped = 0  # messages that were no bucket notification

    async def run(self, up: Callable[[], None] = lambda: None) -> None:
        from oscar_manager.events import kafka_client  # aiokafka: only with OSCAR_MINIO_NOTIFY=kafka

        delay = 0.5
        while True:
            try:
                async with kafka_client.consuming(
                    self._connection, group_id=self._group_id, topics=[self._topic]
                ) as consumer:
                    self.error = ""
                    delay = 0.5
                    up()
                    await self._consume(consumer)
            except kafka_client.BrokerError as exc:
                self.error = f"the Kafka brokers do not answer: {exc}"
                log.warning("consuming MinIO's notifications: %s; retrying in %.1f s", exc, delay)
            except Exception as exc:
                # The intake (database) may fail too: nothing was committed, so the messages come again.
                self.error = f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
                log.exception("consuming MinIO's notifications failed; retrying in %.1f s", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_backoff)

    async def _consume(self, consumer: Consumer) -> None:
        async with contextlib.aclosing(consumer.batches()) as batches:
            async for received in batches:
                events: list[ObjectEvent] = []
                for message in received:
                    found = notification_events(message.value)
                    if found is None:
                        self.skipped += 1
                        log.warning(
                            "passing over message %s/%d/%d of MinIO's topic: not a bucket notification",
                            message.topic,
                            message.partition,
                            message.offset,
                        )
                    else:
                        events += found
                if events:
                    await self._deliver(events)
                # Only now, with every event recorded: a crash before this reads them again.
                await consumer.commit_through(received)
