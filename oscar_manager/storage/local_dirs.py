"""Walking the local store's folders one directory at a time, never following a link.

Each step opens the next folder relative to the previous folder's descriptor with ``O_NOFOLLOW``, so a
symlink swapped in between a check and a use (a job may plant one in a bucket) cannot redirect the walk
out of the storage root. The errno groups say how the local store reads a failed step.
"""

from __future__ import annotations

import contextlib
import errno
import os

from oscar_manager.storage.nofollow import DIR_FLAGS

# "Something that is not a directory (a file, a symlink) sits where a directory should be."
NOT_A_DIR = (errno.ENOTDIR, errno.ELOOP)
# Reasons a key cannot name an existing object.
ABSENT = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG)


def open_dir(name: str, *, dir_fd: int, create: bool) -> int:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            raise
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, dir_fd=dir_fd)
    return os.open(name, DIR_FLAGS, dir_fd=dir_fd)


def descend(fd: int, names: list[str], *, create: bool) -> int:
    """Walk from directory ``fd`` (consumed) through ``names``; the last directory's descriptor."""
    try:
        for name in names:
            next_fd = open_dir(name, dir_fd=fd, create=create)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd
