from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from oscar_manager.operations import Database
from oscar_manager.settings import Settings
from tests.support.app import app_client
from tests.support.components import PostgresServer, unavailable
from tests.support.databases import PostgresDatabases, SqliteDatabases
from tests.support.factories import make_settings

DATABASE_KINDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    url = os.environ.get("OSCAR_TEST_DATABASE_URL")
    server = None
    if not url:
        try:
            server = PostgresServer.start()
        except Exception as exc:
            unavailable(f"cannot start a PostgreSQL server: {exc}")
        url = server.url
    try:
        yield PostgresDatabases(url)
    finally:
        if server is not None:
            server.stop()


@pytest.fixture(scope="session")
def sqlite_databases(tmp_path_factory: pytest.TempPathFactory) -> SqliteDatabases:
    return SqliteDatabases(tmp_path_factory.mktemp("sqlite-templates"))


def _database(request: pytest.FixtureRequest, tmp_path: Path, *, migrated: bool) -> Iterator[str]:
    if request.param == "sqlite":
        sqlite: SqliteDatabases = request.getfixturevalue("sqlite_databases")
        yield sqlite.create(tmp_path / "oscar.db", migrated=migrated)
        return
    postgres: PostgresDatabases = request.getfixturevalue("postgres_databases")
    url = postgres.create(migrated=migrated)
    try:
        yield url
    finally:
        postgres.drop(url)


@pytest.fixture(params=DATABASE_KINDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A freshly migrated database, once on SQLite and once on PostgreSQL."""
    yield from _database(request, tmp_path, migrated=True)


@pytest.fixture(params=DATABASE_KINDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database with no tables, once on SQLite and once on PostgreSQL."""
    yield from _database(request, tmp_path, migrated=False)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url)
    try:
        yield db
    finally:
        await db.dispose()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url=database_url, data_dir=tmp_path / "data")


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app on a fresh database, driven in-process, authenticated as the admin."""
    async with app_client(settings) as http:
        yield http
