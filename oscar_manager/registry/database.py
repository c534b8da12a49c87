"""Engine, sessions and the transaction a request or worker iteration owns."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from oscar_manager.domain.service import Service
from oscar_manager.registry import sqlite_inline
from oscar_manager.registry.bucket_repository import BucketRepository
from oscar_manager.registry.event_repository import EventRepository
from oscar_manager.registry.identity_repository import IdentityRepository
from oscar_manager.registry.job_repository import JobRepository
from oscar_manager.registry.mark_repository import MarkRepository
from oscar_manager.registry.service_repository import ServiceRepository

log = logging.getLogger(__name__)

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 - an item
R = TypeVar("R")  # its result
Work = Callable[["Transaction"], Awaitable[T]]

# How long a cached service is trusted without a change committed by this process: a change made by
# another replica on the same database shows within this.
SERVICE_CACHE_SECONDS = 5.0

# Writes committed together at most: bounds how long one commit keeps the others waiting.
MAX_GROUP = 256


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
        self._queued: deque[tuple[Work[Any], asyncio.Future[Any]]] = deque()
        self._committer: asyncio.Task[None] | None = None
        # Services by name for :meth:`service`: (generation, service, loop time fetched). The generation
        # goes up once a transaction that changed services has committed; older entries are not used.
        self._services_generation = 0
        self._services: dict[str, tuple[int, Service | None, float]] = {}

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
        (group commit): one commit, and on SQLite one turn of the writer lock, for all the writes that
        queued up meanwhile. Works run one after the other, in the order they were queued; each sees the
        ones before it. When one raises, the group is rolled back and each of its works is run again in a
        transaction of its own, so an error reaches only the caller whose work raised it.

        For short units of work that need no answer from outside the database before they commit.
        Cancelling the caller does not withdraw a work that has started: it may still be committed.
        """
        return await self.queue_write(work)

    def queue_write(self, work: Work[T]) -> asyncio.Future[T]:
        """As :meth:`write`, without waiting: the future is done once the work is committed (or failed)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queued.append((work, future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_queued(), name="database-group-commit")
        return future

    async def _commit_queued(self) -> None:
        group: list[tuple[Work[Any], asyncio.Future[Any]]] = []
        try:
            while self._queued:
                group = []
                while self._queued and len(group) < MAX_GROUP:
                    work, future = self._queued.popleft()
                    if not future.cancelled():  # withdrawn before it started
                        group.append((work, future))
                if not group:
                    continue
                try:
                    async with self.transaction() as tx:
                        results = [await work(tx) for work, _future in group]
                except Exception as exc:
                    if len(group) == 1:
                        _settle(group[0][1], exc=exc)
                    else:
                        await self._commit_one_by_one(group)
                else:
                    for (_work, future), result in zip(group, results, strict=True):
                        _settle(future, result=result)
                group = []
        except BaseException:
            # Cancelled (shutting down): nothing queued waits forever.
            for _work, future in [*group, *self._queued]:
                future.cancel()
            self._queued.clear()
            raise

    async def _commit_one_by_one(self, group: list[tuple[Work[Any], asyncio.Future[Any]]]) -> None:
        for work, future in group:
            try:
                async with self.transaction() as tx:
                    result = await work(tx)
            except Exception as exc:
                _settle(future, exc=exc)
            else:
                _settle(future, result=result)

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
        if self._committer is not None and not self._committer.done():
            # Let queued writes (such as job progress) be committed before the connections go.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._committer), 10)
        await self.engine.dispose()
        if self._read_engine is not self.engine:
            await self._read_engine.dispose()


class WriteBatch(Generic[I, R]):
    """Items added while a write of earlier ones is still queued join that write: one statement for all
    of them (``write_many(tx, items)`` returns a result per item), committed by :meth:`Database.write`.
    Each caller gets the results of its own items once they are committed. Should the write of a batch
    fail, each of its callers writes its own items alone, so an error reaches only the caller at fault.
    """

    def __init__(
        self, database: Database, write_many: Callable[[Transaction, list[I]], Awaitable[list[R]]]
    ) -> None:
        self._database = database
        self._write_many = write_many
        self._open: list[I] | None = None  # the batch still taking items
        self._committed: asyncio.Future[list[R]] | None = None  # its results, once committed

    async def add(self, items: list[I]) -> list[R]:
        if self._open is None or self._committed is None:
            batch: list[I] = []
            self._open = batch
            self._committed = self._database.queue_write(lambda tx: self._write(tx, batch))
        batch, committed = self._open, self._committed
        first = len(batch)
        batch.extend(items)
        try:
            # Shielded: a caller that goes away must not cancel the write of the others' items.
            results = await asyncio.shield(committed)
        except Exception:
            return await self._database.write(lambda tx: self._write_many(tx, items))
        return results[first : first + len(items)]

    async def _write(self, tx: Transaction, batch: list[I]) -> list[R]:
        if self._open is batch:
            self._open = None  # items from now on go in the next batch
        return await self._write_many(tx, batch)


def _settle(future: asyncio.Future[Any], *, result: Any = None, exc: BaseException | None = None) -> None:
    if future.done():  # the caller gave up (cancelled) meanwhile; the work is committed all the same
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
