"""The S3 client's exceptions as the errors of ``storage.base``.

botocore raises ``ClientError`` for an S3 error answer (its code says what went wrong), its own
``BotoCoreError`` for client-side failures, and aiohttp or the event loop raise theirs when a connection
breaks. :class:`S3Errors` turns each into a ``StorageError`` subclass naming the endpoint, so that no
library exception leaves the S3 adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterator
from typing import NoReturn, TypeVar

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from oscar_manager.storage.base import (
    BucketNotFound,
    InvalidKey,
    ObjectNotFound,
    StorageError,
    StorageUnreachable,
)

_T = TypeVar("_T")

_NOT_FOUND_CODES = {"404", "NotFound", "NoSuchKey"}
_INVALID_CODES = {"InvalidBucketName", "KeyTooLongError", "InvalidObjectName"}
_ACCESS_CODES = {
    "403",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AllAccessDisabled",
    "ExpiredToken",
    "InvalidToken",
}
# Answers of a server that is there but not serving yet (MinIO starting up) or shedding load.
_NOT_READY_CODES = {"ServiceUnavailable", "SlowDown", "XMinioServerNotInitialized"}
# Raised by aiohttp or the event loop underneath aiobotocore when a connection breaks.
TRANSPORT_ERRORS = (aiohttp.ClientError, OSError)


def code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


class S3Errors:
    """Converts the exceptions of the requests to one endpoint (``where``, as named in messages)."""

    def __init__(self, where: str) -> None:
        self._where = where

    def fail(self, action: str, exc: Exception, bucket: str | None, key: str | None) -> NoReturn:
        if isinstance(exc, ClientError):
            answered = code(exc)
            message = exc.response.get("Error", {}).get("Message") or answered or f"HTTP {status(exc)}"
            if answered == "NoSuchBucket" and bucket is not None:
                raise BucketNotFound(f"bucket {bucket!r} does not exist") from None
            if answered in _NOT_FOUND_CODES and key is not None and bucket is not None:
                raise ObjectNotFound(f"object {key!r} not found in bucket {bucket!r}") from None
            if answered in _INVALID_CODES:
                raise InvalidKey(f"S3 storage at {self._where} refused to {action}: {message}") from None
            if answered in _ACCESS_CODES:
                raise StorageError(
                    f"S3 storage at {self._where}: access denied: cannot {action} ({answered}: {message})"
                ) from None
            fault = StorageUnreachable if answered in _NOT_READY_CODES or status(exc) == 503 else StorageError
            raise fault(f"S3 storage at {self._where}: cannot {action}: {answered}: {message}") from None
        unreachable = (
            BotoConnectionError | HTTPClientError | asyncio.TimeoutError | aiohttp.ClientError | OSError
        )
        if isinstance(exc, unreachable):
            raise StorageUnreachable(f"S3 storage at {self._where}: cannot {action}: {exc}") from None
        if isinstance(exc, BotoCoreError):
            raise StorageError(f"S3 storage at {self._where}: cannot {action}: {exc}") from None
        raise exc

    @contextlib.contextmanager
    def translate(self, action: str, bucket: str | None = None, key: str | None = None) -> Iterator[None]:
        """Convert the S3 client's exceptions raised in the block into the errors of ``storage.base``."""
        try:
            yield
        except (ClientError, BotoCoreError, *TRANSPORT_ERRORS) as exc:
            self.fail(action, exc, bucket, key)

    async def call(
        self, action: str, request: Awaitable[_T], bucket: str | None = None, key: str | None = None
    ) -> _T:
        """Await one S3 request, converting its exceptions."""
        try:
            return await request
        except (ClientError, BotoCoreError, *TRANSPORT_ERRORS) as exc:
            self.fail(action, exc, bucket, key)
