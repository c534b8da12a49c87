"""Alembic migrations, upgrade and downgrade, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from oscar_manager.registry import migrations
from oscar_manager.registry.tables import Base

pytestmark = pytest.mark.asyncio


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
