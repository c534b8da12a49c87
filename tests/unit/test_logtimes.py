"""Line times of job logs: stored as runs, shown as Kubernetes shows ``?timestamps=true``, captured per
chunk of a script's output (head, omitted-output marker and tail alike)."""

from __future__ import annotations

import asyncio
import re

import pytest

from oscar_manager.backends.output import BoundedOutput
from oscar_manager.domain import logtimes
from oscar_manager.supervisor.log import SupervisorLog

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
A = "2026-12-05T16:00:00.000000001Z"
B = "2026-12-05T16:00:01.500000000Z"


def test_runs_survive_the_stored_form() -> None:
    times = logtimes.runs([(2, A), (1, A), (0, B), (3, B)])
    assert times == ((3, A), (3, B))
    assert logtimes.decode(logtimes.encode(times)) == times


def test_stamped_prefixes_every_line_and_falls_back_where_times_are_missing() -> None:
    log = "one\ntwo\r still two\nthree"  # a carriage return is not a line end; a last line without \n is
    assert logtimes.stamped(log, ((1, A), (1, "")), fallback=B) == (
        f"{A} one\n{B} two\r still two\n{B} three"
    )
    # A log kept before times were recorded: every line gets the fallback, nothing else changes.
    assert logtimes.stamped("a\nb\n", None, fallback=B) == f"{B} a\n{B} b\n"


def test_unstamp_gives_back_the_log_as_written() -> None:
    text = f"{A} first line\n{B} second  with  spaces\n{B} \nnot stamped\n2026-12-05 16:00:00,1 - a date\n"
    plain, times = logtimes.unstamp(text)
    assert plain == "first line\nsecond  with  spaces\n\nnot stamped\n2026-12-05 16:00:00,1 - a date\n"
    assert times == ((1, A), (2, B), (2, ""))
    assert logtimes.stamped(plain, times, fallback="X") == text.replace(
        "\nnot stamped", "\nX not stamped"
    ).replace("\n2026-12-05 16", "\nX 2026-12-05 16")


def test_stamps_are_written_as_the_kubelet_writes_them() -> None:
    assert logtimes.stamp_ns(1_796_486_400_000_000_001) == "2026-12-05T16:00:00.000000001Z"
    assert STAMP.match(logtimes.stamp_ns(1_796_486_400_120_000_000))


@pytest.mark.asyncio
async def test_output_lines_get_the_time_their_chunk_arrived_even_past_the_budget() -> None:
    output = BoundedOutput(40, asyncio.get_running_loop().create_future())
    output.data_received(b"one\ntwo\nthr")
    await asyncio.sleep(0.01)
    output.data_received(b"ee\nfour\n")
    first = output.times()
    assert [count for count, _ in first] == [3, 1]  # "three" started in the first chunk
    assert first[0][1] < first[1][1]
    for n in range(10):
        output.data_received(b"line %d\n" % n)
        await asyncio.sleep(0.001)
    text = output.result().decode()
    assert "bytes of output omitted]" in text
    times = output.times()
    assert sum(count for count, _ in times) == logtimes.line_count(text)
    assert all(STAMP.match(stamp) for _, stamp in times)
    stamped = logtimes.stamped(text, times, fallback="X").splitlines()
    assert stamped[0] == f"{first[0][1]} one"
    assert stamped[3] == f"{first[1][1]} four"
    assert "X" not in {line.split(" ", 1)[0] for line in stamped}


def test_supervisor_log_times_cover_its_text_line_for_line() -> None:
    slog = SupervisorLog("INFO")
    slog.info("staging in")
    slog.debug("not shown at INFO")
    slog.output("script says\nsomething\n", ((1, A),))
    slog.error("two\nlines")
    times = slog.times()
    assert sum(count for count, _ in times) == logtimes.line_count(slog.text()) == 5
    stamped = logtimes.stamped(slog.text(), times, fallback="X").splitlines()
    assert stamped[1] == f"{A} script says"
    assert all(STAMP.match(line.split(" ", 1)[0]) for line in stamped)
