"""Engine, sessions and the transaction a request or worker iteration owns."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from oscar_manager.registry.repository import EventRepository, JobRepository, ServiceRepository


class Transaction:
    """The repositories of one unit of work. It commits when its block ends and rolls back on error."""

    def __init__(self, session: AsyncSession) -> None:
        self.services = ServiceRepository(session)
        self.events = EventRepository(session)
        self.jobs = JobRepository(session)


def _tune_sqlite(engine: AsyncEngine, *, writer: bool = True) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves (below) instead of pysqlite's deferred one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    if not writer:
        return  # readers issue no BEGIN at all: each statement sees the latest committed state (WAL)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        # IMMEDIATE takes the write lock up front: concurrent writers then wait (busy_timeout) instead of
        # failing with "database is locked" when a deferred reader tries to upgrade to a writer.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(url: str, *, writer: bool = True) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_async_engine(url)
        _tune_sqlite(engine, writer=writer)
        return engine
    return create_async_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(url)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time. Its busy handler waits in growing sleeps (up to tens of ms), so
        # letting this process's transactions queue here instead keeps each one at its real cost.
        self._sqlite_writer: asyncio.Lock | None = (
            asyncio.Lock() if self.engine.dialect.name == "sqlite" else None
        )
        # SQLite readers need neither that lock nor a write transaction (WAL lets them run beside the
        # writer), so single lookups get an engine of their own; other databases share the one engine.
        self._read_engine = create_engine(url, writer=False) if self._sqlite_writer else self.engine
        self._read_sessions = async_sessionmaker(self._read_engine, expire_on_commit=False)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with contextlib.AsyncExitStack() as stack:
            if self._sqlite_writer is not None:
                await stack.enter_async_context(self._sqlite_writer)
            session = await stack.enter_async_context(self._sessions())
            await stack.enter_async_context(session.begin())
            yield Transaction(session)

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[Transaction]:
        """For lookups that write nothing: on SQLite it neither waits for nor holds up the writers. Each
        statement sees the latest committed data; use :meth:`transaction` for a consistent snapshot."""
        async with self._read_sessions() as session:
            yield Transaction(session)

    async def ping(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._read_engine is not self.engine:
            await self._read_engine.dispose()
