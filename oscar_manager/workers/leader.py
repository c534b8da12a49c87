"""The work one manager of several does (listeners, job watcher, reconciler...), run while this one leads.

Every replica tries to lead every ``interval`` seconds; the leader checks that it still does as often and
stops its tasks the moment it does not, and hands the leadership over when it stops. Who leads is the
database's business (``registry.leadership``); this loop only follows it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from oscar_manager.workers.base import LoopWorker, RetryingTask, SupervisedTask, _OwnedTask

log = logging.getLogger(__name__)

LeaderTask = SupervisedTask | LoopWorker | RetryingTask


class Election(Protocol):
    leading: bool

    async def try_lead(self) -> bool: ...

    async def still_leading(self) -> bool: ...

    async def resign(self) -> None: ...


class LeaderWork(_OwnedTask):
    """``on_lead`` runs each time this process becomes the leader, before its tasks start."""

    def __init__(
        self,
        election: Election,
        tasks: Sequence[LeaderTask],
        *,
        interval: float,
        on_lead: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__("leadership")
        self._election = election
        self.tasks = list(tasks)
        self._interval = interval
        self._on_lead = on_lead
        self.changed = asyncio.Event()  # set at each change of leadership (for whoever waits for one)

    @property
    def leading(self) -> bool:
        return self._election.leading

    async def try_once(self) -> bool:
        """One round: lead if free, or check that we still do; start or stop the tasks to match."""
        was = self.leading
        try:
            now = await (self._election.still_leading() if was else self._election.try_lead())
        except Exception as exc:
            self._failed(exc)
            log.warning("could not tell whether this manager may lead: %s", getattr(exc, "message", exc))
            now = False
        else:
            self._recovered()
        if now and not was:
            log.info("this manager now leads: it runs the listeners, the job watcher and the reconciler")
            if self._on_lead is not None:
                try:
                    await self._on_lead()
                except Exception as exc:
                    # Not fit to lead yet: let another replica (or this one, next round) try.
                    self._failed(exc)
                    log.exception("taking up the leadership failed; handing it back")
                    await self._election.resign()
                    return False
            for task in self.tasks:
                task.start()
            self.changed.set()
        elif was and not now:
            log.warning("this manager no longer leads: its listeners, job watcher and reconciler stop")
            await self._stop_tasks()
            self.changed.set()
        return now

    async def _main(self) -> None:
        while True:
            await self.try_once()
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        """Stop trying, stop the tasks, and let another replica lead."""
        await super().stop()
        await self._stop_tasks()
        await self._election.resign()

    async def _stop_tasks(self) -> None:
        for task in reversed(self.tasks):
            await task.stop()
