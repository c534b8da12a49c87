"""The local executor's lifecycle: stopping with jobs running, cancelling queued and running jobs."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from pathlib import Path

import pytest

from oscar_manager.backends.base import JobRequest
from oscar_manager.backends.local import LocalBackend
from oscar_manager.backends.sandbox import Sandbox
from oscar_manager.domain.service import MinioDefault, normalise_new, parse_service
from oscar_manager.storage.local import LocalObjectStore
from oscar_manager.storage.providers import Stores
from tests.support.reporter import RecordingReporter

pytestmark = pytest.mark.asyncio


def job(job_id: str, script: str) -> JobRequest:
    service = normalise_new(
        parse_service({"name": "svc", "image": "img", "script": script}),
        owner="o",
        namespace="ns",
        minio=MinioDefault(endpoint="", region="", verify=True),
    )
    return JobRequest(job_id=job_id, service=service, payload=base64.b64encode(b"x"), attempt=1)


@pytest.fixture
async def backend(tmp_path: Path) -> LocalBackend:
    return LocalBackend(
        stores=Stores(LocalObjectStore(tmp_path / "buckets")),
        sandbox=Sandbox(bwrap=None, allow_unsandboxed=True),
        work_root=tmp_path / "work",
        concurrency=1,
        job_timeout=60,
    )


async def wait_until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_stop_with_a_job_running_returns_and_reports_nothing(backend: LocalBackend) -> None:
    recorder = RecordingReporter()
    await backend.start(recorder)
    await backend.submit(job("long", "sleep 30"))
    await wait_until(lambda: recorder.started_jobs == ["long"])
    await asyncio.wait_for(backend.stop(), timeout=10)
    # The event of an interrupted job stays claimed (runs again after a restart): no outcome reported.
    assert recorder.outcomes == {}


async def test_cancel_running_and_queued_jobs(backend: LocalBackend) -> None:
    recorder = RecordingReporter()
    await backend.start(recorder)
    await backend.submit(job("running", "sleep 30"))
    await wait_until(lambda: recorder.started_jobs == ["running"])
    await backend.submit(job("queued", "echo never"))
    assert backend.free_slots() == 0
    await backend.cancel("queued")
    await asyncio.wait_for(backend.cancel("running"), timeout=10)
    await backend.submit(job("after", "echo ok"))
    await wait_until(lambda: "after" in recorder.outcomes)
    assert recorder.started_jobs == ["running", "after"]
    assert set(recorder.outcomes) == {"after"}
    await backend.stop()


async def test_submitting_the_same_job_twice_runs_it_once(backend: LocalBackend) -> None:
    recorder = RecordingReporter()
    await backend.start(recorder)
    await backend.submit(job("same", "sleep 0.2"))
    await backend.submit(job("same", "sleep 0.2"))
    await wait_until(lambda: "same" in recorder.outcomes)
    await asyncio.sleep(0.3)
    assert recorder.started_jobs == ["same"]
    await backend.stop()
