"""The image config's ``User`` as numbers, names looked up in the image's own /etc/passwd and /etc/group,
read without following any link the image holds (one could point at the host's /etc/shadow)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Final

from oscar_manager.backends.images.errors import ImageRefused

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
LIMIT: Final = 1 << 20


def read_in_root(root: Path, relative: str) -> bytes | None:
    """A regular file of the image by its path inside it; None when missing, a link or too large."""
    parts = [part for part in relative.split("/") if part]
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        file_fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
            return None
        raise
    finally:
        os.close(fd)
    with open(file_fd, "rb", closefd=True) as file:
        info = os.fstat(file_fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > LIMIT:
            return None
        return file.read(LIMIT)


def _lookup(root: Path, table: str, name: str) -> tuple[int, int] | None:
    """(id, primary gid) of ``name`` in etc/passwd, or (gid, gid) in etc/group."""
    raw = read_in_root(root, f"etc/{table}")
    for line in (raw or b"").decode(errors="replace").splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[0] == name and fields[2].isdigit():
            number = int(fields[2])
            return (number, int(fields[3])) if table == "passwd" and fields[3].isdigit() else (number, number)
    return None


def resolve_user(root: Path, user: str, *, image: str) -> tuple[int, int]:
    """``user``, ``uid``, ``user:group``, ``uid:gid``... as a runtime reads them; empty: root."""
    if not user:
        return 0, 0
    name, _, group = user.partition(":")
    if name.isdigit():
        uid = int(name)
        found = None
    else:
        found = _lookup(root, "passwd", name)
        if found is None:
            raise ImageRefused(f"image {image}: its user {name!r} is not in its /etc/passwd")
        uid = found[0]
    if group:
        if group.isdigit():
            return uid, int(group)
        group_found = _lookup(root, "group", group)
        if group_found is None:
            raise ImageRefused(f"image {image}: its group {group!r} is not in its /etc/group")
        return uid, group_found[0]
    return uid, found[1] if found is not None else 0
