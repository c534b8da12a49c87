"""The local exposer's pure rules: scale bounds, backoff, scaling on load, the probe path; and the bounded
line log of an instance's output."""

from __future__ import annotations

import asyncio

import pytest

from oscar_manager.backends.exposed_deployment import _probe_path
from oscar_manager.backends.exposed_policy import ExposeTimings, Scaler, backoff, scale_bounds
from oscar_manager.backends.linelog import LineLog
from oscar_manager.domain.service import Service, parse_service

TIMINGS = ExposeTimings(connections_per_instance=2, scale_up_after=5.0, scale_down_after=30.0)


def service(**expose: object) -> Service:
    return parse_service({"name": "s", "image": "i", "script": "x", "expose": {"api_port": [80], **expose}})


def test_scale_bounds() -> None:
    assert scale_bounds(service(), isolated=True) == (1, 1)
    assert scale_bounds(service(min_scale=2, max_scale=5), isolated=True) == (2, 5)
    assert scale_bounds(service(min_scale=3, max_scale=1), isolated=True) == (3, 3)
    # Sharing the host's network, instances would all bind one port.
    assert scale_bounds(service(min_scale=2, max_scale=5), isolated=False) == (1, 1)


def test_backoff_doubles_up_to_its_cap() -> None:
    timings = ExposeTimings(backoff_base=1.0, backoff_cap=5.0)
    assert [backoff(n, timings) for n in range(6)] == [0.0, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_scales_up_only_after_sustained_load_and_down_only_after_an_idle_period() -> None:
    scaler = Scaler(TIMINGS)
    bounds = (1, 3)
    assert scaler.decide(now=0.0, current=1, load=3, bounds=bounds) == 1
    assert scaler.decide(now=4.9, current=1, load=3, bounds=bounds) == 1
    assert scaler.decide(now=5.0, current=1, load=3, bounds=bounds) == 2
    # The load dipped: the clock starts again.
    assert scaler.decide(now=6.0, current=2, load=4, bounds=bounds) == 2
    assert scaler.decide(now=7.0, current=2, load=5, bounds=bounds) == 2
    assert scaler.decide(now=12.0, current=2, load=5, bounds=bounds) == 3
    assert scaler.decide(now=20.0, current=3, load=50, bounds=bounds) == 3  # never past max
    assert scaler.decide(now=30.0, current=3, load=2, bounds=bounds) == 3  # fits in 2 at half load: idle
    assert scaler.decide(now=59.0, current=3, load=1, bounds=bounds) == 3
    assert scaler.decide(now=60.0, current=3, load=1, bounds=bounds) == 2
    assert scaler.decide(now=61.0, current=2, load=0, bounds=bounds) == 2
    assert scaler.decide(now=91.0, current=2, load=0, bounds=bounds) == 1
    assert scaler.decide(now=200.0, current=1, load=0, bounds=bounds) == 1  # never below min


def test_probe_path_follows_upstream() -> None:
    assert _probe_path(service()) is None
    assert _probe_path(service(health_path="health")) == "/health"
    assert _probe_path(service(health_path="/h", rewrite_target=True)) == "/system/services/s/exposed/h"
    assert _probe_path(service(health_path="/h", rewrite_target=True, probe_mode="direct")) == "/h"


@pytest.mark.asyncio
async def test_line_log_keeps_the_last_lines_each_cut_at_its_bound() -> None:
    log = LineLog(max_lines=3, max_line_bytes=5)
    log.data_received(b"one\ntwo\nthr")
    log.data_received(b"ee\nfour-is-long\nfi")
    log.connection_lost(None)
    await asyncio.wait_for(log.closed, 1)
    assert [text for _, text in log.lines] == ["three", "four- [line cut]", "fi"]
    assert all(stamp.endswith("Z") for stamp, _ in log.lines)
