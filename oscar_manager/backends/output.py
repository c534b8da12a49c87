"""A script's combined output, kept within a budget while it streams, with the time each line arrived."""

from __future__ import annotations

import asyncio
import time
from array import array
from collections import deque

from oscar_manager.domain.logtimes import LineTimes, runs, stamp_ns


class BoundedOutput(asyncio.Protocol):
    """The script's combined output: the first half of the budget and a rolling tail of the second half.

    Each chunk read keeps the time it arrived, so every line of the result gets the time its first byte was
    read (as a container runtime stamps log lines). Times cost one number per chunk kept, within the budget.
    """

    def __init__(self, limit: int, closed: asyncio.Future[None]) -> None:
        self.closed = closed
        self._head = bytearray()
        self._head_limit = limit // 2
        # Where each chunk kept in the head starts, and when it arrived (nanoseconds).
        self._head_at = array("q")
        self._head_ns = array("q")
        self._tail: deque[bytes] = deque()
        self._tail_ns: deque[int] = deque()
        self._tail_size = 0
        self._tail_limit = limit - self._head_limit
        self._total = 0

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        self._total += len(data)
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head_at.append(len(self._head))
            self._head_ns.append(now)
            self._head += data[:room]
            data = data[room:]
        if not data:
            return
        self._tail.append(data)
        self._tail_ns.append(now)
        self._tail_size += len(data)
        while self._tail_size - len(self._tail[0]) >= self._tail_limit:
            self._tail_size -= len(self._tail.popleft())
            self._tail_ns.popleft()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def result(self) -> bytes:
        return self._render()[0]

    def times(self) -> LineTimes:
        """When each line of :meth:`result` arrived. The marker line of omitted output, and a line cut by it,
        take the time of the first byte kept after the cut."""
        text, marks = self._render()
        pairs = []
        for index, (start, ns) in enumerate(marks):
            end = marks[index + 1][0] if index + 1 < len(marks) else len(text)
            if end <= start:
                continue
            # Lines starting in [start, end): at 0, and after each newline before the last byte.
            starts = (1 if start == 0 else 0) + text.count(b"\n", max(start - 1, 0), end - 1)
            pairs.append((starts, stamp_ns(ns)))
        return runs(pairs)

    def _render(self) -> tuple[bytes, list[tuple[int, int]]]:
        """The output and where each of its chunks starts in it, with the chunk's time."""
        marks = list(zip(self._head_at, self._head_ns, strict=True))
        tail = b"".join(self._tail)
        cut = 0
        text = bytes(self._head) + tail
        if self._total > self._head_limit + self._tail_limit:
            cut = max(len(tail) - self._tail_limit, 0)
            omitted = self._total - len(self._head) - (len(tail) - cut)
            marker = f"\n[oscar-manager: {omitted} bytes of output omitted]\n".encode()
            text = bytes(self._head) + marker + tail[cut:]
        tail_start = len(text) - (len(tail) - cut)
        offset = 0
        for chunk, ns in zip(self._tail, self._tail_ns, strict=True):
            end = offset + len(chunk)
            if end > cut:
                # The first chunk kept also stands for the marker before it (and the line the cut split).
                marks.append((len(self._head) if offset <= cut else tail_start + offset - cut, ns))
            offset = end
        return text, marks
