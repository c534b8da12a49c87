"""When each line of a job's log was written, kept beside the log so that it can be shown with or without
times (``GET /system/logs/{service}/{job}?timestamps=true``), as the Kubernetes log API does.

Times are kept as runs: ``(lines, stamp)`` says that the next ``lines`` lines were written at ``stamp``.
Lines captured together share one stamp, so a log of many short lines costs a few runs, not a stamp each.
A stamp is an RFC 3339 time with nanoseconds in UTC, as the kubelet writes them
(``2026-12-05T16:00:00.123456789Z``); an empty stamp is a line whose time is not known.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime

LineTimes = tuple[tuple[int, str], ...]

UNKNOWN = ""
# RFC 3339 with a time zone: what the kubelet puts before each line (a plain date is not one).
_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)")


def stamp_ns(nanoseconds: int) -> str:
    """``time.time_ns()`` as the kubelet writes a log line's time (always nine digits, ``Z``)."""
    seconds, fraction = divmod(nanoseconds, 1_000_000_000)
    whole = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{fraction:09d}Z"


def stamp_of(moment: datetime) -> str:
    moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{moment.microsecond * 1000:09d}Z"


def line_count(text: str) -> int:
    """Lines as the log shows them: a last line without its newline is a line too."""
    if not text:
        return 0
    return text.count("\n") + (0 if text.endswith("\n") else 1)


def runs(pairs: Iterable[tuple[int, str]]) -> LineTimes:
    """Runs with neighbours of the same stamp merged and empty runs dropped."""
    merged: list[tuple[int, str]] = []
    for count, stamp in pairs:
        if count <= 0:
            continue
        if merged and merged[-1][1] == stamp:
            merged[-1] = (merged[-1][0] + count, stamp)
        else:
            merged.append((count, stamp))
    return tuple(merged)


def encode(times: LineTimes) -> str:
    """The stored form: one ``<lines> <stamp>`` a line."""
    return "".join(f"{count} {stamp}\n" for count, stamp in times)


def decode(text: str) -> LineTimes:
    pairs = []
    for entry in text.splitlines():
        count, _, stamp = entry.partition(" ")
        if count.isdigit():
            pairs.append((int(count), stamp))
    return runs(pairs)


def stamped(log: str, times: LineTimes | None, *, fallback: str) -> str:
    """The log with each line prefixed by its time and a space."""
    return "".join(f"{stamp} {line}" for stamp, line in timed_lines(log, times, fallback=fallback))


def timed_lines(log: str, times: LineTimes | None, *, fallback: str) -> list[tuple[str, str]]:
    """Each line of the log (with its end) and its stamp. Lines the runs do not cover, or whose time is
    unknown (a log kept before times were recorded, a line added when the job ended), get ``fallback``."""
    lines = _lines(log)
    stamps: list[str] = []
    for count, stamp in times or ():
        stamps.extend([stamp or fallback] * min(count, len(lines) - len(stamps)))
        if len(stamps) >= len(lines):
            break
    stamps.extend([fallback] * (len(lines) - len(stamps)))
    return list(zip(stamps, lines, strict=True))


def unstamp(text: str) -> tuple[str, LineTimes]:
    """A log read with ``timestamps=true`` from Kubernetes: the log as it was written, and its times. A line
    without a stamp (none is expected) is kept whole, its time unknown."""
    plain: list[str] = []
    stamps: list[tuple[int, str]] = []
    for line in _lines(text):
        stamp, space, rest = line.partition(" ")
        if space and _looks_like_stamp(stamp):
            plain.append(rest)
            stamps.append((1, stamp))
        else:
            plain.append(line)
            stamps.append((1, UNKNOWN))
    return "".join(plain), runs(stamps)


def _lines(text: str) -> list[str]:
    """Lines ended by ``\n`` only, with their ends (``str.splitlines`` also splits at ``\r``, form feeds...,
    which neither the kubelet nor :func:`line_count` do)."""
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _looks_like_stamp(word: str) -> bool:
    return _STAMP.fullmatch(word) is not None
