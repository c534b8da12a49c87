"""The supervisor's own log lines, filtered by the service's ``log_level`` like faas-supervisor's."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from oscar_manager.domain.logtimes import LineTimes, line_count, runs, stamp_ns

_LEVELS = {"NOTSET": 0, "DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


class SupervisorLog:
    """Kept for the job record, with the time of each line (``?timestamps=true``); with a ``sink`` each line
    is also written as it happens (a container's log, which must show progress even if the container is
    killed half-way)."""

    def __init__(self, level: str = "INFO", *, sink: Callable[[str], None] | None = None) -> None:
        self._threshold = _LEVELS.get(level.upper(), 20)
        self._lines: list[str] = []
        self._times: list[tuple[int, str]] = []
        self._sink = sink

    def _add(self, level: str, message: str) -> None:
        if _LEVELS[level] >= self._threshold:
            now = time.time_ns()
            stamp = datetime.fromtimestamp(now / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
            line = f"{stamp} - supervisor - {level} - {message}"
            self._lines.append(line)
            self._times.append((line_count(line + "\n"), stamp_ns(now)))
            if self._sink is not None:
                self._sink(line + "\n")

    def debug(self, message: str) -> None:
        self._add("DEBUG", message)

    def info(self, message: str) -> None:
        self._add("INFO", message)

    def warning(self, message: str) -> None:
        self._add("WARNING", message)

    def error(self, message: str) -> None:
        self._add("ERROR", message)

    def output(self, text: str, times: LineTimes = ()) -> None:
        """The script's own output, kept whatever the level (it is what users look for in job logs), with
        the times its lines were read (lines without one get the present time). Not sent to the sink:
        whoever runs the script echoes it live."""
        if text:
            self._lines.append(text[:-1] if text.endswith("\n") else text)
            left = line_count(text)
            for count, stamp in times:
                self._times.append((min(count, left), stamp))
                left -= min(count, left)
            self._times.append((left, stamp_ns(time.time_ns())))

    def text(self) -> str:
        return "".join(line + "\n" for line in self._lines)

    def times(self) -> LineTimes:
        """When each line of :meth:`text` was written."""
        return runs(self._times)
