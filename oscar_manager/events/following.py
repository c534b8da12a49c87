"""What the sources that follow the services' inputs share (the MinIO listener, the S3 queues consumer, the
Kafka source): they look at the inputs again after every change to services (``wake``) and every
``refresh_interval``, and stop what they started (streams, consumers) when their run ends."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable

from oscar_manager.waiting import wait_or_timeout


class FollowsInputs(ABC):
    def __init__(self, refresh_interval: float) -> None:
        self._refresh_interval = refresh_interval
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Services changed: look at the inputs again now."""
        self._wake.set()

    async def run(self, up: Callable[[], None] = lambda: None) -> None:
        """Refresh until cancelled; ``up`` is called after each refresh (the supervisor's sign of life)."""
        try:
            while True:
                self._wake.clear()
                await self.refresh()
                up()
                await wait_or_timeout(self._wake, self._refresh_interval)
        finally:
            await self.stop_all()

    @abstractmethod
    async def refresh(self) -> None:
        """Follow exactly what the inputs name now."""

    @abstractmethod
    async def stop_all(self) -> None:
        """Stop everything followed."""
