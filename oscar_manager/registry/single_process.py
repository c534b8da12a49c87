"""One serving process per SQLite file.

SQLite's own locking keeps a second process from corrupting the file, but not from running: two managers
on one file would both do the work that must have one owner (claiming events, watching buckets and jobs),
since leases and leader election are PostgreSQL's. So the serving process holds an exclusive ``flock`` on
a lock file beside the database (``<db>.lock``) for its whole life, and a second one is refused before it
migrates or touches anything. The kernel drops the lock when the process ends, however it ends (no stale
lock after ``kill -9``). PostgreSQL is what several replicas share.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sqlalchemy.engine import make_url


class DatabaseInUse(Exception):
    """Another process serves the same SQLite file."""


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite database URL; None for other databases and in-memory SQLite."""
    parsed = make_url(url)
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or not path or path == ":memory:" or path.startswith("file:"):
        return None
    return Path(path).resolve()


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


def hold_sqlite_file(url: str) -> int | None:
    """Lock the SQLite file of ``url`` for this process's life; the lock's descriptor (None: not SQLite).

    The descriptor is not inherited by child processes (scripts), so none of them keeps the lock alive
    after the manager ends. Raises :class:`DatabaseInUse` when another process holds it.
    """
    database = sqlite_file(url)
    if database is None:
        return None
    path = lock_path(database)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise DatabaseInUse(
            f"another oscar-manager process is serving the SQLite database {database} (it holds {path}): "
            "a SQLite file serves one manager process only. Stop that one first, or, to run several "
            "replicas, give them all one PostgreSQL database in OSCAR_DATABASE_URL."
        ) from None
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor
