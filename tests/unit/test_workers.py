"""Background loops stop when told to, whatever they were waiting for."""

from __future__ import annotations

import asyncio

from oscar_manager.waiting import wait_or_timeout
from oscar_manager.workers.base import LoopWorker


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
