"""/system/logs paging and deletion; /system/buckets objects, uploads and presigned URLs."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import update

from oscar_manager.operations import jobs as job_records
from oscar_manager.registry import Database
from oscar_manager.registry.tables import JobRow
from oscar_manager.settings import Settings
from tests.support.app import NO_AUTH, app_client, create_io_service
from tests.support.databases import SqliteDatabases
from tests.support.factories import make_settings
from tests.support.jobs import wait_for_jobs

pytestmark = pytest.mark.asyncio


async def service_with_jobs(
    client: httpx.AsyncClient, *, count: int, script: str = "echo done\n"
) -> list[str]:
    body = {"name": "svc", "image": "img", "script": script, "input": [{"path": "svc/in"}]}
    assert (await client.post("/system/services", json=body)).status_code == 201
    ids = []
    for n in range(count):
        response = await client.post("/job/svc", content=base64.b64encode(f"job {n}".encode()))
        ids.append(response.headers["x-oscar-job-ids"])
    await wait_for_jobs(client, "svc", count=count)
    return ids


@pytest.fixture
async def paged_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(settings.model_copy(update={"job_listing_limit": 2})) as http:
        yield http


class TestJobList:
    async def test_pages_cover_every_job_once(self, paged_client: httpx.AsyncClient) -> None:
        ids = await service_with_jobs(paged_client, count=5)
        seen: list[str] = []
        page = ""
        pages = 0
        while True:
            body = (await paged_client.get("/system/logs/svc", params={"page": page})).json()
            assert len(body["jobs"]) <= 2
            seen.extend(body["jobs"])
            pages += 1
            if "next_page" not in body:
                break
            assert body["remaining_jobs"] == 5 - len(seen)
            page = body["next_page"]
        assert pages == 3
        assert sorted(seen) == sorted(ids)

    async def test_remaining_jobs_left_out_past_what_is_counted(
        self, paged_client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Past ``REMAINING_COUNTED`` later jobs a page leaves ``remaining_jobs`` out (as Kubernetes does
        when it does not know) and still gives ``next_page``."""
        monkeypatch.setattr(job_records, "REMAINING_COUNTED", 2)
        await service_with_jobs(paged_client, count=5)
        bodies = []
        page = ""
        while True:
            bodies.append((await paged_client.get("/system/logs/svc", params={"page": page})).json())
            page = bodies[-1].get("next_page", "")
            if not page:
                break
        assert [len(body["jobs"]) for body in bodies] == [2, 2, 1]
        assert [body.get("remaining_jobs") for body in bodies] == [None, 1, None]
        assert ["next_page" in body for body in bodies] == [True, True, False]

    async def test_newest_first(self, client: httpx.AsyncClient) -> None:
        await service_with_jobs(client, count=3)
        jobs = (await client.get("/system/logs/svc")).json()["jobs"]
        created = [job["creation_time"] for job in jobs.values()]
        assert created == sorted(created, reverse=True)

    async def test_bad_page_token(self, client: httpx.AsyncClient) -> None:
        await service_with_jobs(client, count=1)
        assert (await client.get("/system/logs/svc", params={"page": "!!garbage"})).status_code == 400

    async def test_unknown_service(self, client: httpx.AsyncClient) -> None:
        assert (await client.get("/system/logs/ghost")).status_code == 404
        assert (await client.get("/system/logs/ghost/job")).status_code == 404
        assert (await client.delete("/system/logs/ghost")).status_code == 404

    async def test_requires_admin(self, client: httpx.AsyncClient) -> None:
        await service_with_jobs(client, count=1)
        assert (await client.get("/system/logs/svc", auth=NO_AUTH)).status_code == 401


RFC3339_NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")


class TestJobLogTimestamps:
    """``?timestamps=true`` (oscar-cli's ``service logs get -t``): each line prefixed by its RFC 3339 time and
    a space, as the Kubernetes log API does; without it the log is as it always was."""

    async def test_each_line_with_its_time(self, client: httpx.AsyncClient) -> None:
        (job,) = await service_with_jobs(client, count=1, script="echo first\nsleep 0.3\necho second\n")
        plain = (await client.get(f"/system/logs/svc/{job}")).text
        stamped = (await client.get(f"/system/logs/svc/{job}", params={"timestamps": "true"})).text
        assert "first\nsecond\n" in plain
        assert stamped.count("\n") == plain.count("\n")
        pairs = [line.split(" ", 1) for line in stamped.splitlines()]
        assert [text for _, text in pairs] == plain.splitlines()
        assert all(RFC3339_NANO.match(stamp) for stamp, _ in pairs), stamped
        stamps = [stamp for stamp, _ in pairs]
        assert stamps == sorted(stamps)
        first = stamps[plain.splitlines().index("first")]
        second = stamps[plain.splitlines().index("second")]
        assert first <= second
        # The text is unchanged, and false is the same as no parameter.
        again = await client.get(f"/system/logs/svc/{job}", params={"timestamps": "false"})
        assert again.text == plain

    async def test_a_log_kept_before_times_were_recorded(
        self, client: httpx.AsyncClient, database_url: str
    ) -> None:
        (job,) = await service_with_jobs(client, count=1, script="echo one\necho two\n")
        plain = (await client.get(f"/system/logs/svc/{job}")).text
        database = Database(database_url)
        try:
            async with database.engine.begin() as connection:
                await connection.execute(update(JobRow).where(JobRow.id == job).values(log_times=None))
        finally:
            await database.dispose()
        assert (await client.get(f"/system/logs/svc/{job}")).text == plain
        stamped = (await client.get(f"/system/logs/svc/{job}", params={"timestamps": "true"})).text
        # Every line gets the job's end, the best time known.
        finished = (await client.get("/system/logs/svc")).json()["jobs"][job]["finish_time"]
        stamps = {line.split(" ", 1)[0] for line in stamped.splitlines()}
        assert len(stamps) == 1
        (stamp,) = stamps
        assert RFC3339_NANO.match(stamp)
        assert stamp[:19] == finished[:19]
        assert [line.split(" ", 1)[1] for line in stamped.splitlines()] == plain.splitlines()


class TestJobDeletion:
    async def test_delete_one(self, client: httpx.AsyncClient) -> None:
        first, second = await service_with_jobs(client, count=2)
        assert (await client.delete(f"/system/logs/svc/{first}")).status_code == 204
        assert (await client.get(f"/system/logs/svc/{first}")).status_code == 404
        assert (await client.delete(f"/system/logs/svc/{first}")).status_code == 404
        assert list((await client.get("/system/logs/svc")).json()["jobs"]) == [second]

    async def test_job_of_another_service_is_404(self, client: httpx.AsyncClient) -> None:
        (job,) = await service_with_jobs(client, count=1)
        other = {"name": "other", "image": "img", "script": "true"}
        await client.post("/system/services", json=other)
        assert (await client.get(f"/system/logs/other/{job}")).status_code == 404
        assert (await client.delete(f"/system/logs/other/{job}")).status_code == 404
        assert (await client.get(f"/system/logs/svc/{job}")).status_code == 200

    async def test_delete_all_default_removes_only_succeeded(self, client: httpx.AsyncClient) -> None:
        script = 'grep -q fail "$INPUT_FILE_PATH" && exit 1; echo ok\n'
        body = {"name": "svc", "image": "img", "script": script}
        await client.post("/system/services", json=body)
        await client.post("/job/svc", content=base64.b64encode(b"fail"))
        await client.post("/job/svc", content=base64.b64encode(b"pass"))
        jobs = await wait_for_jobs(client, "svc", count=2)
        assert sorted(job["status"] for job in jobs.values()) == ["Failed", "Succeeded"]
        assert (await client.delete("/system/logs/svc")).status_code == 204
        left = (await client.get("/system/logs/svc")).json()["jobs"]
        assert [job["status"] for job in left.values()] == ["Failed"]
        assert (await client.delete("/system/logs/svc", params={"all": "true"})).status_code == 204
        assert (await client.get("/system/logs/svc")).json()["jobs"] == {}

    async def test_deleting_a_running_job_stops_it(self, client: httpx.AsyncClient) -> None:
        body = {"name": "svc", "image": "img", "script": "echo started\nsleep 30\n"}
        await client.post("/system/services", json=body)
        job = (await client.post("/job/svc", content=base64.b64encode(b"x"))).headers["x-oscar-job-ids"]
        for _ in range(200):
            jobs = (await client.get("/system/logs/svc")).json()["jobs"]
            if jobs.get(job, {}).get("status") == "Running":
                break
            await asyncio.sleep(0.05)
        assert (await client.delete(f"/system/logs/svc/{job}")).status_code == 204
        await asyncio.sleep(0.5)
        # Not resurrected by the finished report of the killed run.
        assert (await client.get("/system/logs/svc")).json()["jobs"] == {}

    async def test_deleting_the_service_deletes_jobs_but_keeps_files(self, client: httpx.AsyncClient) -> None:
        await service_with_jobs(client, count=2)
        # In the service's bucket but outside its input: no storage event, whichever the event source.
        assert (await client.put("/system/buckets/svc/objects/kept/keep.txt", content=b"data")).is_success
        assert (await client.delete("/system/services/svc")).status_code == 204
        assert (await client.get("/system/buckets/svc/objects/kept/keep.txt")).content == b"data"
        await client.post("/system/services", json={"name": "svc", "image": "img", "script": "true"})
        assert (await client.get("/system/logs/svc")).json()["jobs"] == {}


class TestBucketListings:
    """What upstream's bucket routes show: the folder markers a service's folders are, and owner and
    metadata as upstream tags a service's buckets (on local storage and on S3 alike)."""

    async def test_folder_markers_are_listed(self, client: httpx.AsyncClient) -> None:
        await create_io_service(client, "marks", "true\n")
        put = await client.put("/system/buckets/marks/objects/other/deep/file.txt", content=b"data")
        assert put.status_code == 201
        bucket = (await client.get("/system/buckets/marks")).json()
        # The folders made for the service are listed; one that only holds an upload is not (no marker).
        assert [(o["object_name"], o["size_bytes"]) for o in bucket["objects"]] == [
            ("in/", 0),
            ("other/deep/file.txt", 4),
            ("out/", 0),
        ]
        assert bucket["returned_items"] == 3

    async def test_owner_and_metadata_as_upstream_tags_them(self, client: httpx.AsyncClient) -> None:
        for name in ("first", "second"):  # both use the bucket "shared": the one created last wins
            body = {"name": name, "image": "img", "script": "true", "input": [{"path": f"shared/{name}"}]}
            assert (await client.post("/system/services", json=body)).status_code == 201
        assert (await client.post("/system/buckets", json={"bucket_name": "loose"})).status_code == 201
        listed = {b["bucket_name"]: b for b in (await client.get("/system/buckets")).json()}
        assert (listed["shared"]["owner"], listed["shared"]["metadata"]) == (
            "",
            {"from_service": "second", "owner_name": "oscar"},
        )
        assert (listed["loose"]["owner"], listed["loose"]["metadata"]) == ("", {})
        shared = (await client.get("/system/buckets/shared")).json()
        assert shared["owner"] == "cluster_admin"
        assert shared["metadata"] == {"owner": "", "from_service": "second", "owner_name": "oscar"}
        loose = (await client.get("/system/buckets/loose")).json()
        assert (loose["owner"], loose["metadata"]) == ("cluster_admin", {})
        assert (await client.delete("/system/services/second")).status_code == 204
        listed = {b["bucket_name"]: b for b in (await client.get("/system/buckets")).json()}
        assert listed["shared"]["metadata"]["from_service"] == "first"


class TestObjects:
    async def test_upload_list_download(self, client: httpx.AsyncClient) -> None:
        assert (await client.post("/system/buckets", json={"bucket_name": "data"})).status_code == 201
        up = await client.put("/system/buckets/data/objects/a dir/ü.bin", content=b"\x00\x01binary")
        assert up.status_code == 201
        assert up.json()["size"] == 8
        bucket = (await client.get("/system/buckets/data")).json()
        assert bucket["bucket_name"] == "data"
        assert [(o["object_name"], o["size_bytes"]) for o in bucket["objects"]] == [("a dir/ü.bin", 8)]
        down = await client.get("/system/buckets/data/objects/a dir/ü.bin")
        assert down.content == b"\x00\x01binary"
        assert "data" in [b["bucket_name"] for b in (await client.get("/system/buckets")).json()]

    # Percent-encoded dots reach the server as dot segments (clients normalise literal ones away).
    @pytest.mark.parametrize("key", ["%2E%2E/escape.txt", "a/%2E%2E/%2E%2E/b", "%2E/x", "a//b", "x/%2E%2E"])
    async def test_traversal_refused(self, client: httpx.AsyncClient, key: str, settings: Settings) -> None:
        await client.post("/system/buckets", json={"bucket_name": "data"})
        # The error's JSON form (asked for) names its kind.
        response = await client.put(
            f"/system/buckets/data/objects/{key}", content=b"x", headers={"Accept": "application/json"}
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "InvalidKey"
        escaped = [p for p in settings.oscar_data_dir.rglob("*escape*")] + list(
            settings.buckets_dir.glob("b")
        )
        assert escaped == []

    async def test_unknown_bucket_and_object(self, client: httpx.AsyncClient) -> None:
        assert (await client.get("/system/buckets/nothing")).status_code == 404
        assert (await client.put("/system/buckets/nothing/objects/x", content=b"x")).status_code == 404
        await client.post("/system/buckets", json={"bucket_name": "data"})
        assert (await client.get("/system/buckets/data/objects/missing")).status_code == 404

    async def test_invalid_bucket_name(self, client: httpx.AsyncClient) -> None:
        assert (await client.post("/system/buckets", json={"bucket_name": "Bad_Name"})).status_code == 400

    async def test_requires_admin(self, client: httpx.AsyncClient) -> None:
        assert (await client.get("/system/buckets", auth=NO_AUTH)).status_code == 401
        assert (
            await client.put("/system/buckets/x/objects/y", content=b"x", auth=NO_AUTH)
        ).status_code == 401


class TestPresign:
    @pytest.fixture
    async def client(self, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
        """The local store's own signed URLs (MinIO's presigned URLs are tested against MinIO)."""
        async with app_client(settings) as http:
            yield http

    async def presign(self, client: httpx.AsyncClient, **body: object) -> httpx.Response:
        return await client.post("/system/buckets/data/presign", json=body)

    async def test_upload_then_download_without_credentials(self, client: httpx.AsyncClient) -> None:
        await client.post("/system/buckets", json={"bucket_name": "data"})
        up = await self.presign(client, object_key="in/file one.txt", operation="upload", expires_in=60)
        assert up.status_code == 200
        assert up.json()["method"] == "PUT"
        target = urlsplit(up.json()["url"])
        put = await client.put(f"{target.path}?{target.query}", content=b"presigned!", auth=NO_AUTH)
        assert put.status_code == 201, put.text
        down = await self.presign(client, object_key="in/file one.txt", operation="download")
        assert down.json()["method"] == "GET"
        target = urlsplit(down.json()["url"])
        got = await client.get(f"{target.path}?{target.query}", auth=NO_AUTH)
        assert got.status_code == 200
        assert got.content == b"presigned!"

    async def test_signature_is_bound_to_key_and_operation(self, client: httpx.AsyncClient) -> None:
        await client.post("/system/buckets", json={"bucket_name": "data"})
        await client.put("/system/buckets/data/objects/secret.txt", content=b"s")
        await client.put("/system/buckets/data/objects/public.txt", content=b"p")
        url = urlsplit((await self.presign(client, object_key="public.txt")).json()["url"])
        assert (await client.get(f"{url.path}?{url.query}", auth=NO_AUTH)).status_code == 200
        other = url.path.replace("public.txt", "secret.txt")
        assert (await client.get(f"{other}?{url.query}", auth=NO_AUTH)).status_code == 403
        # A download signature does not allow an upload.
        assert (await client.put(f"{url.path}?{url.query}", content=b"x", auth=NO_AUTH)).status_code == 403
        tampered = url.query.replace("signature=", "signature=0")
        assert (await client.get(f"{url.path}?{tampered}", auth=NO_AUTH)).status_code == 403
        assert (await client.get(url.path, auth=NO_AUTH)).status_code == 403

    async def test_expired_url(self, client: httpx.AsyncClient) -> None:
        await client.post("/system/buckets", json={"bucket_name": "data"})
        await client.put("/system/buckets/data/objects/x.txt", content=b"x")
        url = urlsplit((await self.presign(client, object_key="x.txt", expires_in=1)).json()["url"])
        await asyncio.sleep(2.1)
        assert (await client.get(f"{url.path}?{url.query}", auth=NO_AUTH)).status_code == 403

    @pytest.mark.parametrize(
        ("body", "status"),
        [
            ({"object_key": "x.txt", "operation": "delete"}, 400),
            ({"object_key": "x.txt", "expires_in": 604801}, 400),
            ({"object_key": "../x.txt", "operation": "upload"}, 400),
            ({"object_key": "missing.txt"}, 404),
            ({"operation": "upload"}, 400),
        ],
    )
    async def test_bad_requests(
        self, client: httpx.AsyncClient, body: dict[str, object], status: int
    ) -> None:
        await client.post("/system/buckets", json={"bucket_name": "data"})
        await client.put("/system/buckets/data/objects/x.txt", content=b"x")
        assert (await self.presign(client, **body)).status_code == status

    @pytest.mark.parametrize("shared_key", [True, False], ids=["OSCAR_PRESIGN_KEY", "generated"])
    async def test_replicas_accept_each_others_urls_only_with_one_presign_key(
        self, sqlite_databases: SqliteDatabases, tmp_path: Path, shared_key: bool
    ) -> None:
        """Two managers, each with its own data directory (as replicas on Kubernetes): a URL one hands out
        is good at whichever the load balancer picks only if they sign with one key. (Each has its own
        database and local buckets here, holding the same bucket and key: what they share is the point.)"""
        given = {"oscar_presign_key": "5e" * 32} if shared_key else {}
        replicas = [
            make_settings(
                database_url=sqlite_databases.create(tmp_path / f"{name}.db", migrated=True),
                data_dir=tmp_path / name,
                **given,
            )
            for name in "ab"
        ]
        async with app_client(replicas[0]) as first, app_client(replicas[1]) as second:
            for client, content in ((first, b"on a"), (second, b"on b")):
                await client.post("/system/buckets", json={"bucket_name": "data"})
                await client.put("/system/buckets/data/objects/x.txt", content=content)
            download = urlsplit((await self.presign(first, object_key="x.txt")).json()["url"])
            upload = urlsplit(
                (await self.presign(first, object_key="y.txt", operation="upload")).json()["url"]
            )
            got = await second.get(f"{download.path}?{download.query}", auth=NO_AUTH)
            put = await second.put(f"{upload.path}?{upload.query}", content=b"y", auth=NO_AUTH)
        if shared_key:
            assert (got.status_code, got.content) == (200, b"on b")
            assert put.status_code == 201
        else:
            assert got.status_code == put.status_code == 403
            assert "signature does not match" in got.text
        # A given key is not written into the data directory; a generated one is kept there.
        assert all(settings.presign_key_file.exists() is not shared_key for settings in replicas)
