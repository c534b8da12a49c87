"""Blocking calls off the event loop, for the storage adapters (local files, S3 file I/O)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

_T = TypeVar("_T")


async def run_blocking(fn: Callable[[], _T], *, discard: Callable[[_T], object] | None = None) -> _T:
    """Run ``fn`` in a worker thread; if cancelled, still wait for it before raising ``CancelledError``.

    A blocking call cannot be interrupted, so returning early would let cleanup race the call that is
    still running (unlink a file the thread is about to create, close a descriptor it reads). If the
    call succeeds after all, ``discard`` releases what it returned.
    """
    future = asyncio.ensure_future(asyncio.to_thread(fn))
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait({future})
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not future.cancelled() and future.exception() is None and discard is not None:
            discard(future.result())
        raise asyncio.CancelledError
    return future.result()
