"""CPU-bound work on request bodies, kept off the event loop.

Parsing a 10 MB YAML definition takes seconds and a 50 MB base64 body tens of milliseconds, all of it
holding the loop that every other request waits on. Bodies from ``OFF_LOOP_BYTES`` up are parsed on a
small pool of threads instead: the loop keeps answering (the interpreter switches threads every few
milliseconds), and at most ``PARSE_THREADS`` documents are parsed at once, the others waiting their turn.
Small bodies, nearly all of them, are parsed in place: a thread hop would cost them more than it saves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

OFF_LOOP_BYTES = 16 * 1024
PARSE_THREADS = 2

_T = TypeVar("_T")
_POOL = ThreadPoolExecutor(max_workers=PARSE_THREADS, thread_name_prefix="oscar-parse")


async def off_loop(work: Callable[[], _T], *, size: int) -> _T:
    """``work()``'s result; run on the parsing threads when it handles ``size`` bytes or more."""
    if size < OFF_LOOP_BYTES:
        return work()
    return await asyncio.get_running_loop().run_in_executor(_POOL, work)
