"""A background loop with an owner, a name and a way to stop (kopf's guarded tasks, Prefect's LoopService).

``run_once`` does one round of work and returns how much it did; the loop sleeps until woken or until
its interval passes when there was nothing to do, and backs off after errors instead of dying.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from oscar_manager.waiting import wait_or_timeout

log = logging.getLogger(__name__)


class _OwnedTask:
    """A named task started once and cancelled (and awaited) on stop."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._task: asyncio.Task[None] | None = None
        # What readiness and /system/info report: the last failure, cleared once the work goes well again.
        self.last_error = ""
        self.failures = 0  # in a row

    @property
    def state(self) -> str:
        if self._task is None:
            return "stopped"
        return "failing" if self.failures else "running"

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"

    def _recovered(self) -> None:
        self.failures = 0
        self.last_error = ""

    async def _main(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._main(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class LoopWorker(_OwnedTask):
    def __init__(self, name: str, run_once: Callable[[], Awaitable[int]], *, interval: float) -> None:
        super().__init__(name)
        self._run_once = run_once
        self._interval = interval
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def _main(self) -> None:
        while True:
            self._wake.clear()
            try:
                done = await self._run_once()
                self._recovered()
            except Exception as exc:
                self._failed(exc)
                delay = min(self._interval * 2**self.failures, 60.0)
                log.exception("%s failed (%d in a row); retrying in %.1f s", self.name, self.failures, delay)
                await asyncio.sleep(delay)
                continue
            if done:
                continue  # there may be more: go again at once
            await wait_or_timeout(self._wake, self._interval)


class SupervisedTask(_OwnedTask):
    """A long-running coroutine (a listener) restarted with backoff when it ends or fails.

    ``run`` calls the ``up`` it is given once it is working (watches or subscriptions in place): that
    clears the failure count, so the backoff starts small again after the next failure, and readiness
    reports the source as running."""

    def __init__(
        self, name: str, run: Callable[[Callable[[], None]], Awaitable[None]], *, restart_delay: float = 1.0
    ) -> None:
        super().__init__(name)
        self._run = run
        self._restart_delay = restart_delay

    async def _main(self) -> None:
        while True:
            try:
                await self._run(self._recovered)
                self._failed(RuntimeError("it ended"))
                log.warning("%s ended; restarting", self.name)
            except Exception as exc:
                self._failed(exc)
                log.exception("%s failed (%d in a row); restarting", self.name, self.failures)
            await asyncio.sleep(min(self._restart_delay * 2 ** (self.failures - 1), 60.0))


class RetryingTask(_OwnedTask):
    """A piece of start-up work that depends on something outside (MinIO reaching us back): tried until it
    succeeds, with backoff, without holding up the start."""

    def __init__(
        self, name: str, attempt: Callable[[], Awaitable[None]], *, first_delay: float = 1.0
    ) -> None:
        super().__init__(name)
        self._attempt = attempt
        self._first_delay = first_delay
        self.done = asyncio.Event()

    async def _main(self) -> None:
        delay = self._first_delay
        while True:
            try:
                await self._attempt()
            except Exception as exc:
                self._failed(exc)
                log.warning("%s: %s; retrying in %.1f s", self.name, getattr(exc, "message", exc), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
                continue
            self._recovered()
            self.done.set()
            return
