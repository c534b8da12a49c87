"""The seam between the manager and wherever objects live."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from oscar_manager.errors import BadRequest, NotFound, OscarError


class StorageError(OscarError):
    """The storage backend failed (unreachable, refused): the caller may retry later."""

    status_code = 502


class StorageUnavailable(StorageError):
    """The store cannot take writes now (read-only, or refused by the file system): not the caller's
    fault nor the script's, so accepted work is retried later."""

    status_code = 503


class StorageFull(StorageError):
    """No space left in the store: 507 Insufficient Storage; accepted work is retried later."""

    status_code = 507


class StorageUnreachable(StorageError):
    """The store did not answer (connection refused or cut, timed out, or it said it is not ready yet):
    still 502 to a client, but not the script's fault either, so accepted work is retried later."""


# What a job's run may meet that is the store's fault and passes once the store recovers: the job is run
# again later instead of ending Failed.
STORE_FAULTS = (StorageUnavailable, StorageFull, StorageUnreachable)

# Write failures that say the store (not the request) is at fault, and that pass once it recovers.
_FULL = (errno.ENOSPC, errno.EDQUOT)
_UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


def os_storage_error(message: str, exc: OSError) -> StorageError:
    """A file system's failure as the storage error it means: full (507), unwritable (503), else 502."""
    message = f"{message}: {exc.strerror or exc}"
    if exc.errno in _FULL:
        return StorageFull(message)
    if exc.errno in _UNWRITABLE:
        return StorageUnavailable(message)
    return StorageError(message)


class InvalidKey(BadRequest):
    """A bucket name or object key that is not allowed (traversal, empty segments, control characters)."""


class ObjectNotFound(NotFound):
    pass


class BucketNotFound(NotFound):
    pass


# The ``last_modified`` of an object whose server did not say (Go's zero time, as upstream would show).
UNKNOWN_TIME = datetime(1, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    bucket: str
    key: str
    size: int
    # UNKNOWN_TIME when the server did not say: such objects count as older than anything.
    last_modified: datetime
    # Changes whenever the content changes: part of the dedup key of the event the object causes.
    etag: str
    # Which write left the object as it is (``domain.generations``), as listings and notifications tell
    # it; "" when the answer does not (S3 ``HEAD``: whole seconds). Not compared: an object is the same
    # however it was found.
    generation: str = field(compare=False)


class ObjectSink(Protocol):
    """Where a job's output files can be written: every ``ObjectStore``, and the write-only providers
    (WebDAV). ``bucket`` is the first segment of the output path, ``key`` the rest and the file's name."""

    async def put_stream(self, bucket: str, key: str, chunks: AsyncIterator[bytes]) -> object:
        """Store streamed content without holding it all in memory."""


class ObjectStore(Protocol):
    """Buckets of objects. Keys use ``/`` as separator; folders are key prefixes ending in ``/``."""

    async def ensure_bucket(self, bucket: str) -> None:
        """Create the bucket unless it exists (an existing bucket is never an error)."""

    async def ensure_folder(self, bucket: str, folder: str) -> None:
        """Make the folder ``folder/`` visible in ``bucket`` (creating the bucket if needed)."""

    async def bucket_exists(self, bucket: str) -> bool: ...

    async def list_buckets(self) -> list[str]: ...

    async def list_objects(self, bucket: str, prefix: str = "", *, markers: bool = False) -> list[ObjectInfo]:
        """Every object under ``prefix`` (recursively), sorted by key; folder markers (``in/``, empty, as
        upstream lists them) only with ``markers``."""

    async def stat(self, bucket: str, key: str) -> ObjectInfo | None: ...

    async def put_file(self, bucket: str, key: str, source: Path) -> ObjectInfo:
        """Store a local file's content; the object appears whole or not at all."""

    async def put_stream(self, bucket: str, key: str, chunks: AsyncIterator[bytes]) -> ObjectInfo:
        """Store streamed content without holding it all in memory; appears whole or not at all."""

    async def get_file(self, bucket: str, key: str, target: Path) -> ObjectInfo:
        """Write the object's content to ``target`` (streamed)."""

    def read_stream(self, bucket: str, key: str) -> AsyncIterator[bytes]:
        """The object's content in chunks; raises ``ObjectNotFound`` on first iteration if missing."""
        ...

    async def delete_object(self, bucket: str, key: str) -> bool: ...

    async def remove_folder(self, bucket: str, folder: str) -> None:
        """Remove the (empty) folder ``folder/`` made by ``ensure_folder``; objects under it, if any, stay."""

    async def delete_bucket(self, bucket: str) -> int:
        """Remove the bucket with every object in it (folder markers included); returns how many
        objects went. Only ever called on an explicit request to delete data."""
        ...

    async def presigned_url(self, bucket: str, key: str, *, method: str, expires_in: int) -> str | None:
        """A URL that lets anyone holding it ``GET`` or ``PUT`` the object until it expires, or None when
        the store cannot sign one itself (the manager then serves signed URLs of its own)."""
        ...
