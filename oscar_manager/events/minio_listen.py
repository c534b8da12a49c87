"""The manager's own subscription to MinIO: one ListenBucketNotification stream per input bucket.

Nothing needs configuring in MinIO. Each stream reconnects with backoff; after every (re)connect the
bucket's input folders are listed and whatever arrived meanwhile is enqueued (the intake drops what it
already has), so an outage of MinIO or of the manager loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from oscar_manager.domain.events import InputRoute, object_events, watched
from oscar_manager.errors import OscarError
from oscar_manager.events.following import FollowsInputs
from oscar_manager.events.reconcile import Deliver, Enqueue, Routes, reconcile
from oscar_manager.storage.base import ObjectStore, StorageError

if TYPE_CHECKING:  # the adapter loads miniopy-async: imported by the runtime only when MinIO is on
    from oscar_manager.storage.minio import MinioExtras

log = logging.getLogger(__name__)

PRINCIPAL = "minio"


class MinioListener(FollowsInputs):
    def __init__(
        self,
        extras: MinioExtras,
        store: ObjectStore,
        *,
        routes: Routes,
        enqueue: Enqueue,
        deliver: Deliver,
        refresh_interval: float = 10.0,
        max_backoff: float = 30.0,
    ) -> None:
        self._extras = extras
        self._store = store
        self._routes = routes
        self._enqueue = enqueue
        self._deliver = deliver
        super().__init__(refresh_interval)
        self._max_backoff = max_backoff
        self._streams: dict[str, asyncio.Task[None]] = {}
        self._route_sets: dict[str, frozenset[tuple[str, str]]] = {}
        self.connected: set[str] = set()
        self.stream_errors: dict[str, str] = {}  # bucket -> why its stream is down, while it is

    async def stop_all(self) -> None:
        await self._stop_streams(set(self._streams))

    async def refresh(self) -> None:
        """Follow exactly the buckets that hold input folders; reconcile a followed bucket whose input
        folders changed (a service added on an existing bucket gets the objects of its first moments)."""
        routes = watched(await self._routes())
        by_bucket: dict[str, frozenset[tuple[str, str]]] = {}
        for route in routes:
            by_bucket[route.bucket] = by_bucket.get(route.bucket, frozenset()) | {
                (route.service, route.folder)
            }
        await self._stop_streams(set(self._streams) - set(by_bucket))
        changed = {
            bucket
            for bucket, route_set in by_bucket.items()
            if bucket in self.connected and self._route_sets.get(bucket) != route_set
        }
        self._route_sets = by_bucket
        for bucket in by_bucket:
            if bucket not in self._streams:
                self._streams[bucket] = asyncio.create_task(
                    self._follow(bucket), name=f"minio-listen-{bucket}"
                )
        if changed:
            await self._reconcile(routes, changed)

    async def _stop_streams(self, buckets: set[str]) -> None:
        tasks = [self._streams.pop(bucket) for bucket in buckets]
        for bucket in buckets:
            self.stream_errors.pop(bucket, None)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.connected -= buckets

    async def _reconcile(self, routes: list[InputRoute], buckets: set[str]) -> None:
        found = await reconcile(self._store, routes, self._enqueue, principal=PRINCIPAL, buckets=buckets)
        if found:
            log.info("reconciled %d object(s) in %s", found, ", ".join(sorted(buckets)))

    async def _record(self, bucket: str, record: dict[str, Any]) -> None:
        try:
            events = object_events({"Records": [record]}, encoded_keys=False) or []
        except OscarError as exc:
            log.warning("ignoring a malformed event record from bucket %s: %s", bucket, exc.message)
            return
        if events:
            await self._deliver(events)

    async def _follow(self, bucket: str) -> None:
        delay = 0.5
        while True:
            try:
                async with self._extras.listen(bucket) as records:
                    self.connected.add(bucket)
                    self.stream_errors.pop(bucket, None)
                    delay = 0.5
                    # Subscribed: what arrived before (or while we were away) is found by listing.
                    await self._reconcile(await self._routes(), {bucket})
                    async for record in records:
                        await self._record(bucket, record)
                log.warning("the event stream of bucket %s ended; reconnecting", bucket)
                self.stream_errors[bucket] = "the event stream ended"
            except StorageError as exc:
                self.stream_errors[bucket] = exc.message
                log.warning("listening to bucket %s: %s; retrying in %.1f s", bucket, exc.message, delay)
            except Exception as exc:
                # The intake (database) may fail too: keep following; the reconcile will catch up.
                self.stream_errors[bucket] = f"{type(exc).__name__}: {exc}"
                log.exception("listening to bucket %s failed; retrying in %.1f s", bucket, delay)
            self.connected.discard(bucket)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_backoff)
