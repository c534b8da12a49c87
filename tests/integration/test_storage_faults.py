"""Faults of the local store while the manager runs (issue 14): a read-only buckets folder (a read-only
bind mount) and a full data disk (a small tmpfs). Each test asserts that the fault is answered precisely
while it lasts and that every accepted upload ends with exactly one job once it is gone, without a
restart. Mounting needs root; elsewhere these tests are skipped (failed under ``OSCAR_TEST_STRICT``)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from oscar_manager.settings import Settings
from tests.support.app import app_client
from tests.support.components import PostgresServer, unavailable
from tests.support.databases import PostgresDatabases, SqliteDatabases
from tests.support.factories import make_settings, service_body
from tests.support.jobs import all_jobs, processed, settle, wait_for_jobs

NAME = "faults"
SCRIPT = 'echo "processing $(basename "$INPUT_FILE_PATH")"\ncp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"\n'


def _mount(*args: str) -> None:
    if os.geteuid() != 0:
        unavailable("mounting a read-only or full file system needs root")
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        unavailable(f"mount {' '.join(args)} failed: {result.stderr.strip()}")


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], check=True)


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` read-only in place (a read-only bind mount of itself) until the block ends."""
    _mount("--bind", str(folder), str(folder))
    try:
        _mount("-o", "remount,bind,ro", str(folder))
        yield
    finally:
        _umount(folder)


@contextlib.contextmanager
def full(folder: Path) -> Iterator[None]:
    """The file system under ``folder`` (a tmpfs) filled up until the block ends."""
    filler = folder / "filler"
    with open(filler, "wb") as out:
        with contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 65536)
                out.flush()
    try:
        yield
    finally:
        filler.unlink()


async def create(http: httpx.AsyncClient) -> None:
    body = service_body(NAME, script=SCRIPT, input=[{"path": f"{NAME}/in"}], output=[{"path": f"{NAME}/out"}])
    assert (await http.post("/system/services", json=body)).status_code == 201


async def only_job_running(http: httpx.AsyncClient) -> bool:
    jobs = await all_jobs(http, NAME)
    return [job["status"] for job in jobs.values()] == ["Running"]


async def one_job_running(http: httpx.AsyncClient) -> None:
    """A service whose job sleeps two seconds, then says "done"; returns once that job is Running."""
    body = service_body(NAME, script="sleep 2\necho done\n")
    assert (await http.post("/system/services", json=body)).status_code == 201
    assert (await http.post(f"/job/{NAME}", content=base64.b64encode(b"x"))).status_code == 201
    await eventually(lambda: only_job_running(http))


async def eventually(check: object, *, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while True:
        assert callable(check)
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError("the condition was not met in time")
        await asyncio.sleep(0.1)


async def test_a_read_only_store_is_answered_503_and_accepted_jobs_run_once_it_is_writable(
    settings: Settings,
) -> None:
    async with app_client(settings) as http:
        await create(http)
        buckets = settings.buckets_dir
        with read_only(buckets):
            refused = await http.put(
                f"/system/buckets/{NAME}/objects/in/a.txt",
                content=b"x",
                headers={"Accept": "application/json"},
            )
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"] == "StorageUnavailable"
            # Accepted while the store cannot take its output: retried, not failed for good.
            accepted = await http.post(f"/job/{NAME}", content=base64.b64encode(b"hello"))
            assert accepted.status_code == 201, accepted.text
            ready = await http.get("/health", params={"ready": "1"})
            assert ready.status_code == 503
            assert ready.json()["storage"]["ok"] is False
            await settle(1.5)
            jobs = await all_jobs(http, NAME)
            assert all(job["status"] != "Failed" for job in jobs.values()), jobs
        # The store is writable again: the accepted job ends, once, and Succeeded.
        jobs = await wait_for_jobs(http, NAME, count=1, within=60)
        assert [job["status"] for job in jobs.values()] == ["Succeeded"]
        assert (await http.get("/health", params={"ready": "1"})).status_code == 200
        assert (await http.put(f"/system/buckets/{NAME}/objects/in/b.txt", content=b"x")).status_code == 201
        await wait_for_jobs(http, NAME, count=2, within=60)


@contextlib.contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder))
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


async def test_a_full_data_disk_while_a_file_arrives_loses_nothing_once_space_is_back(
    tmp_path: Path, sqlite_databases: SqliteDatabases
) -> None:
    """The default layout (the SQLite registry inside the data directory) on a small disk that fills up
    while a file arrives: the watcher's writes fail, and so does its catch-up after a restart. Once space
    is back, without a restart, the file that arrived runs (the periodic reconcile finds it) and a new
    upload runs (the watcher watches again): one job each."""
    data = tmp_path / "data"
    with tmpfs(data, "16m"):
        await _files_arrive_on_a_full_disk(data, sqlite_databases.create(data / "oscar.db", migrated=True))


@pytest.mark.postgres
async def test_a_full_data_disk_with_the_registry_on_postgresql_loses_nothing_once_space_is_back(
    tmp_path: Path, postgres_databases: PostgresDatabases
) -> None:
    """The same with the registry on PostgreSQL, off the full disk: only the store is full. Uploads are
    refused 507, and once space is back, without a restart, every file in the input folder runs once."""
    data = tmp_path / "data"
    url = postgres_databases.create(migrated=True)
    try:
        with tmpfs(data, "16m"):
            await _files_arrive_on_a_full_disk(data, url)
    finally:
        postgres_databases.drop(url)


async def _files_arrive_on_a_full_disk(data: Path, url: str) -> None:
    settings = make_settings(database_url=url, data_dir=data, oscar_reconcile_interval=1)
    async with app_client(settings) as http:
        await create(http)
        # Written before the disk fills, moved into the input folder once it is full (a rename takes
        # no space): the watcher reports it (and, on SQLite, fails to record it).
        hold = settings.buckets_dir / NAME / ".hold"
        hold.mkdir()
        (hold / "a.txt").write_bytes(b"x")
        with full(data):
            (hold / "a.txt").rename(settings.buckets_dir / NAME / "in" / "a.txt")
            for index in range(20):  # more arrivals, so the registry has to grow
                with contextlib.suppress(OSError):
                    (settings.buckets_dir / NAME / "in" / f"c{index}.txt").write_bytes(b"")
            refused = await http.put(
                f"/system/buckets/{NAME}/objects/in/refused.txt",
                content=b"x" * 65536,
                headers={"Accept": "application/json"},
            )
            assert refused.status_code == 507, refused.text
            assert refused.json()["error"] == "StorageFull"
            ready = await http.get("/health", params={"ready": "1"})
            assert ready.status_code == 503
            assert "no space left" in ready.json()["storage"]["reason"]
            await settle(2)
        await eventually(lambda: _ready(http))
        assert (await http.put(f"/system/buckets/{NAME}/objects/in/b.txt", content=b"x")).status_code == 201
        in_folder = sorted(p.name for p in (settings.buckets_dir / NAME / "in").iterdir())
        await wait_for_jobs(http, NAME, count=len(in_folder), within=60)
        await settle()
        assert await processed(http, NAME) == in_folder
        assert "a.txt" in in_folder
        assert "b.txt" in in_folder


async def _ready(http: httpx.AsyncClient) -> bool:
    return (await http.get("/health", params={"ready": "1"})).status_code == 200


async def test_a_job_ending_while_the_disk_is_full_is_recorded_once_space_is_back(
    tmp_path: Path, sqlite_databases: SqliteDatabases
) -> None:
    """The registry (SQLite in the data directory) cannot record a job's end: the end is retried until it
    is recorded, without a restart, and the job runs once."""
    data = tmp_path / "data"
    with tmpfs(data, "16m"):
        url = sqlite_databases.create(data / "oscar.db", migrated=True)
        settings = make_settings(database_url=url, data_dir=data)
        async with app_client(settings) as http:
            await one_job_running(http)
            with full(data):
                await settle(4)  # the script ends meanwhile; its end cannot be written
                assert await only_job_running(http)
            jobs = await wait_for_jobs(http, NAME, count=1, within=60)
            assert [job["status"] for job in jobs.values()] == ["Succeeded"]


@pytest.mark.postgres
async def test_a_job_ending_while_postgresql_is_down_is_recorded_once_it_is_back(tmp_path: Path) -> None:
    """The PostgreSQL analog of the full disk when a job ends: the registry's server goes away while the
    job runs (a server of its own, so the other tests' one stays up). Readiness says the database is
    down meanwhile; once the server is back, without a manager restart, the job's end is recorded, once,
    and new work runs."""
    try:
        server = await asyncio.to_thread(PostgresServer.start)
    except Exception as exc:
        unavailable(f"cannot start a PostgreSQL server: {exc}")
    try:
        url = PostgresDatabases(server.url).create(migrated=True)
        settings = make_settings(database_url=url, data_dir=tmp_path / "data")
        async with app_client(settings) as http:
            await one_job_running(http)
            await asyncio.to_thread(server.halt)
            try:
                ready = await http.get("/health", params={"ready": "1"})
                assert ready.status_code == 503
                assert ready.json()["database"]["ok"] is False
                assert ready.json()["database"]["reason"]
                await settle(4)  # the script ends meanwhile; its end cannot be written
            finally:
                await asyncio.to_thread(server.resume)
            await eventually(lambda: _ready(http))
            jobs = await wait_for_jobs(http, NAME, count=1, within=60)
            assert [job["status"] for job in jobs.values()] == ["Succeeded"]
            (job_id,) = jobs
            assert (await http.get(f"/system/logs/{NAME}/{job_id}")).text.count("done") == 1
            # The dispatcher survived the outage: new work runs.
            assert (await http.post(f"/job/{NAME}", content=base64.b64encode(b"y"))).status_code == 201
            jobs = await wait_for_jobs(http, NAME, count=2, within=60)
            assert [job["status"] for job in jobs.values()] == ["Succeeded", "Succeeded"]
    finally:
        await asyncio.to_thread(server.stop)
