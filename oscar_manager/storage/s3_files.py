"""Local files at the S3 adapter's edge: upload sources and staged downloads.

An uploaded file may come from a job's sandbox, where a planted symlink could point anywhere, so it is
opened without following links and must be a regular file. A download is written under a temporary name
next to its target and renamed into place when complete, so no reader sees half a file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat as stat_module
from pathlib import Path
from typing import BinaryIO

from oscar_manager.storage.base import StorageError

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


class StagedDownload:
    """A download being written under a temporary name next to its target."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.path = target.parent / f".{target.name}.{secrets.token_hex(6)}.part"
        self.out: BinaryIO | None = None

    def create(self) -> None:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.out = os.fdopen(os.open(self.path, _CREATE_FLAGS, 0o666), "wb")

    def write(self, data: bytes) -> None:
        assert self.out is not None
        self.out.write(data)

    def publish(self) -> None:
        assert self.out is not None
        self.out.close()
        os.replace(self.path, self.target)

    def discard(self) -> None:
        if self.out is not None:
            with contextlib.suppress(OSError):
                self.out.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def open_source(source: Path) -> BinaryIO:
    """``source`` opened for reading; a symlink or anything but a regular file is refused.

    Uploaded files may come from a job's sandbox, where a planted symlink could point anywhere.
    """
    try:
        fd = os.open(source, _READ_FLAGS)
    except OSError as exc:
        raise StorageError(f"cannot read {str(source)!r}: {exc.strerror or exc}") from None
    try:
        if not stat_module.S_ISREG(os.fstat(fd).st_mode):
            raise StorageError(f"cannot read {str(source)!r}: not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
