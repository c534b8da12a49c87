"""Opening paths that someone else may have swapped for links: never followed, at any level.

Shared by local storage (a job could plant a link in a bucket folder) and the supervisor (a script may swap
anything in its workspace): each folder is opened relative to its parent's descriptor with these flags, and
each file is checked to be a regular file on the descriptor itself before a byte is read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO someone left there must not hang a worker thread.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_regular(name: str | Path, *, dir_fd: int | None = None) -> tuple[int, os.stat_result] | None:
    """A blocking read descriptor on the regular file ``name`` and its stat; ``None`` for anything else.
    An ``OSError`` from opening it (gone, a link, a FIFO without writer) is the caller's to judge."""
    fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return None
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st
