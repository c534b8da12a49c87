"""The data directory is private: it holds the database (every token and secret in clear), the admin
password, the presign key, the webhook token and, on the embedded default, every bucket.

``serve`` and ``migrate`` run with umask 077, so whatever the manager creates there is 0600 (folders
0700); the directory itself is made 0700 and the SQLite file is created 0600 before SQLite opens it (its
-wal and -shm files take the database's mode). Job folders are not affected: they are made reachable by
the script's user explicitly. A data directory from an older version may be looser: that is logged at
start, not changed behind the operator's back.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from oscar_manager.settings import Settings

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077


def prepare(settings: Settings, *, set_umask: bool = False) -> None:
    """Create the data directory 0700 (and an empty SQLite database 0600), then warn about loose modes."""
    if set_umask:
        os.umask(PRIVATE_UMASK)
    data_dir = settings.oscar_data_dir
    if not data_dir.exists():
        data_dir.mkdir(parents=True, mode=0o700)
        os.chmod(data_dir, 0o700)  # mkdir's mode goes through the umask
    if not settings.oscar_database_url:
        database = data_dir / "oscar.db"
        if not database.exists():
            os.close(os.open(database, os.O_CREAT | os.O_WRONLY, 0o600))
    loose = loose_paths(settings)
    if loose:
        log.warning(
            "The data directory holds secrets but these are open to other users: %s (chmod -R go-rwx %s)",
            ", ".join(f"{path} ({oct(mode)})" for path, mode in loose),
            data_dir,
        )


def loose_paths(settings: Settings) -> list[tuple[Path, int]]:
    """The data directory and the secrets in it that others may read, with their modes."""
    data_dir = settings.oscar_data_dir
    candidates = [
        data_dir,
        *(data_dir / name for name in ("oscar.db", "oscar.db-wal", "oscar.db-shm")),
        settings.presign_key_file,
        settings.password_file,
        settings.webhook_token_file,
        settings.buckets_dir,
    ]
    found = []
    for path in candidates:
        try:
            mode = stat.S_IMODE(os.stat(path, follow_symlinks=False).st_mode)
        except OSError:
            continue
        if mode & 0o077:
            found.append((path, mode))
    return found
