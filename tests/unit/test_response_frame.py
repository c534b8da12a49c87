"""The sync response framed into a container log, and found again only when it is whole."""

from __future__ import annotations

import os

import pytest

from oscar_manager.supervisor.response_frame import frame, unframe

LOG = "2026-11-22 10:00:00,000 - supervisor - INFO - Running the user script\nscript says hi\n"


@pytest.mark.parametrize("response", [b"", b"HELLO", os.urandom(5000), b"\n----- end oscar-response -----\n"])
def test_a_framed_response_is_found_and_the_log_kept(response: bytes) -> None:
    log, found = unframe(LOG + frame(response).decode())
    assert found == response
    assert log == LOG


def test_no_frame_is_no_response() -> None:
    assert unframe(LOG) == (LOG, None)


def test_a_cut_frame_is_no_response() -> None:
    framed = frame(os.urandom(3000)).decode()
    for cut in (len(framed) // 2, len(framed) - 10):
        assert unframe(LOG + framed[:cut])[1] is None


def test_a_corrupted_frame_is_no_response() -> None:
    framed = frame(b"the real answer").decode()
    body_start = framed.index("\n", 1) + 1
    flipped = framed[:body_start] + ("A" if framed[body_start] != "A" else "B") + framed[body_start + 1 :]
    assert unframe(LOG + flipped)[1] is None


def test_the_last_whole_frame_wins() -> None:
    # A script printing something frame-like before the supervisor's own frame does not fool the reader.
    log, found = unframe(LOG + frame(b"forged").decode() + "more output\n" + frame(b"real").decode())
    assert found == b"real"
    assert "more output" in log


def test_frame_lines_are_short() -> None:
    # Under the kubelet's split size (16 KiB), so a runtime never cuts a line in two.
    assert max(len(line) for line in frame(os.urandom(100_000)).splitlines()) < 200
