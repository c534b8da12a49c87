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
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import secrets
import shutil
import stat as stat_module
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from oscar_manager.domain import generations
from oscar_manager.errors import Conflict
from oscar_manager.storage import folder_marks
from oscar_manager.storage.base import (
    BucketNotFound,
    InvalidKey,
    ObjectInfo,
    ObjectNotFound,
    StorageError,
    os_storage_error,
)
from oscar_manager.storage.blocking import run_blocking as _blocking
from oscar_manager.storage.keys import validate_bucket, validate_key
from oscar_manager.storage.nofollow import DIR_FLAGS, open_regular

STAGING = ".staging"
READ_CHUNK = 64 * 1024
# File-to-file copies and coalesced small upload chunks cross into threads in pieces of this size.
COPY_CHUNK = 1024 * 1024


_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
# "Something that is not a directory (a file, a symlink) sits where a directory should be."
_NOT_A_DIR = (errno.ENOTDIR, errno.ELOOP)
# Reasons a key cannot name an existing object.
_ABSENT = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG)


def file_etag(st: os.stat_result) -> str:
    """The ETag of a local file: changes whenever the file is replaced or rewritten."""
    return f"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"


def _mtime(st: os.stat_result) -> datetime:
    seconds, nanoseconds = divmod(st.st_mtime_ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=nanoseconds // 1000)


def _info(bucket: str, key: str, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(
        bucket=bucket,
        key=key,
        size=st.st_size,
        last_modified=_mtime(st),
        etag=file_etag(st),
        # The write's time, as stamped by ``_NewFile.close`` (or by the kernel for files written by others).
        generation=generations.from_nanoseconds(st.st_mtime_ns),
    )


def _marker(bucket: str, key: str, st: os.stat_result) -> ObjectInfo:
    """A folder as the empty object S3 servers keep for it (its ETag is the MD5 of nothing)."""
    return ObjectInfo(
        bucket=bucket,
        key=key,
        size=0,
        last_modified=_mtime(st),
        etag=folder_marks.EMPTY_ETAG,
        generation=generations.from_nanoseconds(st.st_mtime_ns),
    )


def _is_valid_key(key: str, *, folder: bool = False) -> bool:
    try:
        validate_key(key, folder=folder)
    except InvalidKey:
        return False
    return True


def _storage_error(action: str, exc: OSError) -> StorageError:
    return os_storage_error(f"local storage: cannot {action}", exc)


def _open_dir(name: str, *, dir_fd: int, create: bool) -> int:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            raise
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, dir_fd=dir_fd)
    return os.open(name, DIR_FLAGS, dir_fd=dir_fd)


def _descend(fd: int, names: list[str], *, create: bool) -> int:
    """Walk from directory ``fd`` (consumed) through ``names``; the last directory's descriptor."""
    try:
        for name in names:
            next_fd = _open_dir(name, dir_fd=fd, create=create)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


class _NewFile:
    """A file being written under a temporary name; ``discard`` removes every trace of it.

    The path is chosen before the file is created, so cleanup knows it even if creation was cancelled.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.out: BinaryIO | None = None

    def create(self) -> None:
        # Not mkstemp: the file gets the usual umask-based mode (0600 would lock out job containers).
        self.out = os.fdopen(os.open(self.path, _CREATE_FLAGS, 0o666), "wb")

    def write(self, data: bytes | bytearray) -> None:
        assert self.out is not None
        self.out.write(data)

    def close(self, *, stamp: bool = False) -> os.stat_result:
        """Close the file; its stat as written (a rename keeps inode, size and mtime).

        ``stamp``: set its modification time to now, precisely: the time of this write that every
        listing and the watcher read back as its generation. The kernel's own file times tick in jiffies
        (several milliseconds), so two uploads in a row could otherwise look like one write.
        """
        assert self.out is not None
        self.out.flush()
        if stamp:
            now = time.time_ns()
            os.utime(self.out.fileno(), ns=(now, now))
        st = os.fstat(self.out.fileno())
        self.out.close()
        return st

    def discard(self) -> None:
        if self.out is not None:
            with contextlib.suppress(OSError):
                self.out.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class LocalObjectStore:
    """An ``ObjectStore`` over the directories of ``root`` (one per bucket)."""

    def __init__(self, root: Path) -> None:
        self._root = Path(os.path.abspath(root))
        self._staging = self._root / STAGING

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
        path = self._root / validate_bucket(bucket)
        if path.parent != self._root:
            raise InvalidKey(f"invalid bucket name {bucket!r}")
        return path

    def object_path(self, bucket: str, key: str) -> Path:
        """The file of ``key`` (validated, and lexically inside the bucket).

        Only the name is checked: whoever opens the path must not follow symlinks (``O_NOFOLLOW``).
        """
        base = self.bucket_path(bucket)
        path = base / validate_key(key)
        if path == base or os.path.commonpath([base, os.path.normpath(path)]) != str(base):
            raise InvalidKey(f"invalid object key {key!r}: it leaves the bucket")
        return path

    def _segments(self, bucket: str, key: str) -> list[str]:
        return list(self.object_path(bucket, key).relative_to(self.bucket_path(bucket)).parts)

    # --- blocking work (always called in a worker thread) ---------------------------------------

    def _open_bucket(self, bucket: str, *, create: bool = False) -> int:
        missing = BucketNotFound(f"bucket {bucket!r} does not exist")
        try:
            if create:
                os.makedirs(self._root, exist_ok=True)
            root_fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise missing from None
        except OSError as exc:
            raise _storage_error(f"open the storage root {str(self._root)!r}", exc) from None
        try:
            return _open_dir(bucket, dir_fd=root_fd, create=create)
        except FileNotFoundError:
            raise missing from None
        except OSError as exc:
            if exc.errno not in _NOT_A_DIR:
                raise _storage_error(f"open bucket {bucket!r}", exc) from None
            if create:
                raise StorageError(f"local storage: {bucket!r} exists and is not a directory") from None
            raise missing from None
        finally:
            os.close(root_fd)

    def _ensure_bucket(self, bucket: str) -> None:
        os.close(self._open_bucket(bucket, create=True))

    def _ensure_folder(self, bucket: str, folder: str) -> None:
        fd = self._open_bucket(bucket, create=True)
        try:
            folder_fd = _descend(fd, self._segments(bucket, folder), create=True)
            try:
                folder_marks.mark(folder_fd)
            finally:
                os.close(folder_fd)
        except OSError as exc:
            if exc.errno in _NOT_A_DIR:
                raise Conflict(
                    f"cannot create folder {folder!r} in bucket {bucket!r}: a file or symlink is in the way"
                ) from None
            if exc.errno == errno.ENAMETOOLONG:
                raise InvalidKey(
                    f"invalid folder {folder!r}: a segment is too long for the filesystem"
                ) from None
            raise _storage_error(f"create folder {folder!r} in bucket {bucket!r}", exc) from None

    def _bucket_exists(self, bucket: str) -> bool:
        try:
            return stat_module.S_ISDIR(os.lstat(self.bucket_path(bucket)).st_mode)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _storage_error(f"check bucket {bucket!r}", exc) from None

    def _list_buckets(self) -> list[str]:
        try:
            with os.scandir(self._root) as entries:
                candidates = [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise _storage_error("list buckets", exc) from None
        names = []
        for name in candidates:
            with contextlib.suppress(InvalidKey):  # .staging, and directories nobody could address
                names.append(validate_bucket(name))
        return sorted(names)

    def _list_objects(self, bucket: str, prefix: str, *, markers: bool = False) -> list[ObjectInfo]:
        found: list[ObjectInfo] = []

        # Depth first, holding one descriptor per level (depth is bounded by the key length), never
        # one per pending sibling.
        def walk(fd: int, folder: str) -> None:
            with os.scandir(fd) as scan:
                entries = list(scan)
            for entry in entries:
                key = folder + entry.name
                if entry.is_dir(follow_symlinks=False):
                    sub = key + "/"
                    # String-prefix semantics: only descend where a match is still possible.
                    if not (sub.startswith(prefix) or prefix.startswith(sub)):
                        continue
                    if not _is_valid_key(sub, folder=True):
                        continue
                    try:
                        sub_fd = _open_dir(entry.name, dir_fd=fd, create=False)
                    except OSError as exc:  # replaced since scandir saw it
                        if exc.errno in _ABSENT:
                            continue
                        raise
                    try:
                        if markers and sub.startswith(prefix) and folder_marks.is_marked(sub_fd):
                            found.append(_marker(bucket, sub, os.fstat(sub_fd)))
                        walk(sub_fd, sub)
                    finally:
                        os.close(sub_fd)
                # A file named so that it could not be read back is not an object.
                elif key.startswith(prefix) and entry.is_file(follow_symlinks=False) and _is_valid_key(key):
                    with contextlib.suppress(FileNotFoundError):
                        found.append(_info(bucket, key, entry.stat(follow_symlinks=False)))

        fd = self._open_bucket(bucket)
        try:
            walk(fd, "")
        except OSError as exc:
            raise _storage_error(f"list bucket {bucket!r}", exc) from None
        finally:
            os.close(fd)
        found.sort(key=lambda info: info.key)
        return found

    def _open_parent(self, bucket: str, segments: list[str]) -> int | None:
        """The directory holding the object named by ``segments``, or ``None`` if there is none."""
        fd = self._open_bucket(bucket)
        try:
            return _descend(fd, segments[:-1], create=False)
        except OSError as exc:
            if exc.errno in _ABSENT:
                return None
            raise

    def _stat(self, bucket: str, key: str) -> ObjectInfo | None:
        segments = self._segments(bucket, key)
        try:
            parent = self._open_parent(bucket, segments)
            if parent is None:
                return None
            try:
                st = os.stat(segments[-1], dir_fd=parent, follow_symlinks=False)
            finally:
                os.close(parent)
        except OSError as exc:
            if exc.errno in _ABSENT:
                return None
            raise _storage_error(f"stat {bucket}/{key}", exc) from None
        return _info(bucket, key, st) if stat_module.S_ISREG(st.st_mode) else None

    def _open_object(self, bucket: str, key: str) -> tuple[int, os.stat_result]:
        segments = self._segments(bucket, key)
        opened = None
        try:
            parent = self._open_parent(bucket, segments)
            if parent is not None:
                try:
                    opened = open_regular(segments[-1], dir_fd=parent)
                finally:
                    os.close(parent)
        except OSError as exc:
            if exc.errno not in _ABSENT:
                raise _storage_error(f"read {bucket}/{key}", exc) from None
        if opened is None:
            raise ObjectNotFound(f"object {key!r} not found in bucket {bucket!r}")
        return opened

    def _publish(self, staged: _NewFile, bucket: str, key: str) -> ObjectInfo:
        segments = self._segments(bucket, key)
        try:
            # Stat before the rename: afterwards the name may already hold a concurrent put's file.
            st = staged.close(stamp=True)
            parent = _descend(self._open_bucket(bucket), segments[:-1], create=True)
            try:
                os.replace(staged.path, segments[-1], dst_dir_fd=parent)
            finally:
                os.close(parent)
        except OSError as exc:
            if exc.errno in _NOT_A_DIR:
                raise Conflict(
                    f"cannot store {key!r}: a file or symlink is in the way of its folder"
                ) from None
            if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise Conflict(f"cannot store {key!r}: a folder with that name exists") from None
            if exc.errno == errno.ENAMETOOLONG:
                raise InvalidKey(
                    f"invalid object key {key!r}: a segment is too long for the filesystem"
                ) from None
            raise _storage_error(f"store {bucket}/{key}", exc) from None
        return _info(bucket, key, st)

    def _delete(self, bucket: str, key: str) -> bool:
        segments = self._segments(bucket, key)
        try:
            parent = self._open_parent(bucket, segments)
            if parent is None:
                return False
            try:
                if not stat_module.S_ISREG(
                    os.stat(segments[-1], dir_fd=parent, follow_symlinks=False).st_mode
                ):
                    return False
                os.unlink(segments[-1], dir_fd=parent)
            finally:
                os.close(parent)
        except OSError as exc:
            if exc.errno in _ABSENT:
                return False
            raise _storage_error(f"delete {bucket}/{key}", exc) from None
        return True

    # --- the ObjectStore protocol ---------------------------------------------------------------

    async def ensure_bucket(self, bucket: str) -> None:
        validate_bucket(bucket)
        await _blocking(lambda: self._ensure_bucket(bucket))

    async def ensure_folder(self, bucket: str, folder: str) -> None:
        """Create the directory ``folder`` (``"a/b"`` or ``"a/b/"``) and its parents in ``bucket``."""
        validate_bucket(bucket)
        folder = validate_key(folder, folder=True).removesuffix("/")
        await _blocking(lambda: self._ensure_folder(bucket, folder))

    async def bucket_exists(self, bucket: str) -> bool:
        validate_bucket(bucket)
        return await _blocking(lambda: self._bucket_exists(bucket))

    async def list_buckets(self) -> list[str]:
        return await _blocking(self._list_buckets)

    async def bucket_times(self) -> list[tuple[str, datetime]]:
        """Every bucket with the time its folder last changed (what S3's ListBuckets shows as created)."""

        def listed() -> list[tuple[str, datetime]]:
            found = []
            for name in self._list_buckets():
                with contextlib.suppress(FileNotFoundError):
                    found.append((name, _mtime(os.lstat(self._root / name))))
            return found

        return await _blocking(listed)

    async def list_objects(self, bucket: str, prefix: str = "", *, markers: bool = False) -> list[ObjectInfo]:
        """Regular files whose key starts with ``prefix`` (a plain string match, never a path); with
        ``markers`` also the folders made by ``ensure_folder``, as empty ``folder/`` objects."""
        validate_bucket(bucket)
        return await _blocking(lambda: self._list_objects(bucket, prefix, markers=markers))

    async def stat(self, bucket: str, key: str) -> ObjectInfo | None:
        self.object_path(bucket, key)
        return await _blocking(lambda: self._stat(bucket, key))

    async def put_file(self, bucket: str, key: str, source: Path) -> ObjectInfo:
        """Store ``source``'s content; ``source`` must be a regular file (a symlink is refused)."""
        self.object_path(bucket, key)

        def open_source() -> int:
            try:
                opened = open_regular(source)
            except OSError as exc:
                raise _storage_error(f"read {str(source)!r}", exc) from None
            if opened is None:
                raise StorageError(f"local storage: {str(source)!r} is not a regular file")
            return opened[0]

        fd = await _blocking(open_source, discard=os.close)
        try:
            return await self.put_stream(bucket, key, _read_chunks(fd, COPY_CHUNK, str(source)))
        finally:
            os.close(fd)

    async def put_stream(self, bucket: str, key: str, chunks: AsyncIterator[bytes]) -> ObjectInfo:
        self.object_path(bucket, key)
        # Refuse an unknown bucket before consuming the stream (_publish checks again).
        await _blocking(lambda: os.close(self._open_bucket(bucket)))
        staged = _NewFile(str(self._staging / f"{secrets.token_hex(12)}.part"))

        def create() -> None:
            os.makedirs(self._staging, exist_ok=True)
            staged.create()

        def write(data: bytes | bytearray) -> None:
            try:
                staged.write(data)
            except OSError as exc:
                raise _storage_error(f"store {bucket}/{key}", exc) from None

        try:
            try:
                await _blocking(create)
            except OSError as exc:
                raise _storage_error(f"create a temporary file in {str(self._staging)!r}", exc) from None
            # An HTTP body can arrive a few bytes at a time: coalesce so that each thread hop writes a
            # useful amount, with memory bounded by COPY_CHUNK.
            pending = bytearray()
            async for chunk in chunks:
                if not pending and len(chunk) >= COPY_CHUNK:
                    await _blocking(functools.partial(write, chunk))
                    continue
                pending += chunk
                if len(pending) >= COPY_CHUNK:
                    await _blocking(functools.partial(write, pending))
                    pending.clear()
            if pending:
                await _blocking(functools.partial(write, pending))
            return await _blocking(lambda: self._publish(staged, bucket, key))
        finally:
            # After a successful publish the temporary name is gone and this only closes the file.
            await _blocking(staged.discard)

    async def get_file(self, bucket: str, key: str, target: Path) -> ObjectInfo:
        """Copy the object to ``target`` (replaced atomically; parent directories are created)."""
        self.object_path(bucket, key)
        fd, st = await _blocking(lambda: self._open_object(bucket, key), discard=lambda r: os.close(r[0]))
        staged = _NewFile(str(target.parent / f".{target.name}.{secrets.token_hex(6)}.part"))

        def create() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            staged.create()

        def copy() -> bool:
            data = os.read(fd, COPY_CHUNK)
            staged.write(data)
            return bool(data)

        def finish() -> None:
            staged.close()
            os.replace(staged.path, target)

        try:
            await _blocking(create)
            while await _blocking(copy):
                pass
            await _blocking(finish)
        except OSError as exc:
            raise _storage_error(f"copy {bucket}/{key} to {str(target)!r}", exc) from None
        finally:
            os.close(fd)
            await _blocking(staged.discard)
        return _info(bucket, key, st)

    async def read_stream(
        self, bucket: str, key: str, *, start: int = 0, end: int | None = None, etag: str | None = None
    ) -> AsyncIterator[bytes]:
        """The object's bytes ``start`` to ``end`` (inclusive; the whole object by default). With ``etag``
        (from a ``stat`` whose answer went out first), a file replaced since then fails the read rather
        than sending another file's bytes under the first one's headers."""
        self.object_path(bucket, key)
        fd, st = await _blocking(lambda: self._open_object(bucket, key), discard=lambda r: os.close(r[0]))
        try:
            if etag is not None and file_etag(st) != etag:
                raise ObjectNotFound(f"object {key!r} in bucket {bucket!r} changed while being read")
            what = f"{bucket}/{key}"
            if start == 0 and end is None:
                async for chunk in _read_chunks(fd, READ_CHUNK, what):
                    yield chunk
            else:
                async for chunk in _read_range(fd, start, end, what):
                    yield chunk
        finally:
            os.close(fd)

    async def delete_object(self, bucket: str, key: str) -> bool:
        """Remove the file of ``key``; its folders (and the bucket) stay even when they become empty."""
        self.object_path(bucket, key)
        return await _blocking(lambda: self._delete(bucket, key))

    async def remove_folder(self, bucket: str, folder: str) -> None:
        validate_bucket(bucket)
        segments = self._segments(bucket, validate_key(folder, folder=True).removesuffix("/"))

        def remove() -> None:
            # Innermost first; a folder that still holds anything stays, and so do its parents.
            for depth in range(len(segments), 0, -1):
                try:
                    parent = self._open_parent(bucket, segments[:depth])
                    if parent is None:
                        return
                    try:
                        os.rmdir(segments[depth - 1], dir_fd=parent)
                    finally:
                        os.close(parent)
                except OSError:
                    return

        await _blocking(remove)

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
                raise _storage_error(f"delete bucket {bucket!r}", exc) from None
            shutil.rmtree(doomed, ignore_errors=True)

        await _blocking(remove)
        return count

    async def presigned_url(self, bucket: str, key: str, *, method: str, expires_in: int) -> str | None:
        return None  # folders cannot sign: the manager serves signed URLs (``/storage/...``) instead


async def _read_range(fd: int, start: int, end: int | None, what: str) -> AsyncIterator[bytes]:
    position = start

    def read() -> bytes:
        size = READ_CHUNK if end is None else min(READ_CHUNK, end + 1 - position)
        if size <= 0:
            return b""
        try:
            return os.pread(fd, size, position)
        except OSError as exc:
            raise _storage_error(f"read {what}", exc) from None

    while data := await _blocking(read):
        position += len(data)
        yield data


async def _read_chunks(fd: int, size: int, what: str) -> AsyncIterator[bytes]:
    def read() -> bytes:
        try:
            return os.read(fd, size)
        except OSError as exc:
            raise _storage_error(f"read {what}", exc) from None

    while data := await _blocking(read):
        yield data
