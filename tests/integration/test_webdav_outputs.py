"""WebDAV outputs (issue 19): a job's outputs on a ``webdav.<id>`` provider land on a real WebDAV server
(wsgidav on cheroot, on loopback: ``tests/support/webdav.py``), on both paths that write outputs: the local
backend (the manager stages out in-process, through its egress-guarded clients) and the supervisor program
a Kubernetes Job runs (``oscar-supervisor``, here as the Python program; its self-contained build is the same
code). Folders are made as needed, files are streamed, a refused write fails the job naming the provider and
the server's answer, TLS verification is honoured, and a provider the service does not declare is a 400.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from oscar_manager.settings import Settings
from oscar_manager.storage.base import StorageError
from oscar_manager.storage.providers import webdav_settings
from oscar_manager.storage.webdav import WebDavSink
from tests.support.app import NO_AUTH, app_client, bearer
from tests.support.databases import SqliteDatabases
from tests.support.factories import make_settings
from tests.support.jobs import wait_for_jobs
from tests.support.supervisor import b64, config, run_python
from tests.support.webdav import WebDavServer, webdav_server

# Nested outputs, as a script leaves them in $TMP_OUTPUT_DIR.
NESTED_SCRIPT = """\
mkdir -p "$TMP_OUTPUT_DIR/a/b"
printf 'deep' > "$TMP_OUTPUT_DIR/a/b/c.txt"
printf 'top' > "$TMP_OUTPUT_DIR/top.txt"
printf 'skip' > "$TMP_OUTPUT_DIR/ignored.log"
"""
OUT_PATH = "home/dcache-user/results"


@pytest.fixture(scope="module")
def dav() -> Iterator[WebDavServer]:
    with webdav_server() as server:
        yield server


@pytest.fixture
def settings(tmp_path: Path, sqlite_databases: SqliteDatabases, bwrap: str) -> Settings:
    """The local backend; the WebDAV server is on loopback, which the operator must allow."""
    return make_settings(
        database_url=sqlite_databases.create(tmp_path / "oscar.db", migrated=True),
        data_dir=tmp_path / "data",
        oscar_provider_allowed_networks="127.0.0.1",
        oscar_run_timeout=60,
    )


def service(name: str, dav: WebDavServer, *, script: str = NESTED_SCRIPT, **provider: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": "alpine",
        "script": script,
        "input": [{"storage_provider": "minio.default", "path": f"{name}/in"}],
        "output": [{"storage_provider": "webdav.dcache", "path": f"/{OUT_PATH}/", "suffix": [".txt"]}],
        "storage_providers": {"webdav": {"dcache": {**dav.provider(), **provider}}},
    }


def served(dav: WebDavServer, under: str) -> dict[str, bytes]:
    root = dav.root / under
    return {str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*") if path.is_file()}


async def run_job(http: httpx.AsyncClient, body: dict[str, Any]) -> tuple[str, str]:
    """Create the service, post one job, wait for it: (its status, its log)."""
    created = await http.post("/system/services", json=body)
    assert created.status_code == 201, created.text
    token = (await http.get(f"/system/services/{body['name']}")).json()["token"]
    posted = await http.post(f"/job/{body['name']}", content=b64("x"), headers=bearer(token), auth=NO_AUTH)
    assert posted.status_code == 201, posted.text
    job_id = posted.headers["x-oscar-job-ids"]
    jobs = await wait_for_jobs(http, body["name"], count=1, within=60)
    log = (await http.get(f"/system/logs/{body['name']}/{job_id}")).text
    return jobs[job_id]["status"], log


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# --- the local backend: the manager writes the outputs ----------------------------------------------------


async def test_outputs_land_in_nested_folders_made_as_needed(settings: Settings, dav: WebDavServer) -> None:
    name = unique("dav")
    body = service(name, dav)
    body["output"][0]["path"] = f"{OUT_PATH}/{name}/deeper"  # three levels the server does not have yet
    async with app_client(settings) as http:
        status, log = await run_job(http, body)
        assert status == "Succeeded", log
        # A second job writes into the folders the first made (MKCOL answers 405 there).
        status, log = await run_job(http, {**body, "name": f"{name}-2"})
        assert status == "Succeeded", log
    assert served(dav, f"{OUT_PATH}/{name}/deeper") == {"a/b/c.txt": b"deep", "top.txt": b"top"}
    assert "'webdav.dcache'" in log


async def test_a_refused_write_fails_the_job_naming_the_provider_and_the_answer(
    settings: Settings, dav: WebDavServer
) -> None:
    name = unique("davbad")
    body = service(name, dav, password="not-the-password")
    body["output"][0]["path"] = f"{OUT_PATH}/{name}"
    async with app_client(settings) as http:
        status, log = await run_job(http, body)
    assert status == "Failed", log
    assert "'webdav.dcache'" in log
    assert "401" in log
    assert "not-the-password" not in log
    assert not (dav.root / OUT_PATH / name).exists()


@pytest.mark.parametrize(
    ("output", "providers", "expected"),
    [
        ("webdav.nowhere", {"dcache": {"hostname": "dav.example"}}, "'webdav.nowhere' is not declared"),
        ("webdav", {"dcache": {"hostname": "dav.example"}}, "'webdav.default' is not declared"),
        ("webdav.dcache", {"dcache": {"login": "me"}}, "storage_providers.webdav.dcache.hostname"),
        ("webdav.dcache", {"dcache": {"hostname": "dav.example", "verify": "sometimes"}}, "verify"),
    ],
)
async def test_a_webdav_output_must_name_a_declared_server(
    settings: Settings, output: str, providers: dict[str, Any], expected: str
) -> None:
    name = unique("davno")
    body = {
        "name": name,
        "image": "alpine",
        "script": "true",
        "output": [{"storage_provider": output, "path": "/home/out"}],
        "storage_providers": {"webdav": providers},
    }
    async with app_client(settings) as http:
        response = await http.post("/system/services", json=body)
        assert response.status_code == 400, response.text
        assert expected in response.text
        assert (await http.get(f"/system/services/{name}")).status_code == 404


async def test_a_loopback_server_is_refused_at_create_unless_the_operator_allows_it(
    tmp_path: Path, sqlite_databases: SqliteDatabases, dav: WebDavServer
) -> None:
    name = unique("davlo")
    strict = make_settings(
        database_url=sqlite_databases.create(tmp_path / "strict.db", migrated=True), data_dir=tmp_path / "d"
    )
    async with app_client(strict) as http:
        response = await http.post("/system/services", json=service(name, dav))
    assert response.status_code == 400, response.text
    assert "storage_providers.webdav.dcache.hostname" in response.text
    assert "loopback" in response.text


async def test_the_manager_connects_to_a_loopback_server_only_while_the_operator_allows_it(
    settings: Settings, dav: WebDavServer
) -> None:
    """Created while loopback was allowed, then run by a manager that no longer allows it: the write is
    refused at connect (the guard shared with S3 providers), and nothing reaches the server."""
    name = unique("davguard")
    body = service(name, dav)
    body["output"][0]["path"] = f"{OUT_PATH}/{name}"
    async with app_client(settings) as http:
        created = await http.post("/system/services", json=body)
        assert created.status_code == 201, created.text
    strict = settings.model_copy(update={"oscar_provider_allowed_networks": []})
    async with app_client(strict) as http:
        token = (await http.get(f"/system/services/{name}")).json()["token"]
        posted = await http.post(f"/job/{name}", content=b64("x"), headers=bearer(token), auth=NO_AUTH)
        assert posted.status_code == 201, posted.text
        job_id = posted.headers["x-oscar-job-ids"]
        jobs = await wait_for_jobs(http, name, count=1, within=60)
        log = (await http.get(f"/system/logs/{name}/{job_id}")).text
    assert jobs[job_id]["status"] == "Failed", log
    assert "ProviderRefused" in log
    assert "'webdav.dcache'" in log
    assert not (dav.root / OUT_PATH / name).exists()


# --- the supervisor program: what a Kubernetes Job runs ------------------------------------------------


def supervisor_env(dav: WebDavServer, folder: str, script: str, **provider: Any) -> dict[str, str]:
    definition = config(
        output=[{"storage_provider": "webdav.dcache", "path": folder}],
        storage_providers={"webdav": {"dcache": {**dav.provider(), **provider}}},
    )
    return {"FUNCTION_CONFIG": definition, "SCRIPT": b64(script)}


def test_the_supervisor_program_writes_outputs_to_webdav(dav: WebDavServer) -> None:
    folder = f"{OUT_PATH}/{unique('pod')}"
    done = run_python(b64("x").encode(), supervisor_env(dav, folder, NESTED_SCRIPT))
    assert done.returncode == 0, done.stderr
    assert served(dav, folder) == {"a/b/c.txt": b"deep", "top.txt": b"top", "ignored.log": b"skip"}


def test_the_supervisor_program_fails_on_a_refused_write(dav: WebDavServer) -> None:
    folder = f"{OUT_PATH}/{unique('podbad')}"
    done = run_python(b64("x").encode(), supervisor_env(dav, folder, NESTED_SCRIPT, password="wrong"))
    assert done.returncode == 1
    assert b"'webdav.dcache'" in done.stderr
    assert b"401" in done.stderr
    assert not (dav.root / folder).exists()


# Runs the supervisor program as its only child and prints that child's peak RSS (KiB) last on stderr.
MEASURED = """
import resource, subprocess, sys
done = subprocess.run([sys.executable, "-m", "oscar_manager.supervisor"], stdin=sys.stdin)
sys.stderr.write(f"\\nmaxrss={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\\n")
sys.exit(done.returncode)
"""


def peak_rss_kib(dav: WebDavServer, folder: str, script: str) -> tuple[int, bytes]:
    base = {k: v for k, v in os.environ.items() if k not in ("EVENT", "FUNCTION_CONFIG", "SCRIPT")}
    done = subprocess.run(
        [sys.executable, "-c", MEASURED],
        input=b64("x").encode(),
        env={**base, **supervisor_env(dav, folder, script)},
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stderr.rsplit(b"maxrss=", 1)[1].split()[0]), done.stderr


def test_a_large_output_is_streamed_by_the_supervisor_program(dav: WebDavServer) -> None:
    folder = f"{OUT_PATH}/{unique('big')}"
    small, _ = peak_rss_kib(dav, folder + "-small", 'printf x > "$TMP_OUTPUT_DIR/small.bin"')
    # 96 MiB of random bytes: held whole (read, or buffered by the client) it would add as much to the peak.
    script = 'head -c 100663296 /dev/urandom > "$TMP_OUTPUT_DIR/big.bin"; sha256sum "$TMP_OUTPUT_DIR/big.bin"'
    large, stderr = peak_rss_kib(dav, folder, script)
    uploaded = dav.root / folder / "big.bin"
    assert uploaded.stat().st_size == 96 * 1024 * 1024
    digest = hashlib.sha256(uploaded.read_bytes()).hexdigest()
    assert digest.encode() in stderr  # the script's sha256sum of what it wrote
    assert large - small < 32 * 1024, (small, large)


# --- the sink itself: streaming and TLS --------------------------------------------------------------------


async def _generated(total_mib: int) -> AsyncIterator[bytes]:
    for index in range(total_mib):
        yield bytes([index % 256]) * (1024 * 1024)


async def test_the_sink_streams_without_holding_the_file(dav: WebDavServer) -> None:
    folder = f"{OUT_PATH}/{unique('stream')}"
    async with WebDavSink.connect("webdav.dcache", webdav_settings(dav.provider())) as sink:
        tracemalloc.start()
        try:
            await sink.put_stream(folder.split("/")[0], folder.partition("/")[2] + "/f.bin", _generated(64))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert (dav.root / folder / "f.bin").stat().st_size == 64 * 1024 * 1024
    # 64 MiB went through; at most a few 1 MiB chunks were held at once.
    assert peak < 8 * 1024 * 1024, peak


async def test_tls_verification_is_honoured() -> None:
    with webdav_server(tls=True) as secure:
        checked = webdav_settings(secure.provider())
        async with WebDavSink.connect("webdav.secure", checked) as sink:
            with pytest.raises(StorageError) as refused:
                await sink.put_stream("home", "out/a.txt", _generated(1))
        assert "'webdav.secure'" in refused.value.message
        assert "certificate" in refused.value.message.lower()
        assert not (secure.root / "home").exists()

        unchecked = webdav_settings(secure.provider(verify=False))
        async with WebDavSink.connect("webdav.secure", unchecked) as sink:
            await sink.put_stream("home", "out/a.txt", _generated(1))
        assert (secure.root / "home" / "out" / "a.txt").stat().st_size == 1024 * 1024
