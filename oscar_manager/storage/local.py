"""Buckets as directories under one root: the storage of the local (single machine) deployment.

Objects are plain files so that jobs and people can use them directly, and a directory watcher turns new
files into events. That is why writes are staged in ``root/.staging`` and renamed into place (a watcher
never sees half a file) and why symlinks are never objects: a job could plant one pointing anywhere on
the host. Paths are walked one directory at a time with ``O_NOFOLLOW``, each step relative to the
previous directory's descriptor, so a symlink swapped in between a check and a use cannot redirect us.

Every operation on a missing bucket raises ``BucketNotFound``; a missing object in an existing bucket is
``None`` (``stat``), ``False`` (``delete_object``) or ``ObjectNotFound``. A key that cannot be a file
because of what is already on disk (``a`` is a folder, or ``a`` is a file and ``a/b`` is written) is a
``Conflict``.

The class keeps the buckets' layout and what each operation means; the steps it is built from live beside
it: ``local_folders`` (the blocking work on the bucket folders, each path walked without following links),
``local_dirs`` (the no-follow walk), ``local_files`` (staged writes, copies, chunked reads) and
``local_listing`` (object infos and the listing walk).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

from oscar_manager.storage.base import BucketNotFound, ObjectInfo, ObjectNotFound
from oscar_manager.storage.blocking import run_blocking as _blocking
from oscar_manager.storage.keys import validate_bucket, validate_key
from oscar_manager.storage.local_files import (
    COPY_CHUNK,
    READ_CHUNK,
    NewFile,
    copy_out,
    open_source,
    read_chunks,
    read_range,
    storage_error,
    write_coalesced,
)
from oscar_manager.storage.local_folders import BucketFolders
from oscar_manager.storage.local_listing import file_etag, mtime, object_info

STAGING = ".staging"


class LocalObjectStore:
    """An ``ObjectStore`` over the directories of ``root`` (one per bucket)."""

    def __init__(self, root: Path) -> None:
        self._root = Path(os.path.abspath(root))
        self._staging = self._root / STAGING
        self._folders = BucketFolders(self._root)

    @property
    def root(self) -> Path:
        return self._root

    def unwritable_reason(self) -> str:
        """Why nothing can be stored now ("" when something can): for the readiness answer."""
        try:
            fs = os.statvfs(self._root)
        except OSError as exc:
            return f"cannot reach {str(self._root)!r}: {exc.strerror or exc}"
        if fs.f_flag & os.ST_RDONLY:
            return f"{str(self._root)!r} is on a read-only file system"
        if fs.f_bavail == 0 or (fs.f_files and fs.f_favail == 0):
            return f"no space left on the file system of {str(self._root)!r}"
        if not os.access(self._root, os.W_OK):
            return f"{str(self._root)!r} is not writable"
        return ""

    # --- paths for the file watcher and the local job runner ---------------------------------------

    def bucket_path(self, bucket: str) -> Path:
        """The directory of ``bucket`` (validated; not checked to exist)."""
        return self._folders.bucket_path(bucket)

    def object_path(self, bucket: str, key: str) -> Path:
        """The file of ``key`` (validated, and lexically inside the bucket).

        Only the name is checked: whoever opens the path must not follow symlinks (``O_NOFOLLOW``).
        """
        return self._folders.object_path(bucket, key)

    # --- the ObjectStore protocol ---------------------------------------------------------------

    async def ensure_bucket(self, bucket: str) -> None:
        validate_bucket(bucket)
        await _blocking(lambda: self._folders.ensure_bucket(bucket))

    async def ensure_folder(self, bucket: str, folder: str) -> None:
        """Create the directory ``folder`` (``"a/b"`` or ``"a/b/"``) and its parents in ``bucket``."""
        validate_bucket(bucket)
        folder = validate_key(folder, folder=True).removesuffix("/")
        await _blocking(lambda: self._folders.ensure_folder(bucket, folder))

    async def bucket_exists(self, bucket: str) -> bool:
        validate_bucket(bucket)
        return await _blocking(lambda: self._folders.bucket_exists(bucket))

    async def list_buckets(self) -> list[str]:
        return await _blocking(self._folders.list_buckets)

    async def bucket_times(self) -> list[tuple[str, datetime]]:
        """Every bucket with the time its folder last changed (what S3's ListBuckets shows as created)."""

        def listed() -> list[tuple[str, datetime]]:
            found = []
            for name in self._folders.list_buckets():
                with contextlib.suppress(FileNotFoundError):
                    found.append((name, mtime(os.lstat(self._root / name))))
            return found

        return await _blocking(listed)

    async def list_objects(self, bucket: str, prefix: str = "", *, markers: bool = False) -> list[ObjectInfo]:
        """Regular files whose key starts with ``prefix`` (a plain string match, never a path); with
        ``markers`` also the folders made by ``ensure_folder``, as empty ``folder/`` objects."""
        validate_bucket(bucket)
        return await _blocking(lambda: self._folders.list_objects(bucket, prefix, markers=markers))

    async def stat(self, bucket: str, key: str) -> ObjectInfo | None:
        self.object_path(bucket, key)
        return await _blocking(lambda: self._folders.stat(bucket, key))

    async def put_file(self, bucket: str, key: str, source: Path) -> ObjectInfo:
        """Store ``source``'s content; ``source`` must be a regular file (a symlink is refused)."""
        self.object_path(bucket, key)

        fd = await _blocking(lambda: open_source(source), discard=os.close)
        try:
            return await self.put_stream(bucket, key, read_chunks(fd, COPY_CHUNK, str(source)))
        finally:
            os.close(fd)

    async def put_stream(self, bucket: str, key: str, chunks: AsyncIterator[bytes]) -> ObjectInfo:
        self.object_path(bucket, key)
        # Refuse an unknown bucket before consuming the stream (publishing checks again).
        await _blocking(lambda: os.close(self._folders.open_bucket(bucket)))
        staged = NewFile(str(self._staging / f"{secrets.token_hex(12)}.part"))

        def create() -> None:
            os.makedirs(self._staging, exist_ok=True)
            staged.create()

        def write(data: bytes | bytearray) -> None:
            try:
                staged.write(data)
            except OSError as exc:
                raise storage_error(f"store {bucket}/{key}", exc) from None

        try:
            try:
                await _blocking(create)
            except OSError as exc:
                raise storage_error(f"create a temporary file in {str(self._staging)!r}", exc) from None
            await write_coalesced(chunks, write)
            return await _blocking(lambda: self._folders.publish(staged, bucket, key))
        finally:
            # After a successful publish the temporary name is gone and this only closes the file.
            await _blocking(staged.discard)

    async def get_file(self, bucket: str, key: str, target: Path) -> ObjectInfo:
        """Copy the object to ``target`` (replaced atomically; parent directories are created)."""
        self.object_path(bucket, key)
        fd, st = await _blocking(
            lambda: self._folders.open_object(bucket, key), discard=lambda r: os.close(r[0])
        )
        try:
            await copy_out(fd, target)
        except OSError as exc:
            raise storage_error(f"copy {bucket}/{key} to {str(target)!r}", exc) from None
        finally:
            os.close(fd)
        return object_info(bucket, key, st)

    async def read_stream(
        self, bucket: str, key: str, *, start: int = 0, end: int | None = None, etag: str | None = None
    ) -> AsyncIterator[bytes]:
        """The object's bytes ``start`` to ``end`` (inclusive; the whole object by default). With ``etag``
        (from a ``stat`` whose answer went out first), a file replaced since then fails the read rather
        than sending another file's bytes under the first one's headers."""
        self.object_path(bucket, key)
        fd, st = await _blocking(
            lambda: self._folders.open_object(bucket, key), discard=lambda r: os.close(r[0])
        )
        try:
            if etag is not None and file_etag(st) != etag:
                raise ObjectNotFound(f"object {key!r} in bucket {bucket!r} changed while being read")
            what = f"{bucket}/{key}"
            if start == 0 and end is None:
                async for chunk in read_chunks(fd, READ_CHUNK, what):
                    yield chunk
            else:
                async for chunk in read_range(fd, start, end, what):
                    yield chunk
        finally:
            os.close(fd)

    async def delete_object(self, bucket: str, key: str) -> bool:
        """Remove the file of ``key``; its folders (and the bucket) stay even when they become empty."""
        self.object_path(bucket, key)
        return await _blocking(lambda: self._folders.delete(bucket, key))

    async def remove_folder(self, bucket: str, folder: str) -> None:
        validate_bucket(bucket)
        segments = self._folders.segments(bucket, validate_key(folder, folder=True).removesuffix("/"))
        await _blocking(lambda: self._folders.remove_folder(bucket, segments))

    async def delete_bucket(self, bucket: str) -> int:
        validate_bucket(bucket)
        if not await self.bucket_exists(bucket):
            raise BucketNotFound(f"bucket {bucket!r} does not exist")
        count = len(await self.list_objects(bucket))
        # Renamed away first, so the bucket disappears at once and whole even if the removal is slow.
        doomed = self._staging / f"deleted-{bucket}-{secrets.token_hex(6)}"

        def remove() -> None:
            try:
                os.makedirs(self._staging, exist_ok=True)
                os.rename(self._root / bucket, doomed)
            except OSError as exc:
                raise storage_error(f"delete bucket {bucket!r}", exc) from None
            shutil.rmtree(doomed, ignore_errors=True)

        await _blocking(remove)
        return count

    async def presigned_url(self, bucket: str, key: str, *, method: str, expires_in: int) -> str | None:
        return None  # folders cannot sign: the manager serves signed URLs (``/storage/...``) instead
