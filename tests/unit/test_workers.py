"""Background loops stop when told to, whatever they were waiting for."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from oscar_manager.waiting import wait_or_timeout
from oscar_manager.workers.base import LoopWorker, SupervisedTask


async def test_a_loop_woken_as_it_is_stopped_still_stops() -> None:
    # On Python 3.11, asyncio.wait_for swallows a cancel that arrives together with the wake-up: the
    # manager's shutdown then waited forever for its dispatcher.
    rounds = 0

    async def run_once() -> int:
        nonlocal rounds
        rounds += 1
        return 0

    for _ in range(20):
        worker = LoopWorker("test", run_once, interval=30)
        worker.start()
        await asyncio.sleep(0.01)
        worker.wake()
        # Shielded: stop() itself suppresses the cancellation a timeout around it would use.
        stopping = asyncio.ensure_future(worker.stop())
        await asyncio.wait({stopping}, timeout=2)
        assert stopping.done(), "the worker did not stop"
    assert rounds >= 20


async def test_wait_or_timeout_returns_on_the_event_or_after_the_time() -> None:
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await wait_or_timeout(event, 0.05)
    assert loop.time() - started >= 0.05
    event.set()
    started = loop.time()
    await wait_or_timeout(event, 30)
    assert loop.time() - started < 1


async def test_a_supervised_source_says_it_is_failing_and_why_until_it_is_up_again() -> None:
    """What readiness and /system/info show: the failure and its reason while the source restarts, and
    "running" once the restarted source reports its watches are in place."""
    attempts = 0
    restarted = asyncio.Event()
    go_up = asyncio.Event()
    up_again = asyncio.Event()

    async def run(up: Callable[[], None]) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            up()
            raise OSError(28, "No space left on device")
        restarted.set()
        await go_up.wait()
        up()
        up_again.set()
        await asyncio.Event().wait()

    task = SupervisedTask("watcher", run, restart_delay=0.01)
    assert task.state == "stopped"
    task.start()
    try:
        await asyncio.wait_for(restarted.wait(), 5)
        assert task.state == "failing"
        assert "No space left on device" in task.last_error
        go_up.set()
        await asyncio.wait_for(up_again.wait(), 5)
        assert task.state == "running"
        assert task.last_error == ""
    finally:
        await task.stop()
    assert task.state == "stopped"


async def test_a_failing_loop_keeps_its_last_error_until_a_round_succeeds() -> None:
    rounds = 0
    failed_once = asyncio.Event()
    succeeded = asyncio.Event()

    async def run_once() -> int:
        nonlocal rounds
        rounds += 1
        if rounds == 1:
            failed_once.set()
            raise RuntimeError("database or disk is full")
        succeeded.set()
        return 0

    worker = LoopWorker("reconciler", run_once, interval=0.01)
    worker.start()
    try:
        await asyncio.wait_for(failed_once.wait(), 5)
        await asyncio.sleep(0)
        assert worker.state == "failing"
        assert "database or disk is full" in worker.last_error
        await asyncio.wait_for(succeeded.wait(), 5)
        await asyncio.sleep(0)
        assert worker.state == "running"
        assert worker.last_error == ""
    finally:
        await worker.stop()
