"""Waiting helpers shared by every background loop (no other dependency, importable from any layer)."""

from __future__ import annotations

import asyncio
import contextlib


async def wait_or_timeout(event: asyncio.Event, seconds: float) -> None:
    """Wait until ``event`` is set or ``seconds`` pass. Not ``asyncio.wait_for``: on Python 3.11 a cancel
    that lands as its timeout fires can be swallowed, and a stopping worker then never ends."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
