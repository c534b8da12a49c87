"""What only MinIO does, through miniopy-async: bucket notification streams, notification rules for a
webhook or Kafka target, and registering that target with the admin API. Objects themselves go through
``s3.py``.

This is the only module that imports miniopy_async; its errors become the errors of ``storage.base``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from miniopy_async.api import Minio
from miniopy_async.credentials.providers import StaticProvider
from miniopy_async.error import MinioAdminException, MinioException, S3Error
from miniopy_async.minioadmin import MinioAdmin
from miniopy_async.notificationconfig import NotificationConfig, PrefixFilterRule, QueueConfig

from oscar_manager.domain.documents import parse_json
from oscar_manager.errors import OscarError
from oscar_manager.storage.base import StorageError, StorageUnreachable

log = logging.getLogger(__name__)

OBJECT_CREATED = "s3:ObjectCreated:*"
# Our rules in a bucket's notification configuration carry this id prefix; rules of others are kept.
RULE_ID_PREFIX = "oscar-manager"
# A stream silent this long is dead (MinIO writes a keep-alive byte every 0.5 s).
LISTEN_READ_TIMEOUT = 30.0
TARGET_LOAD_GRACE = 10.0
_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


def webhook_arn(target: str, kind: str = "webhook") -> str:
    """The queue ARN of notification target ``target`` of ``kind`` (``webhook``, ``kafka``): the region part
    is left empty, as MinIO stores it."""
    return f"arn:minio:sqs::{target}:{kind}"


def covering_prefixes(prefixes: set[str]) -> list[str]:
    """The fewest prefixes that match the same keys: ``in/`` covers ``in/sub/``; ``""`` covers all."""
    kept: list[str] = []
    for prefix in sorted(prefixes):
        if not any(prefix.startswith(other) for other in kept):
            kept.append(prefix)
    return kept


@dataclass(frozen=True, slots=True)
class MinioEndpoint:
    url: str  # http(s)://host[:port]
    access_key: str
    secret_key: str
    region: str = ""
    verify: bool = True

    def parts(self) -> tuple[str, bool]:
        split = urlsplit(self.url)
        if split.scheme not in ("http", "https") or not split.netloc:
            raise StorageError(f"invalid MinIO endpoint {self.url!r}: expected http(s)://host[:port]")
        return split.netloc, split.scheme == "https"


class MinioExtras:
    """Notifications and admin calls on one MinIO server; open with :meth:`connect`."""

    def __init__(self, endpoint: MinioEndpoint, session: aiohttp.ClientSession) -> None:
        host, secure = endpoint.parts()
        self._endpoint = endpoint
        credentials = StaticProvider(endpoint.access_key, endpoint.secret_key)
        self._client = Minio(
            host,
            secure=secure,
            region=endpoint.region or None,
            credentials=credentials,
            cert_check=endpoint.verify,
            session=session,
        )
        self._admin = MinioAdmin(
            host, credentials=credentials, secure=secure, cert_check=endpoint.verify, session=session
        )

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, endpoint: MinioEndpoint) -> AsyncIterator[MinioExtras]:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=LISTEN_READ_TIMEOUT)
        connector = aiohttp.TCPConnector(ssl=True if endpoint.verify else False)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            yield cls(endpoint, session)

    @contextlib.contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        where = self._endpoint.url
        try:
            yield
        except S3Error as exc:
            raise StorageError(f"MinIO at {where} refused to {action}: {exc.code}: {exc.message}") from None
        except MinioAdminException as exc:
            raise StorageError(f"MinIO at {where} refused to {action}: {exc}") from None
        except (MinioException, ValueError) as exc:
            raise StorageError(f"MinIO at {where}: cannot {action}: {exc}") from None
        except _TRANSPORT_ERRORS as exc:
            raise StorageUnreachable(f"MinIO at {where} is unreachable: cannot {action}: {exc}") from None

    # --- ListenBucketNotification ------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def listen(self, bucket: str) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """Subscribe to object-created events of ``bucket``; entered once MinIO has the subscription in
        place (its first write), so every later upload is reported. Yields the records as they come; the
        iteration ends (or raises ``StorageError``) when the stream breaks."""
        with self._translate(f"listen to bucket {bucket!r}"):
            stream = await self._client.listen_bucket_notification(bucket, events=(OBJECT_CREATED,))
        response = stream._response  # the library closes the response itself only via ``async with``
        try:
            yield self._records(response, bucket)
        finally:
            response.close()

    async def _records(self, response: aiohttp.ClientResponse, bucket: str) -> AsyncIterator[dict[str, Any]]:
        while True:
            with self._translate(f"read events of bucket {bucket!r}"):
                line = await response.content.readline()
            if not line:
                return
            if not line.strip():
                continue  # keep-alive
            try:
                document = parse_json(line)
            except (ValueError, OscarError):  # not JSON, or beyond the limits of domain.documents
                log.warning("MinIO sent an unreadable event line for bucket %s: %.200r", bucket, line)
                continue
            for record in (document.get("Records") or []) if isinstance(document, dict) else []:
                if isinstance(record, dict):
                    yield record

    # --- notification rules for a webhook target ---------------------------------------------------

    async def set_webhook_rules(
        self, bucket: str, *, target: str, prefixes: set[str], kind: str = "webhook"
    ) -> None:
        """Make ``bucket`` notify ``target`` (a target of ``kind``: ``webhook`` or ``kafka``) of objects
        created under ``prefixes`` (and nothing else); rules that other tools put in the bucket's
        configuration are kept, and the manager's rules for another target go."""
        arn = webhook_arn(target, kind)
        with self._translate(f"configure notifications of bucket {bucket!r}"):
            current = await self._client.get_bucket_notification(bucket)
            foreign = [
                rule
                for rule in current.queue_config_list or []
                if rule.queue != arn and not (rule.config_id or "").startswith(RULE_ID_PREFIX)
            ]
            ours = [
                QueueConfig(
                    arn,
                    [OBJECT_CREATED],
                    config_id=f"{RULE_ID_PREFIX}:{prefix or '*'}",
                    prefix_filter_rule=PrefixFilterRule(prefix) if prefix else None,
                )
                for prefix in covering_prefixes(prefixes)
            ]
            config = NotificationConfig(
                cloud_func_config_list=current.cloud_func_config_list,
                queue_config_list=[*foreign, *ours],
                topic_config_list=current.topic_config_list,
            )
            # A MinIO that has just (re)started serves S3 before it has loaded its targets, and refuses
            # their ARNs meanwhile: retry for a few seconds.
            deadline = time.monotonic() + TARGET_LOAD_GRACE
            while True:
                try:
                    await self._client.set_bucket_notification(bucket, config)
                    return
                except S3Error as exc:
                    if exc.code != "InvalidArgument" or time.monotonic() > deadline:
                        raise
                await asyncio.sleep(0.1)

    # --- the webhook target (admin API) ------------------------------------------------------------

    async def webhook_target_exists(self, target: str, kind: str = "webhook") -> bool:
        with self._translate(f"read {kind} target {target!r}"):
            try:
                await self._admin.config_get(f"notify_{kind}:{target}")
            except MinioAdminException as exc:
                # MinIO's only signal for a missing target: XMinioConfigError "there is no target ...".
                if "there is no target" in str(exc):
                    return False
                raise
        return True

    async def register_webhook_target(
        self, target: str, *, endpoint: str, token: str, ready_within: float = 60
    ) -> None:
        """Save webhook target ``target`` and restart MinIO once so that it loads it (notification targets
        are not dynamic in MinIO): done once per deployment, not per service."""
        await self._register_target(
            "webhook", target, {"endpoint": endpoint, "auth_token": token, "enable": "on"}, ready_within
        )

    async def register_kafka_target(
        self, target: str, *, brokers: str, topic: str, ready_within: float = 60
    ) -> None:
        """Save Kafka target ``target`` (MinIO publishes each notification to ``topic``) and restart MinIO
        once so that it loads it, as for the webhook target."""
        await self._register_target(
            "kafka", target, {"brokers": brokers, "topic": topic, "enable": "on"}, ready_within
        )

    async def _register_target(
        self, kind: str, target: str, settings: dict[str, str], ready_within: float
    ) -> None:
        with self._translate(f"register {kind} target {target!r}"):
            await self._admin.config_set(f"notify_{kind}:{target}", settings)
            log.warning("restarting MinIO at %s once to load %s target %s", self._endpoint.url, kind, target)
            await self._admin.service_restart()
        deadline = time.monotonic() + ready_within
        while True:
            await asyncio.sleep(0.2)
            try:
                if await self.webhook_target_exists(target, kind):
                    return
            except StorageError:
                pass  # still restarting
            if time.monotonic() > deadline:
                raise StorageError(f"MinIO at {self._endpoint.url} did not load {kind} target {target!r}")
