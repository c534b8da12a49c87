"""The manager as a user runs it against a real MinIO: oscar-python's storage calls, the webhook target
registered by the manager itself, and a manager killed in the middle of a stream of uploads."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from oscar_python.client import Client

from tests.support.components import free_port
from tests.support.minio import MinioServer, boto3_client, start_minio
from tests.support.server import RunningServer, crash_server, start_server, stop_server

pytestmark = pytest.mark.server

UPPERCASE = 'tr a-z A-Z < "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/$(basename "$INPUT_FILE_PATH")"\n'
FDL = """\
functions:
  oscar:
  - acceptance:
      name: {name}
      cpu: 0.5
      memory: 256Mi
      image: ghcr.io/grycap/cowsay
      script: script.sh
      input:
      - storage_provider: minio.default
        path: {name}/input
      output:
      - storage_provider: minio.default
        path: {name}/output
"""


def uppercase_service(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "image": "img",
        "script": UPPERCASE,
        "input": [{"path": f"{name}/in"}],
        "output": [{"path": f"{name}/out"}],
    }


def minio_env(minio: MinioServer, **extra: str) -> dict[str, str]:
    return {
        "MINIO_ENDPOINT": minio.endpoint,
        "MINIO_ACCESS_KEY": minio.access_key,
        "MINIO_SECRET_KEY": minio.secret_key,
        **extra,
    }


def s3_client(minio: MinioServer) -> Any:
    return boto3_client(minio.endpoint, minio.access_key, minio.secret_key)


def http(server: RunningServer) -> httpx.Client:
    return httpx.Client(base_url=server.url, auth=("oscar", server.password()), timeout=10)


def finished_jobs(server: RunningServer, service: str, count: int, within: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + within
    jobs: dict[str, Any] = {}
    with http(server) as client:
        while time.monotonic() < deadline:
            jobs = client.get(f"/system/logs/{service}").json()["jobs"]
            if len(jobs) >= count and all(j["status"] in ("Succeeded", "Failed") for j in jobs.values()):
                return jobs
            time.sleep(0.1)
    raise AssertionError(f"expected {count} finished jobs of {service}, got {jobs}")


def wait_listening(server: RunningServer, bucket: str, within: float = 20) -> None:
    deadline = time.monotonic() + within
    with http(server) as client:
        while bucket not in client.get("/system/info").json()["storage"]["listening"]:
            assert time.monotonic() < deadline, f"the manager does not listen to {bucket}"
            time.sleep(0.05)


def wait_webhook_ready(server: RunningServer, within: float = 30) -> None:
    deadline = time.monotonic() + within
    with http(server) as client:
        while client.get("/system/info").json()["storage"]["event_sources"] != ["webhook"]:
            assert time.monotonic() < deadline, "the webhook target was never set up"
            time.sleep(0.1)


@pytest.fixture
def minio_manager(tmp_path: Path, minio_server: MinioServer) -> Iterator[RunningServer]:
    running = start_server(tmp_path, free_port(), env=minio_env(minio_server))
    try:
        yield running
    finally:
        stop_server(running)


def test_oscar_python_uploads_waits_downloads_and_reads_logs(
    minio_manager: RunningServer, minio_server: MinioServer, tmp_path: Path
) -> None:
    name = f"acc-{uuid.uuid4().hex[:8]}"
    (tmp_path / "script.sh").write_text(UPPERCASE)
    fdl = tmp_path / "service.yaml"
    fdl.write_text(FDL.format(name=name))
    client = Client(
        {
            "cluster_id": "acceptance",
            "endpoint": minio_manager.url,
            "user": "oscar",
            "password": minio_manager.password(),
            "ssl": False,
        }
    )
    assert client.create_service(str(fdl)).status_code == 201
    wait_listening(minio_manager, name)

    source = tmp_path / "upload" / "greeting.txt"
    source.parent.mkdir()
    source.write_text("hello from oscar-python")
    storage = client.create_storage_client(name)
    storage.upload_file("minio.default", str(source), f"{name}/input")

    jobs = finished_jobs(minio_manager, name, 1)
    assert [job["status"] for job in jobs.values()] == ["Succeeded"]
    assert client.list_jobs(name).json()["jobs"].keys() == jobs.keys()
    (job_name,) = jobs
    logs = client.get_job_logs(name, job_name).text
    assert f"Downloading '{name}/input/greeting.txt'" in logs

    download = tmp_path / "download"
    download.mkdir()
    storage.download_file("minio.default", str(download), f"{name}/output/greeting.txt")
    assert (download / "greeting.txt").read_text() == "HELLO FROM OSCAR-PYTHON"

    assert client.remove_service(name).status_code == 204
    # Deleting the service deleted no data.
    s3 = s3_client(minio_server)
    assert s3.get_object(Bucket=name, Key="output/greeting.txt")["Body"].read() == b"HELLO FROM OSCAR-PYTHON"


def test_the_manager_registers_its_webhook_target_once_and_minio_delivers_to_it(
    tmp_path: Path, minio_binary: Path
) -> None:
    minio = asyncio.run(start_minio(minio_binary))
    port = free_port()
    env = minio_env(
        minio,
        OSCAR_MINIO_LISTEN="false",
        OSCAR_MINIO_WEBHOOK_URL=f"http://127.0.0.1:{port}",
        OSCAR_RECONCILE_INTERVAL="0",
    )
    try:
        server = start_server(tmp_path, port, env=env)
        try:
            name = f"hook-{uuid.uuid4().hex[:8]}"
            body = uppercase_service(name)
            wait_webhook_ready(server)
            started = time.monotonic()
            with http(server) as client:
                assert client.post("/system/services", json=body).status_code == 201
            created_in = time.monotonic() - started
            s3 = s3_client(minio)
            s3.put_object(Bucket=name, Key="in/note.txt", Body=b"webhook")
            jobs = finished_jobs(server, name, 1)
            assert [job["status"] for job in jobs.values()] == ["Succeeded"]
            assert s3.get_object(Bucket=name, Key="out/note.txt")["Body"].read() == b"WEBHOOK"
            with http(server) as client:
                storage = client.get("/system/info").json()["storage"]
            assert storage["events"]["new"] == 1
            assert created_in < 5, "a create must not wait for a MinIO restart"
        finally:
            stop_server(server)
        log = (tmp_path / "server.log").read_text()
        assert log.count("restarting MinIO") == 1

        # A second start finds the target in place: no restart.
        server = start_server(tmp_path, port, env=env)
        try:
            wait_webhook_ready(server)
        finally:
            stop_server(server)
        log = (tmp_path / "server.log").read_text()
        assert log.count("restarting MinIO") == 1
        assert "MinIO webhook target OSCAR is present" in log
    finally:
        minio.stop()


def test_a_manager_killed_during_a_stream_of_uploads_loses_and_duplicates_nothing(
    tmp_path: Path, minio_server: MinioServer
) -> None:
    count = 40
    name = f"stream-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = minio_env(minio_server, OSCAR_RECONCILE_INTERVAL="0")
    server = start_server(tmp_path, port, env=env)
    body = uppercase_service(name)
    with http(server) as client:
        assert client.post("/system/services", json=body).status_code == 201
    wait_listening(server, name)

    s3 = s3_client(minio_server)
    uploaded = threading.Event()

    def upload() -> None:
        for index in range(count):
            s3.put_object(Bucket=name, Key=f"in/{index:03d}.txt", Body=f"item {index}".encode())
            time.sleep(0.05)
        uploaded.set()

    uploader = threading.Thread(target=upload)
    uploader.start()
    time.sleep(0.6)  # some uploads reach the running manager ...
    crash_server(server)
    time.sleep(0.6)  # ... some arrive while it is dead ...
    server = start_server(tmp_path, port, env=env)  # ... and the rest after it is back
    try:
        uploader.join(timeout=60)
        assert uploaded.is_set()
        jobs = finished_jobs(server, name, count)
        time.sleep(1)
        with http(server) as client:
            jobs = client.get(f"/system/logs/{name}").json()["jobs"]
        assert len(jobs) == count
        assert {job["status"] for job in jobs.values()} == {"Succeeded"}
        outputs = s3.list_objects_v2(Bucket=name, Prefix="out/")
        keys = sorted(item["Key"] for item in outputs.get("Contents", []) if not item["Key"].endswith("/"))
        assert keys == [f"out/{index:03d}.txt" for index in range(count)]
    finally:
        stop_server(server)
