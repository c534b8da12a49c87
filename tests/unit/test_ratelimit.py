"""The token bucket behind OSCAR_KUBERNETES_RATE, on a virtual clock: counts, not timings."""

from __future__ import annotations

import pytest

from oscar_manager.operations.ratelimit import RateLimiter

pytestmark = pytest.mark.asyncio


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds


async def test_no_more_than_the_rate_after_the_burst() -> None:
    clock = VirtualClock()
    limiter = RateLimiter(10, burst=5, clock=clock, sleep=clock.sleep)
    granted: list[float] = []
    for _ in range(105):
        await limiter.acquire()
        granted.append(clock.now)
    # The first 5 at once, then one every 0.1 s: the i-th no earlier than (i - burst + 1) / rate.
    assert granted[:5] == [0.0] * 5
    for index, at in enumerate(granted):
        assert at >= (index - 5 + 1) / 10 - 1e-9
    # ... and no later either: the bucket does not lose tokens.
    assert granted[-1] == pytest.approx(10.0)
    # In any window of one second, at most rate + burst.
    for start in granted:
        assert sum(1 for at in granted if start <= at < start + 1) <= 15


async def test_a_quiet_spell_refills_only_up_to_the_burst() -> None:
    clock = VirtualClock()
    limiter = RateLimiter(2, burst=3, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        await limiter.acquire()
    clock.now += 60.0
    before = clock.now
    for _ in range(5):
        await limiter.acquire()
    assert clock.now - before == pytest.approx(1.0)  # 3 at once, then 2 more at 0.5 s each


async def test_zero_means_no_limit() -> None:
    clock = VirtualClock()
    limiter = RateLimiter(0, clock=clock, sleep=clock.sleep)
    for _ in range(10_000):
        await limiter.acquire()
    assert clock.sleeps == 0
    assert clock.now == 0.0
