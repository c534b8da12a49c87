"""What the local store reports about its files: object infos, folder markers, and the listing walk.

A file's ETag and generation come from its stat (inode, size, modification time), so a replaced or
rewritten file reads as a new object. The walk lists only what could be read back: regular files and
marked folders under names a key can address, never a symlink.
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime, timedelta

from oscar_manager.domain import generations
from oscar_manager.storage import folder_marks
from oscar_manager.storage.base import ObjectInfo
from oscar_manager.storage.keys import is_valid_key
from oscar_manager.storage.local_dirs import ABSENT, open_dir


def file_etag(st: os.stat_result) -> str:
    """The ETag of a local file: changes whenever the file is replaced or rewritten."""
    return f"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"


def mtime(st: os.stat_result) -> datetime:
    seconds, nanoseconds = divmod(st.st_mtime_ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=nanoseconds // 1000)


def object_info(bucket: str, key: str, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(
        bucket=bucket,
        key=key,
        size=st.st_size,
        last_modified=mtime(st),
        etag=file_etag(st),
        # The write's time, as stamped by ``NewFile.close`` (or by the kernel for files written by others).
        generation=generations.from_nanoseconds(st.st_mtime_ns),
    )


def marker_info(bucket: str, key: str, st: os.stat_result) -> ObjectInfo:
    """A folder as the empty object S3 servers keep for it (its ETag is the MD5 of nothing)."""
    return ObjectInfo(
        bucket=bucket,
        key=key,
        size=0,
        last_modified=mtime(st),
        etag=folder_marks.EMPTY_ETAG,
        generation=generations.from_nanoseconds(st.st_mtime_ns),
    )


def list_tree(bucket_fd: int, bucket: str, prefix: str, *, markers: bool) -> list[ObjectInfo]:
    """The objects under the bucket folder ``bucket_fd`` (not consumed) whose key starts with ``prefix``,
    sorted by key; with ``markers`` also the marked folders. An ``OSError`` is the caller's to judge."""
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
                if not is_valid_key(sub, folder=True):
                    continue
                try:
                    sub_fd = open_dir(entry.name, dir_fd=fd, create=False)
                except OSError as exc:  # replaced since scandir saw it
                    if exc.errno in ABSENT:
                        continue
                    raise
                try:
                    if markers and sub.startswith(prefix) and folder_marks.is_marked(sub_fd):
                        found.append(marker_info(bucket, sub, os.fstat(sub_fd)))
                    walk(sub_fd, sub)
                finally:
                    os.close(sub_fd)
            # A file named so that it could not be read back is not an object.
            elif key.startswith(prefix) and entry.is_file(follow_symlinks=False) and is_valid_key(key):
                with contextlib.suppress(FileNotFoundError):
                    found.append(object_info(bucket, key, entry.stat(follow_symlinks=False)))

    walk(bucket_fd, "")
    found.sort(key=lambda info: info.key)
    return found
