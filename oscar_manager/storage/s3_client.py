"""How the S3 adapter's aiobotocore client is configured: endpoint, credentials, timeouts, retries.

``storage.s3`` does the object operations over the client opened here; the two modules together are the
only importers of aiobotocore and botocore.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError

from oscar_manager.storage.base import StorageError

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client


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
) -> AsyncIterator[S3Client]:
    """An S3 client for ``endpoint`` (``""``: AWS), open until the block exits (see
    ``S3ObjectStore.connect`` for the arguments)."""
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
