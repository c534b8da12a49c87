"""SQLite under SQLAlchemy's asyncio engine, its statements run on the event loop's own thread.

aiosqlite runs each statement in a thread of its own and hands the result back through the event loop:
every statement then waits for a turn of the loop, and on a busy loop (a hundred requests and Kubernetes
calls in flight) that turn takes milliseconds. A transaction of a few statements held SQLite's single
writer for tens of milliseconds that way, which capped the whole manager at about 100 jobs/s.

Here the same aiosqlite-shaped connection (what SQLAlchemy's aiosqlite dialect drives, passed as its
``async_creator``) calls :mod:`sqlite3` directly: a statement on this small registry takes microseconds,
far less than one trip through the loop. What may block the loop: WAL writes (to the page cache;
``synchronous=NORMAL`` syncs only at checkpoints, every few MB) and waiting for another *process* that
holds the write lock (``busy_timeout``); writers of this process queue on ``Database``'s lock instead.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any


class _AtOnce:
    """In place of aiosqlite's request queue, which SQLAlchemy's adapter uses to set the isolation
    level: runs the request at once."""

    def put_nowait(self, item: tuple[asyncio.Future[Any], Callable[[], Any]]) -> None:
        future, function = item
        try:
            future.set_result(function())
        except Exception as exc:  # handed to the awaiting adapter, as aiosqlite does
            future.set_exception(exc)


class InlineCursor:
    """An aiosqlite cursor's interface over a :class:`sqlite3.Cursor`."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._cursor.close()

    async def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ()) -> InlineCursor:
        self._cursor.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> InlineCursor:
        self._cursor.executemany(sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(self._cursor.arraysize if size is None else size)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value


class InlineConnection:
    """An aiosqlite connection's interface (including the private names SQLAlchemy's adapter reads:
    ``_conn``, ``_connection``, ``_tx``) over a :class:`sqlite3.Connection`."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._conn = connection
        self._connection: sqlite3.Connection | None = connection  # None once closed
        self._tx = _AtOnce()

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    def cursor(self) -> InlineCursor:
        if self._connection is None:
            raise ValueError("no active connection")
        return InlineCursor(self._connection.cursor())

    async def commit(self) -> None:
        self._conn.commit()

    async def rollback(self) -> None:
        self._conn.rollback()

    async def create_function(
        self, name: str, num_params: int, func: Any, deterministic: bool = False
    ) -> None:
        self._conn.create_function(name, num_params, func, deterministic=deterministic)

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()


def connector(path: str) -> Callable[[], Any]:
    """The ``async_creator`` for a database file."""

    async def connect() -> InlineConnection:
        # The pool may close a connection from another thread (garbage collection).
        return InlineConnection(sqlite3.connect(path, check_same_thread=False))

    return connect
