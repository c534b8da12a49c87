"""A token bucket: at most ``rate`` acquisitions a second on average, in bursts of at most ``burst``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class RateLimiter:
    """``rate`` 0 (or less) means no limit. Waiters are served in the order they came (a lock), each
    sleeping only as long as the next token takes. ``clock`` and ``sleep`` are for tests."""

    def __init__(
        self,
        rate: float,
        *,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._rate = rate
        # By default a second's worth: a rate of 50/s may send 50 at once after a quiet second.
        self._burst = float(burst if burst is not None else max(1, round(rate)))
        self._clock = clock
        self._sleep = sleep
        self._tokens = self._burst
        self._last = clock()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if self._rate <= 0:
            return
        async with self._lock:
            while True:
                now = self._clock()
                self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
                self._last = now
                if self._tokens >= 1 - 1e-9:  # not a rounding error short of a whole token
                    self._tokens = max(self._tokens - 1, 0.0)
                    return
                await self._sleep((1 - self._tokens) / self._rate)
