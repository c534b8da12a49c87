"""Engine, sessions and the transaction a request or worker iteration owns."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from oscar_manager.domain.service import Service
from oscar_manager.registry import sqlite_inline
from oscar_manager.registry.bucket_repository import BucketRepository
from oscar_manager.registry.event_repository import EventRepository
from oscar_manager.registry.group_commit import GroupCommit, Work
from oscar_manager.registry.identity_repository import IdentityRepository
from oscar_manager.registry.job_repository import JobRepository
from oscar_manager.registry.mark_repository import MarkRepository
from oscar_manager.registry.service_repository import ServiceRepository

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a cached service is trusted without a change committed by this process: a change made by
# another replica on the same database shows within this.
SERVICE_CACHE_SECONDS = 5.0
# Generations whose changed names are kept (:meth:`Database.services_changed_since`).
_JOURNAL_KEPT = 64


class Transaction:
    """The repositories of one unit of work. It commits when its block ends and rolls back on error."""

    def __init__(self, session: AsyncSession) -> None:
        self.services = ServiceRepository(session)
        self.events = EventRepository(session)
        self.jobs = JobRepository(session)
        self.marks = MarkRepository(session)
        self.identities = IdentityRepository(session)
        self.buckets = BucketRepository(session)
        self._rollback_hooks: list[Callable[[], None]] = []

    def on_rollback(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` should this transaction not commit: for what was done outside the database on
        the strength of its changes (MinIO's rules), to be set back."""
        self._rollback_hooks.append(hook)

    def _rolled_back(self) -> None:
        hooks, self._rollback_hooks = self._rollback_hooks, []
        for hook in hooks:
            try:
                hook()
            except Exception:
                log.exception("a hook run after a rollback failed")


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


def _sqlite_file(url: str) -> str | None:
    """The file of a SQLite database given by a plain path (no URI options), which runs inline."""
    parsed = make_url(url)
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or not path or path == ":memory:" or parsed.query:
        return None
    return path


def create_engine(url: str, *, writer: bool = True) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = _sqlite_file(url)
        if path is not None:
            # Statements run on the loop's thread (see sqlite_inline), not in a thread of aiosqlite's.
            engine = create_async_engine(url, async_creator=sqlite_inline.connector(path))
        else:
            engine = create_async_engine(url)
        _tune_sqlite(engine, writer=writer)
        return engine
    return create_async_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(url)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._inline = _sqlite_file(url) is not None
        # No other process uses the database at the same time: SQLite (``serve`` locks its file).
        # Several managers may share a PostgreSQL.
        self.alone = self.engine.dialect.name != "postgresql"
        # SQLite has one writer at a time. Its busy handler waits in growing sleeps (up to tens of ms), so
        # letting this process's transactions queue here instead keeps each one at its real cost.
        self._sqlite_writer: asyncio.Lock | None = (
            asyncio.Lock() if self.engine.dialect.name == "sqlite" else None
        )
        # SQLite readers need neither that lock nor a write transaction (WAL lets them run beside the
        # writer), so single lookups get an engine of their own; other databases share the one engine.
        self._read_engine = create_engine(url, writer=False) if self._sqlite_writer else self.engine
        self._read_sessions = async_sessionmaker(self._read_engine, expire_on_commit=False)
        # Group commit (:meth:`write`): writes queued while a commit is under way go in the next one.
        self._group = GroupCommit(self.transaction)
        # Services by name for :meth:`service`: (generation, service, loop time fetched). The generation
        # goes up once a transaction that changed services has committed; older entries are not used.
        self._services_generation = 0
        self._services: dict[str, tuple[int, Service | None, float]] = {}
        # The names each of the last generations changed, by the generation it led to.
        self._services_journal: dict[int, frozenset[str]] = {}

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        tx: Transaction | None = None
        try:
            async with contextlib.AsyncExitStack() as stack:
                if self._sqlite_writer is not None:
                    await stack.enter_async_context(self._sqlite_writer)
                session = await stack.enter_async_context(self._session(self._sessions))
                tx = Transaction(session)
                stack.callback(self._after_transaction, tx)
                await stack.enter_async_context(session.begin())
                yield tx
        except BaseException:
            # Rolled back (an error in the block, or the commit failed): the locks are released by now.
            if tx is not None:
                tx._rolled_back()
            raise

    @property
    def services_generation(self) -> int:
        """Goes up once a transaction of this process that changed services has ended: what a copy of
        services read before it is checked against (see :meth:`service`)."""
        return self._services_generation

    def _after_transaction(self, tx: Transaction) -> None:
        # Committed or rolled back: either way no cached service read before now may be used again.
        if tx.services.changed:
            self._services_generation += 1
            self._services.clear()
            self._services_journal[self._services_generation] = frozenset(tx.services.changed_names)
            self._services_journal.pop(self._services_generation - _JOURNAL_KEPT, None)

    def services_changed_since(self, generation: int) -> frozenset[str] | None:
        """The services this process's transactions changed after ``generation`` (None: that is too long
        ago to tell). Changes other processes commit are not in it."""
        if self._services_generation - generation >= _JOURNAL_KEPT:
            return None
        changed: set[str] = set()
        for later in range(generation + 1, self._services_generation + 1):
            changed |= self._services_journal[later]
        return frozenset(changed)

    async def service(self, name: str) -> Service | None:
        """The service named ``name`` (None: no such service), cached: for the lookup of every ``/job``.
        A change to services committed in this process is seen by the next call."""
        loop = asyncio.get_running_loop()
        generation = self._services_generation
        cached = self._services.get(name)
        if cached is not None and cached[0] == generation and loop.time() - cached[2] < SERVICE_CACHE_SECONDS:
            return cached[1]
        async with self.reading() as tx:
            service = await tx.services.get(name)
        if self._services_generation == generation:  # no change committed while reading
            if len(self._services) >= 10_000:
                self._services.clear()
            self._services[name] = (generation, service, loop.time())
        return service

    @asynccontextmanager
    async def _session(self, sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
        if not self._inline:
            async with sessions() as session:
                yield session
            return
        # Closing a session of inline SQLite never waits, so it needs none of the task (two turns of the
        # loop) that SQLAlchemy's context manager runs the close in to finish it despite a cancellation.
        session = sessions()
        try:
            yield session
        finally:
            await session.close()

    async def write(self, work: Work[T]) -> T:
        """``work(tx)``'s result once it is committed, in a transaction it may share with other writes
        (group commit, :mod:`~oscar_manager.registry.group_commit`): one commit, and on SQLite one turn
        of the writer lock, for all the writes that queued up meanwhile. Works run one after the other,
        in the order they were queued; each sees the ones before it. When one raises, the group is rolled
        back and each of its works is run again in a transaction of its own, so an error reaches only the
        caller whose work raised it.

        For short units of work that need no answer from outside the database before they commit.
        Cancelling the caller does not withdraw a work that has started: it may still be committed.
        """
        return await self._group.queue(work)

    def queue_write(self, work: Work[T]) -> asyncio.Future[T]:
        """As :meth:`write`, without waiting: the future is done once the work is committed (or failed)."""
        return self._group.queue(work)

    def queue_write_later(self, work: Work[T], *, within: float) -> asyncio.Future[T]:
        """As :meth:`queue_write`, for a write that can wait up to ``within`` seconds: it goes in the
        transaction of the next write that cannot (or in one of its own once that time is up)."""
        return self._group.queue_later(work, within=within)

    def queue_write_last(self, work: Work[T]) -> asyncio.Future[T]:
        """``work`` run once at the end of the next group of writes, after every other write in it (those
        queued after this call too); asked for again before that group starts, the same run."""
        return self._group.queue_last(work)

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[Transaction]:
        """For lookups that write nothing: on SQLite it neither waits for nor holds up the writers. Each
        statement sees the latest committed data; use :meth:`transaction` for a consistent snapshot."""
        async with self._session(self._read_sessions) as session:
            yield Transaction(session)

    async def ping(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        # Let queued writes (such as job progress) be committed before the connections go.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._group.flush(), 10)
        await self.engine.dispose()
        if self._read_engine is not self.engine:
            await self._read_engine.dispose()
