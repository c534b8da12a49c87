"""A background loop with an owner, a name and a way to stop (kopf's guarded tasks, Prefect's LoopService).

``run_once`` does one round of work and returns how much it did; the loop sleeps until woken or until
its interval passes when there was nothing to do, and backs off after errors instead of dying.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class LoopWorker:
    def __init__(self, name: str, run_once: Callable[[], Awaitable[int]], *, interval: float) -> None:
        self.name = name
        self._run_once = run_once
        self._interval = interval
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        failures = 0
        while True:
            self._wake.clear()
            try:
                done = await self._run_once()
                failures = 0
            except Exception:
                failures += 1
                delay = min(self._interval * 2**failures, 60.0)
                log.exception("%s failed (%d in a row); retrying in %.1f s", self.name, failures, delay)
                await asyncio.sleep(delay)
                continue
            if done:
                continue  # there may be more: go again at once
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)


class SupervisedTask:
    """A long-running coroutine (a listener) restarted with backoff when it ends or fails."""

    def __init__(self, name: str, run: Callable[[], Awaitable[None]], *, restart_delay: float = 1.0) -> None:
        self.name = name
        self._run = run
        self._restart_delay = restart_delay
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _supervise(self) -> None:
        delay = self._restart_delay
        while True:
            try:
                await self._run()
                log.warning("%s ended; restarting", self.name)
            except Exception:
                log.exception("%s failed; restarting in %.1f s", self.name, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)
