"""A script's combined output, kept within a budget while it streams."""

from __future__ import annotations

import asyncio
from collections import deque


class BoundedOutput(asyncio.Protocol):
    """The script's combined output: the first half of the budget and a rolling tail of the second half."""

    def __init__(self, limit: int, closed: asyncio.Future[None]) -> None:
        self.closed = closed
        self._head = bytearray()
        self._head_limit = limit // 2
        self._tail: deque[bytes] = deque()
        self._tail_size = 0
        self._tail_limit = limit - self._head_limit
        self._total = 0

    def data_received(self, data: bytes) -> None:
        self._total += len(data)
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if not data:
            return
        self._tail.append(data)
        self._tail_size += len(data)
        while self._tail_size - len(self._tail[0]) >= self._tail_limit:
            self._tail_size -= len(self._tail.popleft())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def result(self) -> bytes:
        tail = b"".join(self._tail)
        if self._total <= self._head_limit + self._tail_limit:
            return bytes(self._head) + tail
        tail = tail[max(len(tail) - self._tail_limit, 0) :]
        omitted = self._total - len(self._head) - len(tail)
        marker = f"\n[oscar-manager: {omitted} bytes of output omitted]\n".encode()
        return bytes(self._head) + marker + tail
