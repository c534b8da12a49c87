"""The local folder watcher does not go deaf (issue 14), on SQLite and PostgreSQL: a service purged and
created again is watched again, uploads under dot folders run, and a key as long as the rules allow fits
the registry's dedup key. Each case ends with every accepted upload run exactly once, without a restart
(a restart would hide the fault: its scan finds what the watcher missed)."""

from __future__ import annotations

import httpx

from oscar_manager.domain.events import DEDUP_KEY_MAX
from oscar_manager.settings import Settings
from oscar_manager.storage.keys import MAX_KEY_BYTES
from tests.support.app import app_client
from tests.support.factories import service_body
from tests.support.jobs import all_jobs, settle, wait_for_jobs

SCRIPT = 'echo "processing $STORAGE_OBJECT_KEY"\n'


async def create(http: httpx.AsyncClient, name: str, bucket: str) -> None:
    body = service_body(
        name, script=SCRIPT, input=[{"path": f"{bucket}/in"}], output=[{"path": f"{bucket}/out"}]
    )
    response = await http.post("/system/services", json=body)
    assert response.status_code == 201, response.text


async def upload(http: httpx.AsyncClient, bucket: str, key: str) -> None:
    response = await http.put(f"/system/buckets/{bucket}/objects/{key}", content=b"x")
    assert response.status_code == 201, response.text


async def exactly(http: httpx.AsyncClient, name: str, count: int) -> None:
    await wait_for_jobs(http, name, count=count)
    await settle()
    jobs = await all_jobs(http, name)
    assert len(jobs) == count, jobs
    assert all(job["status"] == "Succeeded" for job in jobs.values()), jobs


async def test_a_service_purged_and_created_again_is_watched_again(settings: Settings) -> None:
    async with app_client(settings) as http:
        await create(http, "upper", "upper")
        await upload(http, "upper", "in/before.txt")
        await exactly(http, "upper", 1)
        response = await http.delete("/system/services/upper", params={"purge": "true"})
        assert response.status_code == 204, response.text
        assert not (settings.buckets_dir / "upper").exists()  # the folders the watches were on are gone

        await create(http, "upper", "upper")
        await upload(http, "upper", "in/after.txt")  # renamed into place by the store
        (settings.buckets_dir / "upper" / "in" / "dropped.txt").write_bytes(b"x")  # written in place
        await exactly(http, "upper", 2)


async def test_uploads_under_dot_folders_start_their_jobs(settings: Settings) -> None:
    async with app_client(settings) as http:
        await create(http, "upper", "upper")
        await upload(http, "upper", "in/.x/a.txt")
        hidden = settings.buckets_dir / "upper" / "in" / ".y" / ".z"
        hidden.mkdir(parents=True)
        (hidden / "b.txt").write_bytes(b"x")
        await exactly(http, "upper", 2)
        # The store's own area is not a bucket: what it stages is no event.
        assert (settings.buckets_dir / ".staging").is_dir()


async def test_the_longest_legal_names_fit_the_dedup_key_and_still_dedup(settings: Settings) -> None:
    service = "s" * 39
    bucket = "b" * 63
    # Segments within the file system's 255-byte names; the whole key exactly at the limit.
    segments = ["in", *(["d" * 200] * 4)]
    prefix = "/".join(segments) + "/"
    key = prefix + "f" * (MAX_KEY_BYTES - len(prefix))
    assert len(key.encode()) == MAX_KEY_BYTES
    assert len(f"object:{service}:{bucket}/{key}") > DEDUP_KEY_MAX  # does not fit as it was keyed

    async with app_client(settings) as http:
        await create(http, service, bucket)
        await upload(http, bucket, key)
        await exactly(http, service, 1)
        # Another service's events are not stuck behind it (the watcher did not crash).
        await create(http, "other", "other")
        await upload(http, "other", "in/a.txt")
        await exactly(http, "other", 1)
    # The scan at start-up offers the same upload again: its key names the same event.
    async with app_client(settings) as http:
        await settle()
        await exactly(http, service, 1)
