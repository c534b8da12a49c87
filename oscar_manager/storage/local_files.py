"""The local store's file I/O: staged writes and copies, chunked reads, and the error they raise.

A write goes to a temporary name and is renamed into place only when complete, so the directory watcher
never sees half a file; the reads cross into worker threads a chunk at a time so the event loop never
blocks on the disk.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

from oscar_manager.storage.base import StorageError, os_storage_error
from oscar_manager.storage.blocking import run_blocking as _blocking
from oscar_manager.storage.nofollow import open_regular

READ_CHUNK = 64 * 1024
# File-to-file copies and coalesced small upload chunks cross into threads in pieces of this size.
COPY_CHUNK = 1024 * 1024

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def storage_error(action: str, exc: OSError) -> StorageError:
    return os_storage_error(f"local storage: cannot {action}", exc)


class NewFile:
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


def open_source(source: Path) -> int:
    """A read descriptor on the regular file ``source`` (blocking); a symlink or anything else is refused."""
    try:
        opened = open_regular(source)
    except OSError as exc:
        raise storage_error(f"read {str(source)!r}", exc) from None
    if opened is None:
        raise StorageError(f"local storage: {str(source)!r} is not a regular file")
    return opened[0]


async def write_coalesced(chunks: AsyncIterator[bytes], write: Callable[[bytes | bytearray], None]) -> None:
    """Hand ``chunks`` to the blocking ``write``, in a worker thread.

    An HTTP body can arrive a few bytes at a time: coalesce so that each thread hop writes a useful
    amount, with memory bounded by COPY_CHUNK.
    """
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


async def copy_out(fd: int, target: Path) -> None:
    """Copy what is left to read of ``fd`` (not closed) to ``target``, replaced atomically; parent
    directories are created. An ``OSError`` is the caller's to report."""
    staged = NewFile(str(target.parent / f".{target.name}.{secrets.token_hex(6)}.part"))

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
    finally:
        await _blocking(staged.discard)


async def read_range(fd: int, start: int, end: int | None, what: str) -> AsyncIterator[bytes]:
    position = start

    def read() -> bytes:
        size = READ_CHUNK if end is None else min(READ_CHUNK, end + 1 - position)
        if size <= 0:
            return b""
        try:
            return os.pread(fd, size, position)
        except OSError as exc:
            raise storage_error(f"read {what}", exc) from None

    while data := await _blocking(read):
        position += len(data)
        yield data


async def read_chunks(fd: int, size: int, what: str) -> AsyncIterator[bytes]:
    def read() -> bytes:
        try:
            return os.read(fd, size)
        except OSError as exc:
            raise storage_error(f"read {what}", exc) from None

    while data := await _blocking(read):
        yield data
