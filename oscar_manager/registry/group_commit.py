"""Group commit: short writes queued while none is being committed share one transaction.

A transaction costs far more than the statements of a job in it (on SQLite about 0.45 ms of the event
loop to begin and commit through SQLAlchemy, against 0.2 ms for a prebuilt statement), so events arriving
one at a time, each with its intake, claim, completion and "job started" writes, spent most of their CPU
on transactions. Three kinds of write share them:
- urgent writes (:meth:`GroupCommit.queue`): committed at once, with whatever else is queued;
- writes that can wait (:meth:`GroupCommit.queue_later`): they ride in the next urgent write's
  transaction, or are committed on their own after at most the delay they allow;
- last writes (:meth:`GroupCommit.queue_last`): run once at the end of the next group, after every other
  write in it, however many ask before the group starts (the dispatcher's claim after the intake's
  events: both in one transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from oscar_manager.registry.database import Database, Transaction

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 - an item
R = TypeVar("R")  # its result
Work = Callable[["Transaction"], Awaitable[T]]

# Writes committed together at most: bounds how long one commit keeps the others waiting.
MAX_GROUP = 256


@dataclass(slots=True)
class _Queued:
    work: Work[Any]
    future: asyncio.Future[Any]
    deadline: float | None  # loop time it is committed by, for a work that can wait; None: at once


class GroupCommit:
    """Commits queued works in groups, each group in one transaction from ``transaction()``."""

    def __init__(
        self, transaction: Callable[[], contextlib.AbstractAsyncContextManager[Transaction]]
    ) -> None:
        self._transaction = transaction
        self._queued: deque[_Queued] = deque()
        self._urgent = 0  # urgent works queued: while there are none, works that can wait do
        # Works to run last in the next group, by work (asked for twice: run once).
        self._last: dict[Work[Any], asyncio.Future[Any]] = {}
        self._committer: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None  # commits the works that can wait, at the latest

    def queue(self, work: Work[T]) -> asyncio.Future[T]:
        """``work(tx)``'s result once committed, at once and with the other works queued meanwhile."""
        future = self._append(work, deadline=None)
        self._start()
        return future

    def queue_later(self, work: Work[T], *, within: float) -> asyncio.Future[T]:
        """As :meth:`queue`, but the work waits up to ``within`` seconds for an urgent one to ride with."""
        deadline = asyncio.get_running_loop().time() + within
        future = self._append(work, deadline=deadline)
        if self._committer is None or self._committer.done():  # else it sets the timer as it ends
            self._commit_by(deadline)
        return future

    def queue_last(self, work: Work[T]) -> asyncio.Future[T]:
        """``work`` run once after all the other works of the next group (those queued after this call
        too), in their transaction; the same work asked for again before that group starts is the same
        run (the same future). When it raises, the other works are committed without it."""
        future = self._last.get(work)
        if future is None or future.done():
            future = asyncio.get_running_loop().create_future()
            self._last[work] = future
        self._start()
        return future

    async def flush(self) -> None:
        """Commit what is queued (works that can wait included) and wait for it."""
        if self._queued or self._last:
            self._start()
        if self._committer is not None and not self._committer.done():
            await asyncio.shield(self._committer)

    def _append(self, work: Work[T], *, deadline: float | None) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queued.append(_Queued(work, future, deadline))
        self._urgent += deadline is None
        return future

    def _commit_by(self, deadline: float) -> None:
        if self._timer is None or self._timer.when() > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_at(deadline, self._start)

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_queued(), name="database-group-commit")

    def _take_group(self) -> list[_Queued]:
        group: list[_Queued] = []
        while self._queued and len(group) < MAX_GROUP:
            item = self._queued.popleft()
            self._urgent -= item.deadline is None
            if not item.future.cancelled():  # withdrawn before it started
                group.append(item)
        if not self._queued:  # the last works follow everything queued before them
            group += [_Queued(work, future, None) for work, future in self._last.items() if not future.done()]
            self._last = {}
        return group

    async def _commit_queued(self) -> None:
        group: list[_Queued] = []
        try:
            first = True
            # The first group takes what is queued; later ones are for the urgent works queued during a
            # commit (each group takes the works that can wait along).
            while (first and self._queued) or self._urgent or self._last:
                group = self._take_group()
                first = False
                if group:
                    await self._commit(group)
                group = []
        except BaseException:
            # Cancelled (shutting down): nothing queued waits forever.
            for item in [*group, *self._queued]:
                item.future.cancel()
            for future in self._last.values():
                future.cancel()
            self._queued.clear()
            self._urgent = 0
            self._last = {}
            raise
        if self._queued:  # works that can wait, queued during the last commit
            self._commit_by(min(item.deadline for item in self._queued if item.deadline is not None))

    async def _commit(self, group: list[_Queued]) -> None:
        try:
            async with self._transaction() as tx:
                results = [await item.work(tx) for item in group]
        except Exception as exc:
            if len(group) == 1:
                _settle(group[0].future, exc=exc)
            else:
                await self._commit_one_by_one(group)
        else:
            for item, result in zip(group, results, strict=True):
                _settle(item.future, result=result)

    async def _commit_one_by_one(self, group: list[_Queued]) -> None:
        for item in group:
            try:
                async with self._transaction() as tx:
                    result = await item.work(tx)
            except Exception as exc:
                _settle(item.future, exc=exc)
            else:
                _settle(item.future, result=result)


class WriteBatch(Generic[I, R]):
    """Items added while a write of earlier ones is still queued join that write: one statement for all
    of them (``write_many(tx, items)`` returns a result per item), committed by :meth:`Database.write`.
    Each caller gets the results of its own items once they are committed. Should the write of a batch
    fail, each of its callers writes its own items alone, so an error reaches only the caller at fault.
    """

    def __init__(
        self,
        database: Database,
        write_many: Callable[[Transaction, list[I]], Awaitable[list[R]]],
        *,
        after_queued: Callable[[], None] = lambda: None,
    ) -> None:
        self._database = database
        self._write_many = write_many
        # Called once added items are queued for writing: for a write that is to follow theirs in the
        # same transaction (``Database.queue_write_last``).
        self._after_queued = after_queued
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
        self._after_queued()
        try:
            # Shielded: a caller that goes away must not cancel the write of the others' items.
            results = await asyncio.shield(committed)
        except Exception:
            alone = self._database.queue_write(lambda tx: self._write_many(tx, items))
            self._after_queued()
            return await alone
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
