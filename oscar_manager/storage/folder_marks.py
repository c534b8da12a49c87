"""Folder markers of the local store: which folders the manager made (a service's ``in``/``out``).

MinIO keeps a folder made for a service as an empty object ``in/``, and upstream's bucket listing shows
it. Here folders are directories, and a directory made only because a file was put under it is no marker
(MinIO has none for it either): ``ensure_folder`` marks the directories it is asked for with an extended
attribute, as POSIX-backed S3 gateways mark their directory objects. On a file system without user
extended attributes nothing is marked and no marker is listed.
"""

from __future__ import annotations

import contextlib
import errno
import os

MARK = "user.oscar-manager.folder"
# The MD5 of no bytes: the ETag S3 servers give a folder marker.
EMPTY_ETAG = "d41d8cd98f00b204e9800998ecf8427e"
_UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES)


def mark(dir_fd: int) -> None:
    with contextlib.suppress(OSError):
        os.setxattr(dir_fd, MARK, b"")


def is_marked(dir_fd: int) -> bool:
    try:
        os.getxattr(dir_fd, MARK)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, *_UNSUPPORTED):
            return False
        raise
    return True
