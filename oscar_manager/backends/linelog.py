"""The last lines of a long-lived process's output, each with the time it arrived, within a bound."""

from __future__ import annotations

import asyncio
import time
from collections import deque

from oscar_manager.domain.logtimes import stamp_ns


class LineLog(asyncio.Protocol):
    """Reads a pipe: keeps the last ``max_lines`` lines (each cut at ``max_line_bytes``) as (RFC 3339 time,
    text), the time being when the line's first byte was read. A line still open when the pipe closes is
    kept too. :meth:`note` adds a line of the manager's own (an instance started, exited)."""

    def __init__(self, *, max_lines: int = 1000, max_line_bytes: int = 4096) -> None:
        self.lines: deque[tuple[str, str]] = deque(maxlen=max_lines)
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._max_line = max_line_bytes
        self._partial = bytearray()
        self._partial_ns = 0
        self._cut = False  # the open line went over the bound: the rest of it is dropped

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            piece = data[start:] if end < 0 else data[start:end]
            if not self._partial and not self._cut:
                self._partial_ns = now
            room = self._max_line - len(self._partial)
            if len(piece) > room:
                self._cut = True
            self._partial += piece[: max(room, 0)]
            if end < 0:
                return
            self._flush()
            start = end + 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self._partial or self._cut:
            self._flush()
        if not self.closed.done():
            self.closed.set_result(None)

    def note(self, text: str) -> None:
        self.lines.append((stamp_ns(time.time_ns()), text))

    # What the manager says of the process (its image pulled, say), as a ``PullLog``.
    def info(self, message: str) -> None:
        self.note(f"oscar-manager: {message}")

    def warning(self, message: str) -> None:
        self.note(f"oscar-manager: warning: {message}")

    def _flush(self) -> None:
        text = self._partial.decode("utf-8", errors="replace").rstrip("\r")
        if self._cut:
            text += " [line cut]"
        self.lines.append((stamp_ns(self._partial_ns), text))
        self._partial.clear()
        self._cut = False
