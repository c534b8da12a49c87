"""deploy/docker-compose.yml run for real, without Docker: the real MinIO with the compose file's MinIO
environment and ``oscar-manager serve`` with the compose file's manager environment, only the addresses
rewritten to loopback (and PostgreSQL to the test server). An upload becomes a job through the webhook
target MinIO was started with: the manager never registers one nor restarts MinIO; and an upload made
while the manager is down waits in MinIO's queue directory and is delivered once it is back."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.support.components import free_port
from tests.support.databases import PostgresDatabases
from tests.support.deploy import compose_resolved
from tests.support.minio import MinioAdmin, boto3_client, start_minio
from tests.support.server import RunningServer, start_server, stop_server

pytestmark = [pytest.mark.server, pytest.mark.postgres]

UPPERCASE = 'tr a-z A-Z < "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/$(basename "$INPUT_FILE_PATH")"\n'


def env(service: dict[str, Any]) -> dict[str, str]:
    return {name: str(value) for name, value in service["environment"].items()}


def at(url: str, netloc: str) -> str:
    """``url`` with its host and port replaced (compose's service names -> loopback)."""
    return urlsplit(url)._replace(netloc=netloc).geturl()


async def until(check: Callable[[], bool], within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "gave up waiting"
        await asyncio.sleep(0.1)


def queued(queue: Path) -> list[Path]:
    """The events MinIO keeps for the target (one file each, in a folder per target)."""
    return list(queue.rglob("*.event"))


async def finished(api: httpx.AsyncClient, service: str, count: int, within: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        jobs: dict[str, Any] = (await api.get(f"/system/logs/{service}")).json()["jobs"]
        if len(jobs) >= count and all(job["status"] == "Succeeded" for job in jobs.values()):
            return jobs
        assert time.monotonic() < deadline, f"expected {count} succeeded jobs, got {jobs}"
        await asyncio.sleep(0.1)


async def event_sources(api: httpx.AsyncClient, within: float = 30) -> list[str]:
    """Once the manager has settled its webhook set-up (no longer "webhook-pending")."""
    deadline = time.monotonic() + within
    while True:
        sources: list[str] = (await api.get("/system/info")).json()["storage"]["event_sources"]
        if "webhook-pending" not in sources or time.monotonic() > deadline:
            return sources
        await asyncio.sleep(0.1)


async def test_the_compose_stack_runs_an_upload_through_the_preconfigured_webhook(
    minio_binary: Path, postgres_databases: PostgresDatabases, tmp_path: Path
) -> None:
    stack = compose_resolved()["services"]
    manager_env, minio_env = env(stack["manager"]), env(stack["minio"])
    target = manager_env["OSCAR_MINIO_WEBHOOK_TARGET"]
    port = free_port()
    manager_url = f"http://127.0.0.1:{port}"
    queue = tmp_path / "events"
    minio_env[f"MINIO_NOTIFY_WEBHOOK_ENDPOINT_{target}"] = at(
        minio_env[f"MINIO_NOTIFY_WEBHOOK_ENDPOINT_{target}"], f"127.0.0.1:{port}"
    )
    minio_env[f"MINIO_NOTIFY_WEBHOOK_QUEUE_DIR_{target}"] = str(queue)
    minio = await start_minio(minio_binary, minio_env)
    database = postgres_databases.create(migrated=False)
    compose_url = make_url(manager_env["OSCAR_DATABASE_URL"])
    assert make_url(database).drivername == compose_url.drivername
    manager_env.update(
        OSCAR_DATABASE_URL=database,
        OSCAR_HOST="127.0.0.1",
        OSCAR_DATA_DIR=str(tmp_path / "data"),
        MINIO_ENDPOINT=at(manager_env["MINIO_ENDPOINT"], minio.address),
        OSCAR_MINIO_WEBHOOK_URL=at(manager_env["OSCAR_MINIO_WEBHOOK_URL"], f"127.0.0.1:{port}"),
        # Only the webhook may deliver here, so a job proves it works (the listen streams would too).
        OSCAR_MINIO_LISTEN="false",
    )
    workdir = tmp_path / "manager"
    workdir.mkdir()
    running: RunningServer | None = None
    api = httpx.AsyncClient(base_url=manager_url, auth=("oscar", manager_env["OSCAR_PASSWORD"]), timeout=10)
    try:
        running = await asyncio.to_thread(start_server, workdir, port, env=manager_env)
        # The manager found MinIO's target and put its rules in place.
        assert await event_sources(api) == ["webhook"]
        name = f"compose-{uuid.uuid4().hex[:8]}"
        body = {
            "name": name,
            "image": "img",
            "script": UPPERCASE,
            "input": [{"path": f"{name}/in"}],
            "output": [{"path": f"{name}/out"}],
        }
        assert (await api.post("/system/services", json=body)).status_code == 201
        s3 = boto3_client(minio.endpoint, minio_env["MINIO_ROOT_USER"], minio_env["MINIO_ROOT_PASSWORD"])
        s3.put_object(Bucket=name, Key="in/first.txt", Body=b"first")
        await finished(api, name, 1)
        assert s3.get_object(Bucket=name, Key="out/first.txt")["Body"].read() == b"FIRST"

        # The manager is down: MinIO keeps the event on disk, and delivers it once the manager is back.
        await asyncio.to_thread(stop_server, running)
        running = None
        s3.put_object(Bucket=name, Key="in/second.txt", Body=b"second")
        assert queued(queue)
        running = await asyncio.to_thread(start_server, workdir, port, env=manager_env)
        await until(lambda: not queued(queue))  # MinIO retried and the manager took it
        jobs = await finished(api, name, 2)
        # Both MinIO's retry and the manager's start-up reconcile offered it: one job all the same.
        await asyncio.sleep(0.5)
        assert (await api.get(f"/system/logs/{name}")).json()["jobs"].keys() == jobs.keys()
        assert s3.get_object(Bucket=name, Key="out/second.txt")["Body"].read() == b"SECOND"

        async with aiohttp.ClientSession() as session:
            root = (minio_env["MINIO_ROOT_USER"], minio_env["MINIO_ROOT_PASSWORD"])
            history = await MinioAdmin(session, minio.endpoint, *root).config_history()
        assert "notify_webhook" not in history  # the manager registered nothing (and so restarted nothing)
        log = (workdir / "server.log").read_text()
        assert f"MinIO webhook target {target} is present" in log
        assert "restarting MinIO" not in log
    finally:
        await api.aclose()
        if running is not None:
            await asyncio.to_thread(stop_server, running)
        await asyncio.to_thread(minio.stop)
        postgres_databases.drop(database)
