"""How the S3 adapter's aiobotocore client is configured: endpoint, credentials, timeouts, retries, and
for the providers a service declares, where it may connect.

``storage.s3`` does the object operations over the client opened here; the ``s3_*`` modules of
``storage`` are the only importers of aiobotocore and botocore.

A guarded client (a ``ConnectGuard`` from ``storage.egress``) checks every address its connections go to,
in aiohttp's connector (``storage.guarded_connector``), after resolution and for IP literals alike, so
what is checked is what is connected: a redirect's new connection is checked the same way, and no proxy
is used (neither the environment's proxy variables nor botocore's settings).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession
from aiobotocore.session import get_session
from botocore import UNSIGNED
from botocore.exceptions import BotoCoreError, HTTPClientError
from botocore.httpsession import ProxyConfiguration

from oscar_manager.storage.base import StorageError
from oscar_manager.storage.egress import ConnectGuard, ProviderRefused
from oscar_manager.storage.guarded_connector import GuardedConnector

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client


class _GuardedSession(AIOHTTPSession):
    """aiobotocore's HTTP session with a guarded connector, no proxy, and the guard's refusal raised as
    itself (aiobotocore wraps it in an error botocore retries)."""

    guard: ClassVar[ConnectGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._proxy_config = ProxyConfiguration()

    async def _create_connector(self, proxy_url: str | None) -> aiohttp.TCPConnector:
        # As aiobotocore's own, minus the proxy (its attributes are private, not in its type stubs).
        ssl_context, _ = await asyncio.to_thread(self._build_ssl_contexts, None)  # type: ignore[attr-defined]
        limit: int = self._max_pool_connections  # type: ignore[attr-defined]
        connector_args: dict[str, Any] = self._connector_args  # type: ignore[attr-defined]
        return GuardedConnector(self.guard, limit=limit, ssl=ssl_context, **connector_args)

    async def send(self, request: Any) -> Any:
        try:
            return await super().send(request)
        except HTTPClientError as exc:
            error = exc.kwargs.get("error")
            if isinstance(error, ProviderRefused):
                raise error from None
            raise


def guarded_session(guard: ConnectGuard) -> type[AIOHTTPSession]:
    # aiobotocore instantiates the class itself, with fixed arguments: the guard travels as a class attribute.
    return type("GuardedSession", (_GuardedSession,), {"guard": guard})


def describe(endpoint: str, region: str) -> str:
    """The endpoint as error messages name it."""
    return endpoint.rstrip("/") if endpoint else f"AWS S3 ({region or 'default region'})"


@contextlib.asynccontextmanager
async def open_client(
    *,
    endpoint: str,
    access_key: str | None,
    secret_key: str | None,
    region: str,
    verify: bool | str,
    connect_timeout: float,
    read_timeout: float,
    max_attempts: int,
    max_pool_connections: int,
    guard: ConnectGuard | None = None,
    anonymous: bool = False,
) -> AsyncIterator[S3Client]:
    """An S3 client for ``endpoint`` (``""``: AWS), open until the block exits (see
    ``S3ObjectStore.connect`` for the arguments). With ``guard`` its connections are checked; with
    ``anonymous`` and no keys, requests are unsigned instead of signed with the ambient AWS credentials."""
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise StorageError(f"invalid S3 endpoint {endpoint!r}: expected http(s)://host[:port]")
    options: dict[str, Any] = {
        "connect_timeout": connect_timeout,
        "read_timeout": read_timeout,
        "retries": {"total_max_attempts": max_attempts, "mode": "standard"},
        "max_pool_connections": max_pool_connections,
        "signature_version": "s3v4",
        "s3": {"addressing_style": "path" if endpoint else "auto"},
    }
    if endpoint:
        # S3-compatible servers differ in their support of the CRC trailers that botocore sends and
        # checks by default since 1.36; send and check them only where S3 requires them.
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
    if guard is not None:
        options["http_session_cls"] = guarded_session(guard)
        options["proxies"] = {}
    if anonymous and not access_key:
        options["signature_version"] = UNSIGNED
    async with contextlib.AsyncExitStack() as stack:
        try:
            client = await stack.enter_async_context(
                get_session().create_client(
                    "s3",
                    endpoint_url=endpoint or None,
                    region_name=region or ("us-east-1" if endpoint else None),
                    aws_access_key_id=access_key or None,
                    aws_secret_access_key=secret_key or None,
                    verify=verify,
                    config=AioConfig(**options),
                )
            )
        except (BotoCoreError, ValueError) as exc:
            raise StorageError(
                f"S3 storage at {describe(endpoint, region)}: cannot create a client: {exc}"
            ) from None
        yield client
