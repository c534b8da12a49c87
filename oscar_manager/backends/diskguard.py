"""How much disk a job's folder holds, counted without following anything the script can change.

The job folder sits on the manager's file system, which has no per-job quota: RLIMIT_FSIZE (set in the
script's shell) stops any single file at the bound, and the sandbox sums the folder with this module while
the script runs and once it has ended, killing the job when the sum is over. Between two sums a script can
write at most what it writes in one interval (``WATCH_INTERVAL``).

The walk holds directory descriptors (``os.fwalk``) and never follows a symbolic link; hard links count once;
each inode counts at least one block, so a flood of empty files is bounded too. Files the job deleted but
keeps open still use disk: with a cgroup, those held by its processes are counted as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

from oscar_manager.backends.cgroups import JobCgroup

WATCH_INTERVAL: Final = 0.5
BLOCK: Final = 4096


def folder_usage(root: Path, *, holders: Iterable[int] = ()) -> int:
    """Bytes used below ``root`` (allocated blocks, at least one block an inode), plus deleted files still
    open in the processes ``holders`` on the same file system."""
    seen: set[tuple[int, int]] = set()
    total = 0
    try:
        device = os.stat(root, follow_symlinks=False).st_dev
    except OSError:
        return 0

    def count(info: os.stat_result) -> None:
        nonlocal total
        key = (info.st_dev, info.st_ino)
        if key not in seen:
            seen.add(key)
            total += max(info.st_blocks * 512, BLOCK)

    for _, dirs, files, dir_fd in os.fwalk(root, follow_symlinks=False):
        for name in [*dirs, *files]:
            with contextlib.suppress(OSError):  # removed meanwhile: no longer uses disk
                count(os.stat(name, dir_fd=dir_fd, follow_symlinks=False))
    for pid in holders:
        for info in _deleted_open_files(pid):
            if info.st_dev == device:
                count(info)
    return total


def _deleted_open_files(pid: int) -> list[os.stat_result]:
    found: list[os.stat_result] = []
    fd_dir = f"/proc/{pid}/fd"
    with contextlib.suppress(OSError):
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                if os.readlink(f"{fd_dir}/{fd}").endswith(" (deleted)"):
                    info = os.stat(f"{fd_dir}/{fd}")  # the open file itself, through /proc
                    if stat.S_ISREG(info.st_mode):
                        found.append(info)
    return found


class DiskWatch:
    """Sums the job folder every ``WATCH_INTERVAL`` while the script runs, and once more at its end; kills
    the job (its cgroup, and through ``kill`` its process group) the first time the sum is over the bound."""

    def __init__(self, root: Path, limit: int, *, kill: Callable[[], None], group: JobCgroup | None) -> None:
        self._root, self._limit, self._kill, self._group = root, limit, kill, group
        self._task: asyncio.Task[bool] | None = None
        self._over = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> bool:
        """Stop watching; True if the job is over its bound (checked one last time if not yet)."""
        task, self._task = self._task, None
        if task is None:
            return self._over
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if not self._over:
            self._over = await self._measure() > self._limit
        return self._over

    async def _watch(self) -> bool:
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            if await self._measure() > self._limit:
                self._over = True
                if self._group is not None:
                    await asyncio.to_thread(self._group.kill)
                self._kill()
                return True

    async def _measure(self) -> int:
        holders = self._group.pids() if self._group is not None else ()
        return await asyncio.to_thread(folder_usage, self._root, holders=holders)
