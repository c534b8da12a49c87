"""Fresh databases for each test, on SQLite and on the throwaway PostgreSQL server.

Each engine is migrated once into a template (a file for SQLite, a template database for PostgreSQL);
every test then gets its own copy, which is much faster than migrating per test.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.engine import make_url

from oscar_manager.registry import migrations

T = TypeVar("T")


def run_in_thread(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even when the caller's thread has a running loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def migrate_in_thread(url: str) -> None:
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(migrations.upgrade, url).result()


def with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin(url: str, *statements: str) -> None:
    connection = await asyncpg.connect(_asyncpg_dsn(url))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


class PostgresDatabases:
    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self._template: str | None = None

    def create(self, *, migrated: bool) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        if migrated:
            template = self._migrated_template()
            run_in_thread(_admin(self.admin_url, f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
        else:
            run_in_thread(_admin(self.admin_url, f'CREATE DATABASE "{name}"'))
        return with_database(self.admin_url, name)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        run_in_thread(_admin(self.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def _migrated_template(self) -> str:
        if self._template is None:
            name = f"tmpl_{uuid.uuid4().hex[:12]}"
            run_in_thread(_admin(self.admin_url, f'CREATE DATABASE "{name}"'))
            migrate_in_thread(with_database(self.admin_url, name))
            self._template = name
        return self._template


class SqliteDatabases:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._template: Path | None = None

    def create(self, target: Path, *, migrated: bool) -> str:
        if migrated:
            shutil.copyfile(self._migrated_template(), target)
        return f"sqlite+aiosqlite:///{target}"

    def _migrated_template(self) -> Path:
        if self._template is None:
            path = self.directory / "template.db"
            migrate_in_thread(f"sqlite+aiosqlite:///{path}")
            self._template = path
        return self._template
