"""No event lost, none run twice: the manager killed at the worst moments, then started again."""

from __future__ import annotations

import base64
import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from oscar_manager.local_runtime import shared_work_root
from oscar_manager.settings import Settings
from tests.support.components import free_port
from tests.support.server import RunningServer, crash_server, start_server, stop_server

pytestmark = pytest.mark.server

# Each run leaves a file with a unique name, so a second run of the same event would show.
SCRIPT = 'sleep "${DELAY:-0}"\necho run > "$TMP_OUTPUT_DIR/out-$(date +%s%N)"\n'


def client(server: RunningServer) -> httpx.Client:
    return httpx.Client(base_url=server.url, auth=("oscar", server.password()), timeout=10)


def create_service(server: RunningServer, *, delay: int = 0) -> None:
    body = {
        "name": "durable",
        "image": "img",
        "script": SCRIPT,
        "environment": {"variables": {"DELAY": str(delay)}},
        "input": [{"path": "durable/in"}],
        "output": [{"path": "durable/out"}],
    }
    with client(server) as http:
        assert http.post("/system/services", json=body).status_code == 201


def jobs(server: RunningServer) -> dict[str, Any]:
    with client(server) as http:
        result: dict[str, Any] = http.get("/system/logs/durable").json()["jobs"]
        return result


def wait_finished(server: RunningServer, count: int, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    current: dict[str, Any] = {}
    while time.monotonic() < deadline:
        current = jobs(server)
        if len(current) >= count and all(j["status"] in ("Succeeded", "Failed") for j in current.values()):
            return current
        time.sleep(0.1)
    raise AssertionError(f"expected {count} finished jobs, got {current}")


def outputs(workdir: Path) -> list[str]:
    folder = workdir / "oscar-data" / "buckets" / "durable" / "out"
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def test_events_recorded_before_a_crash_run_exactly_once(tmp_path: Path) -> None:
    env = {"OSCAR_PASSWORD": "pw", "OSCAR_DISPATCH": "false"}
    server = start_server(tmp_path, free_port(), env=env)
    create_service(server)
    with client(server) as http:
        for n in range(3):
            assert http.post("/job/durable", content=base64.b64encode(b"%d" % n)).status_code == 201
    (tmp_path / "oscar-data" / "buckets" / "durable" / "in" / "dropped.txt").write_text("file")
    time.sleep(0.5)  # the watcher records the dropped file
    assert jobs(server) == {}  # recorded, not run
    crash_server(server)

    restarted = start_server(tmp_path, free_port(), env={"OSCAR_PASSWORD": "pw"})
    try:
        finished = wait_finished(restarted, 4)
        time.sleep(1)
        assert len(jobs(restarted)) == 4
        assert {job["status"] for job in finished.values()} == {"Succeeded"}
        assert len(outputs(tmp_path)) == 4
    finally:
        stop_server(restarted)


def test_job_killed_mid_run_runs_again_and_finishes_once(tmp_path: Path) -> None:
    env = {"OSCAR_PASSWORD": "pw"}
    server = start_server(tmp_path, free_port(), env=env)
    create_service(server, delay=2)
    with client(server) as http:
        job_id = http.post("/job/durable", content=base64.b64encode(b"x")).headers["x-oscar-job-ids"]
    deadline = time.monotonic() + 20
    while jobs(server).get(job_id, {}).get("status") != "Running":
        assert time.monotonic() < deadline, jobs(server)
        time.sleep(0.05)
    crash_server(server)
    assert outputs(tmp_path) == []

    restarted = start_server(tmp_path, free_port(), env=env)
    try:
        finished = wait_finished(restarted, 1)
        assert list(finished) == [job_id]
        assert finished[job_id]["status"] == "Succeeded"
        assert len(outputs(tmp_path)) == 1
    finally:
        stop_server(restarted)


def test_files_dropped_while_down_are_processed_once(tmp_path: Path) -> None:
    env = {"OSCAR_PASSWORD": "pw"}
    server = start_server(tmp_path, free_port(), env=env)
    create_service(server)
    stop_server(server)
    inbox = tmp_path / "oscar-data" / "buckets" / "durable" / "in"
    for name in ("a.txt", "b c.txt"):
        (inbox / name).write_text(name)

    restarted = start_server(tmp_path, free_port(), env=env)
    try:
        wait_finished(restarted, 2)
    finally:
        stop_server(restarted)
    again = start_server(tmp_path, free_port(), env=env)
    try:
        time.sleep(1.5)
        finished = jobs(again)
        assert len(finished) == 2
        assert len(outputs(tmp_path)) == 2
        # Logs are kept in the registry: still there after a restart.
        with client(again) as http:
            for job_id in finished:
                log = http.get(f"/system/logs/durable/{job_id}")
                assert log.status_code == 200
                assert "Downloading 'durable/in/" in log.text
    finally:
        stop_server(again)


def _job_folders(workdir: Path) -> list[Path]:
    """The local backend's job and run folders: under the data dir, or the shared temp root when the
    manager runs as root (scripts then run as another user)."""
    data = workdir / "oscar-data"
    roots = [data / "work", shared_work_root(Settings(oscar_data_dir=data))]
    return [entry for root in roots if root.is_dir() for entry in root.iterdir()]


def _partial_upload(server: RunningServer, release: threading.Event) -> None:
    """A PUT whose body stops half-way (the client stalls until the manager is killed)."""

    def body() -> Iterator[bytes]:
        yield b"x" * 1024 * 1024
        release.wait(30)

    with contextlib.suppress(httpx.HTTPError), client(server) as http:
        http.put("/system/buckets/durable/objects/in/partial.bin", content=body())


def test_what_a_killed_manager_left_is_swept_at_the_next_start(tmp_path: Path) -> None:
    """kill -9 with a job running and an upload half-sent: its job folder and the upload's staging file
    are gone after the restart, as is a multipart upload to the S3 face abandoned a day ago (a recent one
    stays: its client may still complete it). Links are removed, never followed: the bucket objects they
    point at stay, and so does everything in the buckets."""
    env = {"OSCAR_PASSWORD": "pw"}
    data = tmp_path / "oscar-data"
    server = start_server(tmp_path, free_port(), env=env)
    create_service(server, delay=30)
    kept = data / "buckets" / "durable" / "out" / "kept.txt"
    kept.write_text("an object")
    with client(server) as http:
        job_id = http.post("/job/durable", content=base64.b64encode(b"x")).headers["x-oscar-job-ids"]
    deadline = time.monotonic() + 20
    while jobs(server).get(job_id, {}).get("status") != "Running":
        assert time.monotonic() < deadline, jobs(server)
        time.sleep(0.05)
    release = threading.Event()
    uploader = threading.Thread(target=_partial_upload, args=(server, release))
    uploader.start()
    staging = data / "buckets" / ".staging"
    while not list(staging.glob("*.part")):
        assert time.monotonic() < deadline, "the upload never started"
        time.sleep(0.05)
    folders = _job_folders(tmp_path)
    assert folders  # the running job's folder
    folders[0].joinpath("link-to-bucket").symlink_to(data / "buckets" / "durable")
    (folders[0].parent / "job-link").symlink_to(data / "buckets" / "durable" / "out")
    uploads = data / "s3-uploads"
    abandoned, recent = uploads / ("a" * 32), uploads / ("b" * 32)
    for folder in (abandoned, recent):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "target").write_text('{"bucket": "durable", "key": "in/big.bin"}')
    two_days_ago = time.time() - 2 * 24 * 3600
    for path in (abandoned / "target", abandoned):
        os.utime(path, (two_days_ago, two_days_ago))
    crash_server(server)
    release.set()
    uploader.join()

    restarted = start_server(tmp_path, free_port(), env=env)
    try:
        # (the killed job runs again meanwhile, in a folder of its own)
        assert not any(folder.exists() or folder.is_symlink() for folder in folders)
        assert not (folders[0].parent / "job-link").is_symlink()
        assert list(staging.iterdir()) == []
        assert not abandoned.exists()
        assert (recent / "target").exists()
        assert kept.read_text() == "an object"
        assert (data / "buckets" / "durable" / "in").is_dir()
        assert not (data / "buckets" / "durable" / "in" / "partial.bin").exists()
    finally:
        stop_server(restarted)
