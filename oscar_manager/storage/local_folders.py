"""The local store's work on its bucket folders: the blocking steps (always run in a worker thread) and the
lexical checks of the names they open.

Each step walks from the storage root one directory at a time, never following a link (``local_dirs``),
and turns what the file system answers into the store's errors: a missing bucket is ``BucketNotFound``, a
file or folder in the way is a ``Conflict``, a segment too long for the file system an ``InvalidKey``.
Bucket names and keys are checked (``bucket_path``, ``object_path``) before any path is opened.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat as stat_module
from pathlib import Path

from oscar_manager.errors import Conflict
from oscar_manager.storage import folder_marks
from oscar_manager.storage.base import (
    BucketNotFound,
    InvalidKey,
    ObjectInfo,
    ObjectNotFound,
    StorageError,
)
from oscar_manager.storage.keys import validate_bucket, validate_key
from oscar_manager.storage.local_dirs import ABSENT, NOT_A_DIR, descend, open_dir
from oscar_manager.storage.local_files import NewFile, storage_error
from oscar_manager.storage.local_listing import list_tree, object_info
from oscar_manager.storage.nofollow import open_regular


class BucketFolders:
    """The bucket folders under ``root`` (absolute): names checked, paths walked, files stat'ed, published
    and removed. Every method but the three name checks blocks."""

    def __init__(self, root: Path) -> None:
        self._root = root

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

    def segments(self, bucket: str, key: str) -> list[str]:
        """The folders and file name of ``key`` in ``bucket`` (validated as ``object_path`` does)."""
        return list(self.object_path(bucket, key).relative_to(self.bucket_path(bucket)).parts)

    def open_bucket(self, bucket: str, *, create: bool = False) -> int:
        missing = BucketNotFound(f"bucket {bucket!r} does not exist")
        try:
            if create:
                os.makedirs(self._root, exist_ok=True)
            root_fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise missing from None
        except OSError as exc:
            raise storage_error(f"open the storage root {str(self._root)!r}", exc) from None
        try:
            return open_dir(bucket, dir_fd=root_fd, create=create)
        except FileNotFoundError:
            raise missing from None
        except OSError as exc:
            if exc.errno not in NOT_A_DIR:
                raise storage_error(f"open bucket {bucket!r}", exc) from None
            if create:
                raise StorageError(f"local storage: {bucket!r} exists and is not a directory") from None
            raise missing from None
        finally:
            os.close(root_fd)

    def ensure_bucket(self, bucket: str) -> None:
        os.close(self.open_bucket(bucket, create=True))

    def ensure_folder(self, bucket: str, folder: str) -> None:
        fd = self.open_bucket(bucket, create=True)
        try:
            folder_fd = descend(fd, self.segments(bucket, folder), create=True)
            try:
                folder_marks.mark(folder_fd)
            finally:
                os.close(folder_fd)
        except OSError as exc:
            if exc.errno in NOT_A_DIR:
                raise Conflict(
                    f"cannot create folder {folder!r} in bucket {bucket!r}: a file or symlink is in the way"
                ) from None
            if exc.errno == errno.ENAMETOOLONG:
                raise InvalidKey(
                    f"invalid folder {folder!r}: a segment is too long for the filesystem"
                ) from None
            raise storage_error(f"create folder {folder!r} in bucket {bucket!r}", exc) from None

    def bucket_exists(self, bucket: str) -> bool:
        try:
            return stat_module.S_ISDIR(os.lstat(self.bucket_path(bucket)).st_mode)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise storage_error(f"check bucket {bucket!r}", exc) from None

    def list_buckets(self) -> list[str]:
        try:
            with os.scandir(self._root) as entries:
                candidates = [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise storage_error("list buckets", exc) from None
        names = []
        for name in candidates:
            with contextlib.suppress(InvalidKey):  # .staging, and directories nobody could address
                names.append(validate_bucket(name))
        return sorted(names)

    def list_objects(self, bucket: str, prefix: str, *, markers: bool = False) -> list[ObjectInfo]:
        fd = self.open_bucket(bucket)
        try:
            return list_tree(fd, bucket, prefix, markers=markers)
        except OSError as exc:
            raise storage_error(f"list bucket {bucket!r}", exc) from None
        finally:
            os.close(fd)

    def open_parent(self, bucket: str, segments: list[str]) -> int | None:
        """The directory holding the object named by ``segments``, or ``None`` if there is none."""
        fd = self.open_bucket(bucket)
        try:
            return descend(fd, segments[:-1], create=False)
        except OSError as exc:
            if exc.errno in ABSENT:
                return None
            raise

    def stat(self, bucket: str, key: str) -> ObjectInfo | None:
        segments = self.segments(bucket, key)
        try:
            parent = self.open_parent(bucket, segments)
            if parent is None:
                return None
            try:
                st = os.stat(segments[-1], dir_fd=parent, follow_symlinks=False)
            finally:
                os.close(parent)
        except OSError as exc:
            if exc.errno in ABSENT:
                return None
            raise storage_error(f"stat {bucket}/{key}", exc) from None
        return object_info(bucket, key, st) if stat_module.S_ISREG(st.st_mode) else None

    def open_object(self, bucket: str, key: str) -> tuple[int, os.stat_result]:
        segments = self.segments(bucket, key)
        opened = None
        try:
            parent = self.open_parent(bucket, segments)
            if parent is not None:
                try:
                    opened = open_regular(segments[-1], dir_fd=parent)
                finally:
                    os.close(parent)
        except OSError as exc:
            if exc.errno not in ABSENT:
                raise storage_error(f"read {bucket}/{key}", exc) from None
        if opened is None:
            raise ObjectNotFound(f"object {key!r} not found in bucket {bucket!r}")
        return opened

    def publish(self, staged: NewFile, bucket: str, key: str) -> ObjectInfo:
        segments = self.segments(bucket, key)
        try:
            # Stat before the rename: afterwards the name may already hold a concurrent put's file.
            st = staged.close(stamp=True)
            parent = descend(self.open_bucket(bucket), segments[:-1], create=True)
            try:
                os.replace(staged.path, segments[-1], dst_dir_fd=parent)
            finally:
                os.close(parent)
        except OSError as exc:
            if exc.errno in NOT_A_DIR:
                raise Conflict(
                    f"cannot store {key!r}: a file or symlink is in the way of its folder"
                ) from None
            if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise Conflict(f"cannot store {key!r}: a folder with that name exists") from None
            if exc.errno == errno.ENAMETOOLONG:
                raise InvalidKey(
                    f"invalid object key {key!r}: a segment is too long for the filesystem"
                ) from None
            raise storage_error(f"store {bucket}/{key}", exc) from None
        return object_info(bucket, key, st)

    def delete(self, bucket: str, key: str) -> bool:
        segments = self.segments(bucket, key)
        try:
            parent = self.open_parent(bucket, segments)
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
            if exc.errno in ABSENT:
                return False
            raise storage_error(f"delete {bucket}/{key}", exc) from None
        return True

    def remove_folder(self, bucket: str, segments: list[str]) -> None:
        """Remove the folder named by ``segments``, innermost first; a folder that still holds anything
        stays, and so do its parents."""
        for depth in range(len(segments), 0, -1):
            try:
                parent = self.open_parent(bucket, segments[:depth])
                if parent is None:
                    return
                try:
                    os.rmdir(segments[depth - 1], dir_fd=parent)
                finally:
                    os.close(parent)
            except OSError:
                return
