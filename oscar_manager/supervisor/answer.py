"""What a sync run answers (faas-supervisor's ``create_response``), built without holding it in memory.

One output file is answered base64-encoded, several as a base64 zip, none (or a storage event) with the
script's output. The file (or the zip, spooled to an unnamed temporary file outside the job folder) is
kept open and encoded chunk by chunk as the answer is sent, so a large output costs the manager a chunk,
not its size. Answers are capped (``OSCAR_MAX_RUN_RESPONSE_BYTES``) from the ``fstat`` sizes of the files,
before anything is read: a sparse file counts its apparent size.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import os
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

from oscar_manager.errors import OscarError
from oscar_manager.storage.blocking import run_blocking
from oscar_manager.supervisor.log import SupervisorLog
from oscar_manager.supervisor.outputs import OpenFile, open_output, output_files
from oscar_manager.supervisor.workspace import Workspace

if TYPE_CHECKING:
    from oscar_manager.supervisor.stage import Invocation

SETTING = "OSCAR_MAX_RUN_RESPONSE_BYTES"
# Raw bytes per encoded chunk: a multiple of 3, so the chunks' base64 concatenate into the whole's.
RAW_CHUNK = 3 * 256 * 1024
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_ZIP_END = (2107, 12, 31, 23, 59, 59)


class ResponseTooLarge(OscarError):
    """A sync answer over the limit: refused before it is encoded, with the size, the limit and the setting
    that raises it."""

    status_code = 500

    def __init__(self, size: int, limit: int, *, what: str = "the answer") -> None:
        super().__init__(
            f"{what} is {size} bytes, over the limit of {limit} bytes for sync answers ({SETTING}); "
            "write large results to the service's output bucket and run it as a job"
        )
        self.size = size
        self.limit = limit


def encoded_size(size: int) -> int:
    """The length of the base64 of ``size`` bytes."""
    return 4 * ((size + 2) // 3)


class SyncAnswer:
    """The answer's bytes as they are sent: ``data`` as is, or the base64 of ``size`` bytes of the open
    file ``fd`` (owned: :meth:`close` closes it). Can be read more than once."""

    def __init__(self, *, data: bytes = b"", fd: int | None = None, size: int = 0) -> None:
        self._data = data
        self._fd = fd
        self._size = size

    @classmethod
    def of_bytes(cls, data: bytes) -> SyncAnswer:
        return cls(data=data)

    @property
    def length(self) -> int:
        return len(self._data) if self._fd is None else encoded_size(self._size)

    def _encoded_chunk(self, offset: int) -> bytes:
        assert self._fd is not None
        want = min(RAW_CHUNK, self._size - offset)
        data = os.pread(self._fd, want, offset)
        if len(data) != want:
            raise OSError(f"the answer's file shrank to {offset + len(data)} of {self._size} bytes")
        return base64.b64encode(data)

    def chunks(self) -> Iterator[bytes]:
        """The answer in pieces (blocking reads)."""
        if self._fd is None:
            if self._data:
                yield self._data
            return
        for offset in range(0, self._size, RAW_CHUNK):
            yield self._encoded_chunk(offset)

    async def stream(self) -> AsyncIterator[bytes]:
        """The answer in pieces, read and encoded in a worker thread; closes the answer at the end."""
        try:
            if self._fd is None:
                if self._data:
                    yield self._data
                return
            for offset in range(0, self._size, RAW_CHUNK):
                yield await run_blocking(functools.partial(self._encoded_chunk, offset))
        finally:
            self.close()

    def read(self) -> bytes:
        """The whole answer in memory (for tests and small answers)."""
        return b"".join(self.chunks())

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd, self._size = self._fd, None, 0
            os.close(fd)


def _zip_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    # Zip dates run from 1980 to 2107: a file the script dated outside them is clamped, not an error.
    stamp = tuple(time.localtime(max(mtime, 0))[:6])
    return min(max(stamp, _ZIP_EPOCH), _ZIP_END)  # type: ignore[return-value]


def _spool_zip(files: list[OpenFile]) -> tuple[int, int]:
    """The files zipped into an unnamed temporary file (outside the job folder): (its fd, its size)."""
    spool = tempfile.TemporaryFile()
    try:
        with zipfile.ZipFile(spool, "w", zipfile.ZIP_DEFLATED) as archive:
            for opened in files:
                info = zipfile.ZipInfo(opened.name, date_time=_zip_time(opened.st.st_mtime))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (opened.st.st_mode & 0xFFFF) << 16
                info.file_size = opened.size
                with archive.open(info, "w") as entry:
                    for offset in range(0, opened.size, RAW_CHUNK):
                        data = os.pread(opened.fd, min(RAW_CHUNK, opened.size - offset), offset)
                        if not data:
                            break
                        entry.write(data)
        size = spool.tell()
        return os.dup(spool.fileno()), size
    finally:
        spool.close()


def render_response(
    *,
    invocation: Invocation,
    workspace: Workspace,
    script_output: bytes,
    limit: int | None,
    log: SupervisorLog | None = None,
) -> SyncAnswer:
    """The sync answer, read from the workspace through its held descriptors; ``ResponseTooLarge`` past
    ``limit`` bytes (before base64). Blocking: call it in a worker thread."""

    def check(size: int, what: str = "the answer") -> None:
        if limit is not None and size > limit:
            raise ResponseTooLarge(size, limit, what=what)

    names = [] if invocation.storage_event is not None else output_files(workspace, log)
    files: list[OpenFile] = []
    try:
        for name in names:
            opened = open_output(workspace, name)
            if opened is not None:
                files.append(opened)
        if not files:
            check(len(script_output), "the script's output")
            return SyncAnswer.of_bytes(script_output)
        check(sum(opened.size for opened in files), "the output" if len(files) == 1 else "the outputs")
        if len(files) == 1:
            only = files.pop()
            return SyncAnswer(fd=only.fd, size=only.size)
        fd, size = _spool_zip(files)
        try:
            check(size, "the zip of the outputs")
        except ResponseTooLarge:
            os.close(fd)
            raise
        return SyncAnswer(fd=fd, size=size)
    finally:
        for opened in files:
            with contextlib.suppress(OSError):
                os.close(opened.fd)
