"""The supervisor's own log lines, filtered by the service's ``log_level`` like faas-supervisor's."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

_LEVELS = {"NOTSET": 0, "DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


class SupervisorLog:
    """Kept for the job record; with a ``sink`` each line is also written as it happens (a container's log,
    which must show progress even if the container is killed half-way)."""

    def __init__(self, level: str = "INFO", *, sink: Callable[[str], None] | None = None) -> None:
        self._threshold = _LEVELS.get(level.upper(), 20)
        self._lines: list[str] = []
        self._sink = sink

    def _add(self, level: str, message: str) -> None:
        if _LEVELS[level] >= self._threshold:
            stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
            line = f"{stamp} - supervisor - {level} - {message}"
            self._lines.append(line)
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

    def output(self, text: str) -> None:
        """The script's own output, kept whatever the level (it is what users look for in job logs). Not
        sent to the sink: whoever runs the script echoes it live."""
        if text:
            self._lines.append(text[:-1] if text.endswith("\n") else text)

    def text(self) -> str:
        return "".join(line + "\n" for line in self._lines)
