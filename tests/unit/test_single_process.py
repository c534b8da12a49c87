"""The lock keeping a SQLite file to one serving process (``registry/single_process.py``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from oscar_manager.registry.single_process import DatabaseInUse, hold_sqlite_file, lock_path, sqlite_file


def test_only_a_sqlite_file_has_a_lock(tmp_path: Path) -> None:
    assert sqlite_file(f"sqlite+aiosqlite:///{tmp_path}/oscar.db") == tmp_path / "oscar.db"
    assert sqlite_file("sqlite+aiosqlite:///relative.db") == Path("relative.db").resolve()
    assert sqlite_file("sqlite+aiosqlite:///:memory:") is None
    assert sqlite_file("sqlite+aiosqlite://") is None
    assert hold_sqlite_file("postgresql+asyncpg://user@127.0.0.1:1/db") is None


def test_a_second_holder_is_refused_until_the_first_lets_go(tmp_path: Path) -> None:
    """flock conflicts between two open files even in one process: what a second process meets."""
    url = f"sqlite+aiosqlite:///{tmp_path}/oscar.db"
    first = hold_sqlite_file(url)
    assert first is not None
    assert lock_path(tmp_path / "oscar.db") == tmp_path / "oscar.db.lock"
    assert (tmp_path / "oscar.db.lock").exists()
    with pytest.raises(DatabaseInUse) as refused:
        hold_sqlite_file(url)
    assert str(tmp_path / "oscar.db") in str(refused.value)
    assert "PostgreSQL" in str(refused.value)
    # Not handed down to the scripts the manager starts.
    assert not os.get_inheritable(first)
    os.close(first)
    again = hold_sqlite_file(url)
    assert again is not None
    os.close(again)
