"""Issue 12 item 5: timeouts cover the whole job, not just the script.

A service's own storage provider that accepts connections and never answers (a "black hole" on loopback)
must fail that service's runs and jobs within their timeout, naming the provider and the object, and must
not starve the sync runs of other services meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from oscar_manager.domain.events import ObjectEvent, notification
from oscar_manager.settings import Settings
from tests.support.app import app_client
from tests.support.factories import service_body

pytestmark = pytest.mark.asyncio

TIMEOUT = 4.0
OBJECT = "hole-svc/in/x.txt"


class BlackHole:
    """A TCP server on loopback that accepts every connection and never sends a byte."""

    def __init__(self) -> None:
        self.accepted = 0
        self._held: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> BlackHole:
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._held:
            writer.close()
        await self._server.wait_closed()

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def _hold(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._held.append(writer)

    async def wait_for(self, connections: int, within: float = 15.0) -> None:
        deadline = time.monotonic() + within
        while self.accepted < connections:
            assert time.monotonic() < deadline, f"{self.accepted} connection(s), expected {connections}"
            await asyncio.sleep(0.02)


@pytest.fixture
async def hole() -> AsyncIterator[BlackHole]:
    async with BlackHole() as server:
        yield server


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    # One sync slot: a stuck run holding it would starve every other /run.
    # The black hole listens on loopback, where the egress guard lets no service provider connect unless
    # the operator allows it.
    quick = settings.model_copy(
        update={
            "oscar_run_timeout": TIMEOUT,
            "oscar_job_timeout": TIMEOUT,
            "oscar_local_concurrency": 1,
            "oscar_provider_allowed_networks": ["127.0.0.0/8"],
        }
    )
    async with app_client(quick) as http:
        yield http


async def create_services(client: httpx.AsyncClient, hole: BlackHole) -> str:
    """``hole-svc`` reads its input from the black hole; ``other`` uses only the manager's storage.
    Returns hole-svc's token."""
    stuck = service_body(
        "hole-svc",
        script='cat "$INPUT_FILE_PATH"\n',
        input=[{"storage_provider": "minio.hole", "path": "hole-svc/in"}],
        output=[{"storage_provider": "minio", "path": "hole-svc/out"}],
        storage_providers={
            "minio": {"hole": {"endpoint": hole.endpoint, "access_key": "a", "secret_key": "b" * 8}}
        },
    )
    other = service_body("other", script='tr a-z A-Z < "$INPUT_FILE_PATH"\n')
    for body in (stuck, other):
        created = await client.post("/system/services", json=body)
        assert created.status_code == 201, created.text
    token: str = (await client.get("/system/services/hole-svc")).json()["token"]
    return token


def storage_event(etag: str = "e1") -> bytes:
    bucket, key = OBJECT.split("/", 1)
    document = notification(ObjectEvent(bucket=bucket, key=key, etag=etag, size=1, event_time="t"))
    return json.dumps(document).encode()


def bearer(token: str) -> dict[str, Any]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_stuck_provider_fails_its_runs_in_time_and_starves_no_one(
    client: httpx.AsyncClient, hole: BlackHole
) -> None:
    token = await create_services(client, hole)
    stuck = [
        asyncio.create_task(client.post("/run/hole-svc", content=storage_event(), headers=bearer(token)))
        for _ in range(2)
    ]
    try:
        # Both are staging in at once: neither holds the one sync slot while it waits for the provider.
        await hole.wait_for(2)
        other = await client.post("/run/other", content=base64.b64encode(b"still served"))
        assert other.status_code == 200, other.text
        assert other.text == "STILL SERVED"
        assert not any(task.done() for task in stuck)  # served while the stuck runs were still waiting
        for response in await asyncio.gather(*stuck):
            assert response.status_code == 504, response.text
            detail = response.text
            assert "minio.hole" in detail
            assert OBJECT in detail
    finally:
        for task in stuck:
            task.cancel()
    # The slot is free again: a run of the other service goes through at once.
    again = await client.post("/run/other", content=base64.b64encode(b"again"))
    assert again.status_code == 200


async def test_a_stuck_provider_fails_its_job_naming_the_provider(
    client: httpx.AsyncClient, hole: BlackHole
) -> None:
    token = await create_services(client, hole)
    started = await client.post("/job/hole-svc", content=storage_event("e2"), headers=bearer(token))
    assert started.status_code == 201, started.text
    job_id = started.headers["x-oscar-job-ids"]
    deadline = time.monotonic() + TIMEOUT + 30  # bounded wait, not a timing assertion
    while True:
        job = (await client.get("/system/logs/hole-svc")).json()["jobs"].get(job_id, {})
        if job.get("status") in ("Succeeded", "Failed"):
            break
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.1)
    assert job["status"] == "Failed"
    log = (await client.get(f"/system/logs/hole-svc/{job_id}")).text
    assert "minio.hole" in log
    assert OBJECT in log
    assert "time limit" in log
    # The executor is free for the next job.
    assert (await client.post("/run/other", content=base64.b64encode(b"x"))).status_code == 200
