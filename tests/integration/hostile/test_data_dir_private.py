"""Issue 12 item 6: the data directory (database with every token and secret, keys, buckets) is private, and
scripts do not run outside the sandbox unless the operator says so."""

from __future__ import annotations

import base64
import functools
import os
import stat
from pathlib import Path

import httpx
import pytest

from oscar_manager import local_runtime
from oscar_manager.backends.sandbox import Sandbox
from oscar_manager.settings import Settings
from tests.support.app import NO_AUTH, app_client, bearer, create_io_service
from tests.support.components import free_port
from tests.support.jobs import wait_for_jobs
from tests.support.server import start_server, stop_server

ECHO = 'echo "got $(cat "$INPUT_FILE_PATH")" > "$TMP_OUTPUT_DIR/out.txt"\n'


def _loose(root: Path) -> list[str]:
    found = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077:
            found.append(f"{path.relative_to(root.parent)} {oct(mode)}")
    return found


async def _service(client: httpx.AsyncClient, name: str = "echo") -> str:
    return await create_io_service(client, name, ECHO)


async def test_a_fresh_serve_keeps_everything_it_writes_private(tmp_path: Path) -> None:
    server = start_server(tmp_path, free_port())
    try:
        auth = ("oscar", server.password())
        async with httpx.AsyncClient(base_url=server.url, auth=auth, timeout=60) as client:
            token = await _service(client)
            ran = await client.post(
                "/job/echo", content=base64.b64encode(b"hi"), headers=bearer(token), auth=NO_AUTH
            )
            assert ran.status_code == 201, ran.text
            jobs = await wait_for_jobs(client, "echo", count=1)
            # The job's folder was still reachable by the script's user under the private umask.
            assert list(jobs.values())[0]["status"] == "Succeeded", jobs
            listing = (await client.get("/system/buckets/echo")).json()
            names = [item["object_name"] for item in listing["objects"]]
            assert any(name.startswith("out/") and name != "out/" for name in names), listing
    finally:
        stop_server(server)
    data = tmp_path / "oscar-data"
    assert {"oscar.db", "admin-password", "presign-key", "buckets"} <= {p.name for p in data.iterdir()}
    assert _loose(data) == []


async def test_a_loose_existing_data_dir_is_warned_about(tmp_path: Path) -> None:
    data = tmp_path / "oscar-data"
    data.mkdir()
    os.chmod(data, 0o755)  # noqa: S103 - as an older version left it
    (data / "admin-password").write_text("old-password\n")
    os.chmod(data / "admin-password", 0o644)
    server = start_server(tmp_path, free_port())
    stop_server(server)
    text = (tmp_path / "server.log").read_text()
    assert "open to other users" in text
    assert "oscar-data (0o755)" in text
    assert "admin-password (0o644)" in text


@pytest.fixture
def no_bubblewrap(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a machine without a working bubblewrap."""
    monkeypatch.setattr(local_runtime, "Sandbox", functools.partial(Sandbox, bwrap=None))


@pytest.mark.usefixtures("no_bubblewrap")
async def test_without_a_sandbox_scripts_are_refused_unless_opted_in(settings: Settings) -> None:
    body = base64.b64encode(b"hi")
    async with app_client(settings) as client:
        token = await _service(client)
        execution = (await client.get("/system/info")).json()["execution"]
        assert execution["sandbox"] == "none"
        assert "OSCAR_ALLOW_UNSANDBOXED" in execution["scripts"]
        as_json = {**bearer(token), "Accept": "application/json"}
        refused = await client.post("/run/echo", content=body, headers=as_json, auth=NO_AUTH)
        assert refused.status_code == 503
        assert refused.json()["error"] == "SandboxRefused"
        assert "bubblewrap" in refused.json()["detail"]
        assert "OSCAR_ALLOW_UNSANDBOXED" in refused.json()["detail"]
        created = await client.post("/job/echo", content=body, headers=bearer(token), auth=NO_AUTH)
        (job_id,) = created.headers["x-oscar-job-ids"].split(",")
        assert (await wait_for_jobs(client, "echo", count=1))[job_id]["status"] == "Failed"
        log = (await client.get(f"/system/logs/echo/{job_id}")).text
        assert "bubblewrap" in log
        assert "OSCAR_ALLOW_UNSANDBOXED" in log
        assert "Running the user script" not in log

    opted_in = settings.model_copy(update={"oscar_allow_unsandboxed": True})
    async with app_client(opted_in) as client:
        execution = (await client.get("/system/info")).json()["execution"]
        assert execution["scripts"] == "run unsandboxed"
        ran = await client.post("/run/echo", content=body, headers=bearer(token), auth=NO_AUTH)
        assert ran.status_code == 200, ran.text
        assert base64.b64decode(ran.content) == b"got hi\n"
