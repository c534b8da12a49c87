"""Buckets in MinIO or AWS S3, through aiobotocore: the storage of the cluster deployment.

Open a store with :meth:`S3ObjectStore.connect`, an async context manager that owns the client (and its
connection pool)::

    async with S3ObjectStore.connect(endpoint="https://minio.example", access_key=a, secret_key=s) as store:
        await store.ensure_folder("photos", "input")

A long-lived owner (the manager, for its whole lifetime) enters it on an ``AsyncExitStack`` at startup and
closes the stack at shutdown::

    stack = contextlib.AsyncExitStack()
    store = await stack.enter_async_context(S3ObjectStore.connect(...))
    ...
    await stack.aclose()

Semantics follow ``LocalObjectStore`` where S3 allows: every operation on a missing bucket raises
``BucketNotFound``; a missing object is ``None`` (``stat``), ``False`` (``delete_object``) or
``ObjectNotFound``. Folders are zero-byte ``folder/`` marker objects, as OSCAR creates them, and are never
listed as objects. Differences that S3 imposes:

- ``last_modified`` is truncated to whole seconds: ``HEAD`` and ``GET`` report seconds only while listings
  carry milliseconds, and the same object must look the same whichever way it was found.
- ``etag`` is the S3 ETag without quotes (the MD5 of the content, or ``<md5>-<parts>`` for multipart
  uploads): re-uploading identical content keeps it.
- A file and a folder may share a name (``a`` and ``a/b``), so there are no ``Conflict`` errors.
- ``put_stream`` reads up to one part (8 MiB) before its first request, so an unknown bucket is reported
  after that much of the stream has been consumed.

Every botocore, aiobotocore and aiohttp exception is converted to the errors of ``storage.base``
(``storage.s3_errors``). The parts of the adapter live beside this class: ``s3_client`` (configures the
client), ``s3_errors``, ``s3_answers`` (reads the answers), ``s3_buckets`` (requests on whole buckets),
``s3_upload`` (streamed and multipart puts) and ``s3_files`` (upload sources and staged downloads).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from botocore.exceptions import BotoCoreError, ClientError

from oscar_manager.storage import s3_answers as answers
from oscar_manager.storage import s3_buckets as buckets
from oscar_manager.storage.base import BucketNotFound, ObjectInfo, ObjectNotFound, StorageError
from oscar_manager.storage.blocking import run_blocking as _blocking
from oscar_manager.storage.egress import ConnectGuard
from oscar_manager.storage.keys import is_valid_key, validate_bucket, validate_key
from oscar_manager.storage.s3_client import describe, open_client
from oscar_manager.storage.s3_errors import TRANSPORT_ERRORS, S3Errors, code, status
from oscar_manager.storage.s3_files import StagedDownload, open_source
from oscar_manager.storage.s3_upload import upload_stream

if TYPE_CHECKING:
    from aiobotocore.response import StreamingBody
    from types_aiobotocore_s3.client import S3Client

READ_CHUNK = 64 * 1024
COPY_CHUNK = 1024 * 1024


async def _file_chunks(handle: BinaryIO, source: Path) -> AsyncIterator[bytes]:
    def read() -> bytes:
        try:
            return handle.read(COPY_CHUNK)
        except OSError as exc:
            raise StorageError(f"cannot read {str(source)!r}: {exc.strerror or exc}") from None

    while data := await _blocking(read):
        yield data


class S3ObjectStore:
    """An ``ObjectStore`` over the buckets of one S3 endpoint (MinIO, AWS or any S3-compatible server)."""

    def __init__(self, client: S3Client, *, where: str, region: str = "") -> None:
        """Wrap an open aiobotocore S3 client (closed by its owner); prefer :meth:`connect`."""
        self._client = client
        self._where = where
        self._errors = S3Errors(where)
        self._region = region

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        *,
        endpoint: str,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str = "",
        verify: bool | str = True,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_attempts: int = 3,
        max_pool_connections: int = 32,
        guard: ConnectGuard | None = None,
        anonymous: bool = False,
    ) -> AsyncIterator[S3ObjectStore]:
        """A store on ``endpoint`` (``""`` for AWS S3), with its client open until the block exits.

        ``endpoint`` is a URL such as ``https://minio.example:9000``; custom endpoints use path-style
        addressing (``endpoint/bucket/key``) as MinIO needs. Without ``access_key`` the usual AWS
        credential chain (environment, profile, instance role) is used. ``verify`` is ``False`` to skip TLS
        verification or the path of a CA bundle. ``max_attempts`` counts the first try: each request is
        retried (with backoff) on throttling, 5xx answers and connection failures. ``guard`` checks every
        address the client connects to (``ProviderRefused`` when it refuses one); ``anonymous`` sends
        unsigned requests when there is no ``access_key`` (for endpoints a service names: the manager's
        own AWS credentials are not theirs).
        """
        async with open_client(
            endpoint=endpoint,
            access_key=access_key,
            secret_key=secret_key,
            region=region,
            verify=verify,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_attempts=max_attempts,
            max_pool_connections=max_pool_connections,
            guard=guard,
            anonymous=anonymous,
        ) as client:
            yield cls(client, where=describe(endpoint, region), region=region)

    @property
    def client(self) -> S3Client:
        """The open client, for the adapter's own modules (``s3_queue_rules``)."""
        return self._client

    @property
    def where(self) -> str:
        """The endpoint, as named in error messages."""
        return self._where

    async def _require_bucket(self, bucket: str) -> None:
        """Raise ``BucketNotFound`` unless ``bucket`` exists (after a 404 that may mean either)."""
        if not await self.bucket_exists(bucket):
            raise BucketNotFound(f"bucket {bucket!r} does not exist")

    # --- the ObjectStore protocol -------------------------------------------------------------------

    async def ensure_bucket(self, bucket: str) -> None:
        """Create ``bucket``: if it exists and is ours, fine; if someone else's, a ``Conflict``."""
        validate_bucket(bucket)
        await buckets.create_bucket(self._client, self._errors, bucket, region=self._region)

    async def ensure_folder(self, bucket: str, folder: str) -> None:
        """Create ``bucket`` if needed and the zero-byte marker ``folder/`` unless it exists already.

        Only the folder's own marker is created (``a/b`` does not create ``a/``), as OSCAR does. An
        existing marker is not rewritten (that would be a new upload, and an event for the folder itself):
        the put is conditional (``If-None-Match: *``), one round trip instead of a HEAD and a PUT.
        """
        validate_bucket(bucket)
        marker = validate_key(folder, folder=True).removesuffix("/") + "/"
        await self.ensure_bucket(bucket)
        try:
            await self._client.put_object(Bucket=bucket, Key=marker, Body=b"", IfNoneMatch="*")
        except ClientError as exc:
            if code(exc) == "PreconditionFailed" or status(exc) == 412:
                return  # there already
            self._errors.fail(f"create folder {marker!r} in bucket {bucket!r}", exc, bucket, None)
        except (BotoCoreError, *TRANSPORT_ERRORS) as exc:
            self._errors.fail(f"create folder {marker!r} in bucket {bucket!r}", exc, bucket, None)

    async def bucket_exists(self, bucket: str) -> bool:
        """Whether ``bucket`` exists; one we may not access is a ``StorageError`` (access denied)."""
        validate_bucket(bucket)
        return await buckets.bucket_exists(self._client, self._errors, bucket)

    async def list_buckets(self) -> list[str]:
        return await buckets.bucket_names(self._client, self._errors)

    async def list_objects(self, bucket: str, prefix: str = "", *, markers: bool = False) -> list[ObjectInfo]:
        """Objects whose key starts with ``prefix`` (a plain string match), sorted; folder markers (keys
        ending in ``/``) only with ``markers``.

        Keys that this API could not address (``a//b``, control characters, written by other clients)
        are skipped, as the local store skips such file names.
        """
        validate_bucket(bucket)
        found: list[ObjectInfo] = []
        with self._errors.translate(f"list bucket {bucket!r}", bucket):
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            async for page in pages:
                for item in page.get("Contents", []):
                    info = answers.listed(bucket, item, where=self._where)
                    marker = info.key.endswith("/")
                    if (marker and not markers) or not is_valid_key(info.key, folder=marker):
                        continue
                    found.append(info)
        found.sort(key=lambda info: info.key)
        return found

    async def _head(self, bucket: str, key: str) -> ObjectInfo | None:
        try:
            head = await self._errors.call(
                f"stat {bucket}/{key}", self._client.head_object(Bucket=bucket, Key=key), bucket, key
            )
        except ObjectNotFound:
            await self._require_bucket(bucket)
            return None
        return answers.answered(bucket, key, head, where=self._where)

    async def stat(self, bucket: str, key: str) -> ObjectInfo | None:
        validate_bucket(bucket)
        validate_key(key)
        return await self._head(bucket, key)

    async def put_file(self, bucket: str, key: str, source: Path) -> ObjectInfo:
        """Store ``source``'s content; ``source`` must be a regular file (a symlink is refused).

        The file is streamed in multipart parts, never read whole into memory.
        """
        validate_bucket(bucket)
        validate_key(key)
        handle = await _blocking(lambda: open_source(source))
        try:
            return await self.put_stream(bucket, key, _file_chunks(handle, source))
        finally:
            handle.close()

    async def put_stream(self, bucket: str, key: str, chunks: AsyncIterator[bytes]) -> ObjectInfo:
        """Store streamed content: one ``PutObject`` if it fits in a part, else a multipart upload.

        Memory is bounded by one part plus one incoming chunk. A multipart upload that fails (or is
        cancelled) is aborted, so no object and no pending upload remain.
        """
        validate_bucket(bucket)
        validate_key(key)
        size, etag = await upload_stream(
            self._client, self._errors, where=self._where, bucket=bucket, key=key, chunks=chunks
        )
        return await self._info_after_put(bucket, key, size, etag)

    async def _info_after_put(self, bucket: str, key: str, size: int, etag: str) -> ObjectInfo:
        """The stored object's info, as ``stat`` reports it (a PUT's answer lacks the date)."""
        try:
            head = await self._client.head_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError, *TRANSPORT_ERRORS):
            head = None
        if head is not None and answers.etag(head.get("ETag") or "") == etag:
            with contextlib.suppress(StorageError):  # an answer lacking the size: say what we stored
                return answers.answered(bucket, key, head, where=self._where)
        # Replaced or deleted by someone else in the meantime: describe what we stored.
        return ObjectInfo(
            bucket=bucket, key=key, size=size, last_modified=answers.now(), etag=etag, generation=""
        )

    async def _get(self, bucket: str, key: str) -> tuple[ObjectInfo, StreamingBody]:
        got = await self._errors.call(
            f"read {bucket}/{key}", self._client.get_object(Bucket=bucket, Key=key), bucket, key
        )
        try:
            info = answers.answered(bucket, key, got, where=self._where)
        except StorageError:
            got["Body"].close()
            raise
        body: StreamingBody = got["Body"]
        return info, body

    async def _read(self, body: StreamingBody, size: int, bucket: str, key: str) -> bytes:
        try:
            data: bytes = await body.read(size)
        except (ClientError, BotoCoreError, *TRANSPORT_ERRORS) as exc:
            self._errors.fail(f"read {bucket}/{key}", exc, bucket, key)
        return data

    async def get_file(self, bucket: str, key: str, target: Path) -> ObjectInfo:
        """Download the object to ``target`` (replaced atomically; parent directories are created)."""
        validate_bucket(bucket)
        validate_key(key)
        info, body = await self._get(bucket, key)
        staged = StagedDownload(target)
        try:
            try:
                await _blocking(staged.create)
                while data := await self._read(body, COPY_CHUNK, bucket, key):
                    await _blocking(functools.partial(staged.write, data))
                await _blocking(staged.publish)
            except OSError as exc:
                raise StorageError(
                    f"cannot copy {bucket}/{key} to {str(target)!r}: {exc.strerror or exc}"
                ) from None
        finally:
            body.close()
            await _blocking(staged.discard)
        return info

    async def read_stream(self, bucket: str, key: str) -> AsyncIterator[bytes]:
        validate_bucket(bucket)
        validate_key(key)
        _, body = await self._get(bucket, key)
        try:
            while data := await self._read(body, READ_CHUNK, bucket, key):
                yield data
        finally:
            body.close()

    async def delete_object(self, bucket: str, key: str) -> bool:
        """Remove ``key``; ``False`` if there was no such object (S3's DELETE itself cannot tell)."""
        validate_bucket(bucket)
        validate_key(key)
        if await self._head(bucket, key) is None:
            return False
        await self._errors.call(
            f"delete {bucket}/{key}", self._client.delete_object(Bucket=bucket, Key=key), bucket, key
        )
        return True

    async def remove_folder(self, bucket: str, folder: str) -> None:
        validate_bucket(bucket)
        marker = validate_key(folder, folder=True).removesuffix("/") + "/"
        await self._errors.call(
            f"remove folder {bucket}/{marker}", self._client.delete_object(Bucket=bucket, Key=marker), bucket
        )

    async def delete_bucket(self, bucket: str) -> int:
        validate_bucket(bucket)
        await self._require_bucket(bucket)
        return await buckets.empty_and_delete(self._client, self._errors, bucket, where=self._where)

    async def presigned_url(self, bucket: str, key: str, *, method: str, expires_in: int) -> str | None:
        validate_bucket(bucket)
        validate_key(key)
        operation = {"GET": "get_object", "PUT": "put_object"}[method]
        with self._errors.translate(f"sign a URL for {bucket}/{key}", bucket, key):
            return await self._client.generate_presigned_url(
                operation, Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_in
            )
