"""The files of a job's workspace, reached only through the workspace's held descriptors.

Everything below the input and output folders belongs to the script, which may have swapped any folder
for a link (to ``/etc``, the manager's data directory, a pod's mounted credentials) or a file for a FIFO.
So each folder is opened with ``openat(parent, name, O_DIRECTORY | O_NOFOLLOW)`` and each file with
``O_NOFOLLOW | O_NONBLOCK`` and checked to be a regular file with ``fstat`` before a byte is read: a link
at any level is an error, never followed, whatever the script renames in between.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass

from oscar_manager.storage.blocking import run_blocking
from oscar_manager.storage.nofollow import DIR_FLAGS, open_regular
from oscar_manager.supervisor.log import SupervisorLog
from oscar_manager.supervisor.workspace import Workspace

# Something else than a folder (a link, a file) where a folder was, or nothing any more.
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
# Object keys are at most 1024 bytes, so no deeper output can be uploaded anyway; a deeper tree is not
# walked (each level holds a descriptor).
MAX_DEPTH = 512
COPY_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class OpenFile:
    """A regular output file opened for reading, with its ``fstat``; the caller closes ``fd``."""

    name: str
    fd: int
    st: os.stat_result

    @property
    def size(self) -> int:
        return self.st.st_size


def _utf8(name: str) -> bool:
    # Names come from the file system decoded with surrogateescape: undecodable bytes are lone surrogates.
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def output_files(workspace: Workspace, log: SupervisorLog | None = None) -> list[str]:
    """Regular files under the output folder, relative, sorted. Links are never followed or returned,
    and a name that is not UTF-8 (no object key, no zip entry can hold it) is skipped with a warning."""
    found: list[str] = []

    def skip(path: str) -> None:
        if log is not None:
            log.warning(f"Skipping output {path!r}: its name is not valid UTF-8")

    def walk(fd: int, folder: str, depth: int) -> None:
        with os.scandir(fd) as scan:
            entries = sorted((entry.name, entry.is_dir(follow_symlinks=False)) for entry in scan)
        for name, is_dir in entries:
            path = folder + name
            if not _utf8(name):
                skip(path)
                continue
            if not is_dir:
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISREG(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                        found.append(path)
                continue
            if depth >= MAX_DEPTH:
                continue
            try:
                sub = os.open(name, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in _GONE:
                    continue
                raise
            try:
                walk(sub, path + "/", depth + 1)
            finally:
                os.close(sub)

    walk(workspace.output_fd, "", 0)
    return sorted(found)


def open_output(workspace: Workspace, name: str) -> OpenFile | None:
    """The output file ``name`` (as ``output_files`` lists it) opened without following any link, or
    None when it is no longer a regular file there."""
    *folders, leaf = name.split("/")
    fd = os.dup(workspace.output_fd)
    try:
        for folder in folders:
            sub = os.open(folder, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = sub
        opened = open_regular(leaf, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (*_GONE, errno.ENXIO):  # ENXIO: a FIFO with no writer
            return None
        raise
    finally:
        os.close(fd)
    if opened is None:
        return None
    file_fd, st = opened
    return OpenFile(name=name, fd=file_fd, st=st)


async def file_chunks(opened: OpenFile, chunk: int = COPY_CHUNK) -> AsyncIterator[bytes]:
    """The file's content as ``fstat`` saw it when it was opened (a file that something still writes to
    is cut at that size), read in a worker thread chunk by chunk."""
    offset = 0
    while offset < opened.size:
        data = await run_blocking(
            functools.partial(os.pread, opened.fd, min(chunk, opened.size - offset), offset)
        )
        if not data:
            break
        offset += len(data)
        yield data


async def write_input(workspace: Workspace, name: str, chunks: AsyncIterator[bytes]) -> int:
    """Write a downloaded input as the new file ``name`` of the input folder, through its descriptor;
    return its size. The file is created when the first chunk arrives (or the stream ends), so a missing
    object leaves nothing behind."""
    fd: int | None = None
    size = 0
    pending = bytearray()

    def flush() -> None:
        assert fd is not None
        with memoryview(pending) as whole:
            view = whole
            while view:
                view = view[os.write(fd, view) :]
            view.release()
        pending.clear()

    try:
        async for data in chunks:
            if fd is None:
                fd = await run_blocking(functools.partial(workspace.create_input, name), discard=os.close)
            pending += data
            size += len(data)
            if len(pending) >= COPY_CHUNK:
                await run_blocking(flush)
        if fd is None:
            fd = await run_blocking(functools.partial(workspace.create_input, name), discard=os.close)
        if pending:
            await run_blocking(flush)
    finally:
        if fd is not None:
            os.close(fd)
    return size
