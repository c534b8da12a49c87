"""Alembic migrations, upgrade and downgrade, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import DateTime, Integer, LargeBinary, String, column, insert, inspect, select, table
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from oscar_manager.domain.events import DEDUP_KEY_MAX, bounded_key
from oscar_manager.registry import Database, migrations
from oscar_manager.registry.tables import Base

pytestmark = pytest.mark.asyncio

# The events table's columns the upgrade tests write and read with plain SQL, as old registries had them.
EVENTS = table(
    "events",
    column("id", Integer),
    column("dedup_key", String),
    column("service", String),
    column("job_id", String),
    column("payload", LargeBinary),
    column("status", String),
    column("attempts", Integer),
    column("available_at", DateTime(timezone=True)),
    column("created_at", DateTime(timezone=True)),
)


async def table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))


@pytest.fixture
async def engine(empty_database_url: str) -> Any:
    engine = create_async_engine(empty_database_url)
    yield engine
    await engine.dispose()


async def test_upgrade_downgrade_upgrade(engine: AsyncEngine) -> None:
    assert await table_names(engine) == set()
    await migrations.upgrade_engine(engine)
    assert {"services", "alembic_version"} <= await table_names(engine)
    assert await migrations.current_revision(engine) == migrations.head_revision()
    await migrations.downgrade_engine(engine, "base")
    assert await table_names(engine) == {"alembic_version"}
    assert await migrations.current_revision(engine) is None
    await migrations.upgrade_engine(engine)
    assert "services" in await table_names(engine)


async def test_upgrade_twice_is_a_no_op(engine: AsyncEngine) -> None:
    await migrations.upgrade_engine(engine)
    await migrations.upgrade_engine(engine)
    assert await migrations.current_revision(engine) == migrations.head_revision()


async def test_migrations_match_the_table_definitions(engine: AsyncEngine) -> None:
    """A model change without its migration shows up here as a difference."""
    await migrations.upgrade_engine(engine)

    def differences(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with engine.connect() as connection:
        assert await connection.run_sync(differences) == []


async def test_an_upgraded_registry_knows_until_when_object_events_were_keyed_by_etag(
    engine: AsyncEngine,
) -> None:
    """0006: uploads already run under the old keys are not run again after the upgrade (the scans of
    input folders would otherwise find each one as a new upload); a new registry has no such time."""
    await migrations.upgrade_engine(engine, "0004")
    last = datetime(2026, 11, 30, 8, 0, 0, 250000, tzinfo=UTC)
    rows = [
        ("object:svc:b/in/a.txt@e1", last - timedelta(days=1)),
        ("object:svc:b/in/b.txt@e2", last),
        ("request:svc:0123", last + timedelta(days=1)),  # not an object event
    ]
    async with engine.begin() as connection:
        for key, created in rows:
            await connection.execute(
                insert(EVENTS).values(
                    dedup_key=key,
                    service="svc",
                    job_id=key[-8:],
                    payload=b"{}",
                    status="done",
                    attempts=1,
                    available_at=created,
                    created_at=created,
                )
            )
    await migrations.upgrade_engine(engine)

    database = Database(engine.url.render_as_string(hide_password=False))
    try:
        async with database.reading() as tx:
            assert await tx.marks.legacy_object_keys_until() == last
    finally:
        await database.dispose()


async def test_keys_too_long_for_the_column_are_rewritten_as_the_intake_now_computes_them(
    engine: AsyncEngine,
) -> None:
    """0007: SQLite held dedup keys of any length (PostgreSQL could not); an upload recorded under one
    is found under the bounded key after the upgrade, so the scan does not run it again. Keys that fit
    are untouched."""
    await migrations.upgrade_engine(engine, "0006")
    short = "object:svc:b/in/a.txt@e1#1764950400000"
    long = "object:svc:b/in/" + "k" * DEDUP_KEY_MAX + "@e1#1764950400000"
    keys = [short, long] if engine.dialect.name == "sqlite" else [short]
    now = datetime.now(UTC)
    async with engine.begin() as connection:
        for n, key in enumerate(keys):
            await connection.execute(
                insert(EVENTS).values(
                    dedup_key=key,
                    service="svc",
                    job_id=f"svc-{n}",
                    payload=b"{}",
                    status="done",
                    attempts=1,
                    available_at=now,
                    created_at=now,
                )
            )
    await migrations.upgrade_engine(engine)
    async with engine.connect() as connection:
        stored = set((await connection.execute(select(EVENTS.c.dedup_key))).scalars())
    assert stored == {bounded_key(key) for key in keys}
    assert short in stored


async def test_a_new_registry_has_no_etag_keyed_events(engine: AsyncEngine) -> None:
    await migrations.upgrade_engine(engine)
    database = Database(engine.url.render_as_string(hide_password=False))
    try:
        async with database.reading() as tx:
            assert await tx.marks.legacy_object_keys_until() is None
    finally:
        await database.dispose()
