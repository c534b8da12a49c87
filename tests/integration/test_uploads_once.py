"""One job per upload, once, on local storage (SQLite and PostgreSQL): the scan after downtime finds each
upload made meanwhile and nothing already run, and a registry upgraded from ETag keys runs nothing again.
(MinIO's webhook and listen sources: ``test_manager_on_s3.py``.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine

from oscar_manager.registry.mark_repository import LEGACY_OBJECT_KEYS
from oscar_manager.registry.tables import EventRow, MarkRow
from oscar_manager.settings import Settings
from oscar_manager.storage.local import LocalObjectStore
from tests.support.app import app_client
from tests.support.factories import service_body
from tests.support.jobs import all_jobs, processed, settle, wait_for_jobs

NAME = "upper"
SCRIPT = 'echo "processing $(basename "$INPUT_FILE_PATH")"\n'


async def create(http: httpx.AsyncClient) -> None:
    body = service_body(NAME, script=SCRIPT, input=[{"path": f"{NAME}/in"}], output=[{"path": f"{NAME}/out"}])
    assert (await http.post("/system/services", json=body)).status_code == 201


async def test_the_scan_after_downtime_runs_each_new_upload_once_and_nothing_already_run(
    settings: Settings,
) -> None:
    async with app_client(settings) as http:
        await create(http)
        for name in ("a.txt", "b.txt"):
            assert (
                await http.put(f"/system/buckets/{NAME}/objects/in/{name}", content=b"x")
            ).status_code == 201
        await wait_for_jobs(http, NAME, count=2)

    # While the manager is down: a.txt uploaded again with the same content (twice: the scan sees the last),
    # c.txt dropped in by another program, b.txt left alone.
    store = LocalObjectStore(settings.buckets_dir)
    for _ in range(2):
        await store.put_stream(NAME, "in/a.txt", _chunks(b"x"))
    (settings.buckets_dir / NAME / "in" / "c.txt").write_bytes(b"x")

    for _start in range(2):  # a second start finds nothing new
        async with app_client(settings) as http:
            await wait_for_jobs(http, NAME, count=4)
            await settle()
            assert await processed(http, NAME) == ["a.txt", "a.txt", "b.txt", "c.txt"]


async def test_uploads_run_under_etag_keys_before_an_upgrade_are_not_run_again(settings: Settings) -> None:
    """A registry migrated from ETag keys (0005 sets the mark): the scan at start-up finds an object whose
    upload the old keys recorded, and runs nothing; an upload after the upgrade runs."""
    async with app_client(settings) as http:
        await create(http)
    path = settings.buckets_dir / NAME / "in" / "old.txt"
    path.write_bytes(b"x")
    info = await LocalObjectStore(settings.buckets_dir).stat(NAME, "in/old.txt")
    assert info is not None
    recorded = datetime.now(UTC)
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                insert(EventRow).values(
                    dedup_key=f"object:{NAME}:{NAME}/in/old.txt@{info.etag}",
                    service=NAME,
                    job_id=f"{NAME}-0000000000000000",
                    payload=b"{}",
                    status="done",
                    attempts=1,
                    available_at=recorded,
                    created_at=recorded,
                )
            )
            await connection.execute(insert(MarkRow).values(name=LEGACY_OBJECT_KEYS, at=recorded))
    finally:
        await engine.dispose()

    async with app_client(settings) as http:
        await settle(1.0)
        assert await all_jobs(http, NAME) == {}
        assert (await http.put(f"/system/buckets/{NAME}/objects/in/old.txt", content=b"x")).status_code == 201
        await wait_for_jobs(http, NAME, count=1)
        assert await processed(http, NAME) == ["old.txt"]


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data
