"""What a previous process left behind when it was killed (kill -9, a crash, a power cut), removed at start.

- job and run folders of the local backend (``work/``): the users' inputs and outputs of jobs that will
  never finish in that folder (a job left running is run again in a new one);
- the local store's staging area (``buckets/.staging``): ``*.part`` files of uploads never renamed into
  place, and buckets renamed away for deletion but not yet removed;
- multipart uploads to the S3 face (``s3-uploads/``) untouched for a day: a client may still complete a
  recent one after a restart, as S3 allows, but not one it abandoned.

Only the manager's own folders are swept, never the buckets' objects, and links are never followed (a
job could plant one pointing anywhere): a symlink is removed as a link, and ``shutil.rmtree`` walks by
descriptors without following any. One manager per data directory is assumed: a second manager sharing it
would have its jobs' folders removed under it (that deployment is not supported).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import time
from pathlib import Path

log = logging.getLogger(__name__)

ABANDONED_UPLOAD_AGE = 24 * 3600.0


def sweep_all(folder: Path) -> int:
    """Remove everything inside ``folder`` (not ``folder`` itself); how many entries were removed."""
    return sum(_remove(Path(entry.path)) for entry in _entries(folder))


def sweep_older(folder: Path, *, age: float = ABANDONED_UPLOAD_AGE, now: float | None = None) -> int:
    """Remove the entries of ``folder`` in which nothing changed for ``age`` seconds."""
    cutoff = (time.time() if now is None else now) - age
    return sum(_remove(Path(entry.path)) for entry in _entries(folder) if _newest_change(entry) < cutoff)


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            log.warning("not sweeping %s: not a folder", folder)
            return []
        with os.scandir(folder) as scan:
            return list(scan)
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("cannot sweep %s: %s", folder, exc)
        return []


def _newest_change(entry: os.DirEntry[str]) -> float:
    """The latest modification of an upload's folder or of what it holds (a part written lately)."""
    newest = entry.stat(follow_symlinks=False).st_mtime
    if entry.is_dir(follow_symlinks=False):
        for inner in _entries(Path(entry.path)):
            newest = max(newest, inner.stat(follow_symlinks=False).st_mtime)
    return newest


def _remove(path: Path) -> int:
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            # Whatever can go goes (a script may have left a folder it made unreadable); the rest is said.
            shutil.rmtree(path, ignore_errors=True)
            if os.path.lexists(path):
                log.warning("could not remove all of %s", path)
                return 0
        else:
            os.unlink(path)  # a file or a symlink: the link itself, never its target
    except FileNotFoundError:
        return 0
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc)
        return 0
    return 1
