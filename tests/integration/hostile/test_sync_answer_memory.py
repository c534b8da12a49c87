"""Issue 12, item 4 (its last part): a huge or sparse output returned by ``/run`` must not inflate the
manager.

The answer is capped by ``OSCAR_MAX_RUN_RESPONSE_BYTES`` from the outputs' apparent sizes, before anything
is read (a 1 GiB sparse file is refused at once with ``ResponseTooLarge``), on the local backend and on
Kubernetes (where the cap applies to the frame's declared size in the pod log); an answer within the cap
is streamed, base64 chunk by chunk, with the manager's memory bounded by a chunk, not by the answer.
"""

from __future__ import annotations

import base64
import socket
from pathlib import Path

import httpx
import pytest

from oscar_manager.settings import Settings
from oscar_manager.supervisor import response_frame
from oscar_manager.supervisor.answer import ResponseTooLarge, encoded_size
from tests.support.app import app_client
from tests.support.factories import ADMIN_PASSWORD, service_body
from tests.support.server import start_server, stop_server

GIB = 1024 * 1024 * 1024
SPARSE = 'truncate -s {size} "$TMP_OUTPUT_DIR/big.bin"\n'


async def run(client: httpx.AsyncClient, name: str, script: str) -> httpx.Response:
    created = await client.post("/system/services", json=service_body(name, script=script))
    assert created.status_code == 201, created.text
    # The error's JSON form (asked for) names its kind.
    headers = {"Accept": "application/json"}
    return await client.post(f"/run/{name}", content=base64.b64encode(b"x"), headers=headers)


def assert_too_large(response: httpx.Response, size: int) -> None:
    assert response.status_code == 500, response.text[:300]
    body = response.json()
    assert body["error"] == "ResponseTooLarge"
    assert str(size) in body["detail"]
    assert "OSCAR_MAX_RUN_RESPONSE_BYTES" in body["detail"]
    assert str(50 * 1024 * 1024) in body["detail"]


@pytest.mark.asyncio
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_sparse_gigabyte_is_refused_by_its_size_on_the_local_backend(
    settings: Settings, bwrap: str
) -> None:
    async with app_client(settings) as client:
        response = await run(client, "sparse", SPARSE.format(size=GIB))
    assert_too_large(response, GIB)


@pytest.mark.asyncio
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_several_outputs_count_together(settings: Settings, bwrap: str) -> None:
    script = SPARSE.format(size=30 * 1024 * 1024) + 'truncate -s 30M "$TMP_OUTPUT_DIR/second.bin"\n'
    async with app_client(settings) as client:
        response = await run(client, "two-sparse", script)
    assert_too_large(response, 60 * 1024 * 1024)


@pytest.mark.asyncio
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_sparse_gigabyte_is_refused_by_its_size_on_kubernetes(kubernetes_settings: Settings) -> None:
    async with app_client(kubernetes_settings) as client:
        response = await run(client, "sparse-kube", SPARSE.format(size=GIB))
    # The pod's supervisor refuses it before encoding and declares only its size (as base64): the
    # manager refuses it from that declaration.
    assert response.status_code == 500, response.text[:300]
    assert response.json()["error"] == "ResponseTooLarge"
    assert "OSCAR_MAX_RUN_RESPONSE_BYTES" in response.text


def test_the_manager_refuses_a_frame_by_its_declared_size_before_decoding() -> None:
    # A supervisor that did not apply the cap itself: the frame carries the whole answer, here the base64
    # of 3000 bytes.
    answer = b"A" * 4000
    log = "script output\n" + response_frame.frame(answer).decode()
    assert response_frame.unframe(log, max_response_bytes=3000)[1] == answer
    with pytest.raises(ResponseTooLarge):
        response_frame.unframe(log, max_response_bytes=2997)
    # The declaration alone is refused: nothing is decoded.
    declared = response_frame.oversize_frame(4 * GIB).decode()
    with pytest.raises(ResponseTooLarge):
        response_frame.unframe("log\n" + declared, max_response_bytes=50 * 1024 * 1024)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def peak_rss_reset(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs /proc/<pid>/clear_refs")
def test_an_answer_within_the_cap_is_streamed_with_bounded_memory(tmp_path: Path, bwrap: str) -> None:
    size = 256 * 1024 * 1024
    server = start_server(
        tmp_path,
        free_port(),
        env={"OSCAR_PASSWORD": ADMIN_PASSWORD, "OSCAR_MAX_RUN_RESPONSE_BYTES": str(size)},
    )
    try:
        with httpx.Client(base_url=server.url, auth=("oscar", ADMIN_PASSWORD), timeout=300) as http:
            body = service_body("big-answer", script=SPARSE.format(size=size))
            assert http.post("/system/services", json=body).status_code == 201
            peak_rss_reset(server.process.pid)
            before = peak_rss(server.process.pid)
            received = 0
            pending = b""
            with http.stream("POST", "/run/big-answer", content=base64.b64encode(b"x")) as response:
                assert response.status_code == 200
                assert response.headers["content-length"] == str(encoded_size(size))
                for chunk in response.iter_bytes():
                    pending += chunk
                    whole = len(pending) - len(pending) % 4
                    decoded = base64.b64decode(pending[:whole], validate=True)
                    assert decoded.count(0) == len(decoded)  # the sparse file's zeros, nothing else
                    received += len(decoded)
                    pending = pending[whole:]
            assert received + len(base64.b64decode(pending)) == size
            growth = peak_rss(server.process.pid) - before
    finally:
        stop_server(server)
    # Building it in memory costs the answer and its base64 (over 600 MB); streamed, a few chunks.
    assert growth < 64 * 1024 * 1024, f"the manager grew by {growth // (1024 * 1024)} MiB"
