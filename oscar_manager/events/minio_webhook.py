"""MinIO's webhook target as an event source: bucket notification rules for the manager's one target.

Upstream registers a webhook target per service and restarts MinIO each time (seconds per create). Here
one target serves every service: it posts to ``/events/minio`` and the intake routes each object to the
services whose input folder holds it, so creating a service only rewrites its buckets' rules.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from oscar_manager.domain.events import InputRoute, watched
from oscar_manager.storage.base import ObjectStore

if TYPE_CHECKING:  # the adapter loads miniopy-async: imported by the runtime only when MinIO is on
    from oscar_manager.storage.minio import MinioExtras

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/events/minio"


class WebhookRules:
    def __init__(
        self, extras: MinioExtras, store: ObjectStore, *, target: str, kind: str = "webhook"
    ) -> None:
        self._extras = extras
        self._store = store
        self._target = target
        self._kind = kind  # the target's: ``webhook``, or ``kafka`` (``events.minio_kafka``)
        # Until the target exists in MinIO (it cannot be registered before this manager answers on its
        # URL), rules naming it would be refused: :meth:`enable` applies them all once it does.
        self.enabled = False

    async def enable(self, routes: Iterable[InputRoute]) -> None:
        self.enabled = True
        routes = list(routes)
        await self.apply(routes, {route.bucket for route in watched(routes)})

    async def apply(self, routes: Iterable[InputRoute], buckets: set[str]) -> None:
        """Make each of ``buckets`` notify the target of objects under the input folders ``routes``
        give it (none: the bucket's rules for the target are removed)."""
        if not self.enabled:
            return
        routes = watched(routes)
        for bucket in sorted(buckets):
            prefixes = {
                f"{route.folder}/" if route.folder else "" for route in routes if route.bucket == bucket
            }
            if not prefixes and not await self._store.bucket_exists(bucket):
                continue  # gone already: nothing to notify about
            await self._extras.set_webhook_rules(
                bucket, target=self._target, prefixes=prefixes, kind=self._kind
            )


async def ensure_target(extras: MinioExtras, *, target: str, endpoint: str, token: str) -> None:
    """Register the webhook target unless MinIO already has it (e.g. from its environment)."""
    if await extras.webhook_target_exists(target):
        log.info("MinIO webhook target %s is present", target)
        return
    await extras.register_webhook_target(target, endpoint=endpoint, token=token)
    log.info("registered MinIO webhook target %s -> %s", target, endpoint)
