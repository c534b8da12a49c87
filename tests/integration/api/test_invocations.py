"""/job and /run: auth, bad input, results, logs, dedup (SQLite and PostgreSQL; local and Kubernetes)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from oscar_manager.domain.events import ObjectEvent, notification
from oscar_manager.settings import Settings
from oscar_manager.storage.local import LocalObjectStore
from tests.support.app import NO_AUTH, app_client, bearer, create_io_service
from tests.support.jobs import settle, wait_for_jobs

pytestmark = pytest.mark.asyncio

UPPER = (
    '#!/bin/sh\necho "processing $(basename "$INPUT_FILE_PATH")"\n'
    'tr a-z A-Z < "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/$(basename "$INPUT_FILE_PATH")"\n'
)


async def make_service(
    client: httpx.AsyncClient, name: str = "upper", script: str = UPPER, **fields: Any
) -> str:
    return await create_io_service(client, name, script, **fields)


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


class TestJobAuth:
    async def test_no_credentials(self, client: httpx.AsyncClient) -> None:
        await make_service(client)
        response = await client.post("/job/upper", content=b64(b"x"), auth=NO_AUTH)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")

    async def test_wrong_token(self, client: httpx.AsyncClient) -> None:
        await make_service(client)
        for token in ("0" * 64, "short", ""):
            response = await client.post("/job/upper", content=b64(b"x"), headers=bearer(token), auth=NO_AUTH)
            assert response.status_code == 401

    async def test_token_of_another_service(self, client: httpx.AsyncClient) -> None:
        await make_service(client, "first")
        other = await make_service(client, "second")
        response = await client.post("/job/first", content=b64(b"x"), headers=bearer(other), auth=NO_AUTH)
        assert response.status_code == 401

    async def test_unknown_service(self, client: httpx.AsyncClient) -> None:
        # Only a caller with valid credentials learns that a service does not exist.
        response = await client.post("/job/ghost", content=b64(b"x"), headers=bearer("a" * 64), auth=NO_AUTH)
        assert response.status_code == 401
        assert (await client.post("/job/ghost", content=b64(b"x"))).status_code == 404

    async def test_wrong_basic_password(self, client: httpx.AsyncClient) -> None:
        await make_service(client)
        assert (await client.post("/job/upper", content=b64(b"x"), auth=("oscar", "nope"))).status_code == 401

    async def test_refused_calls_record_nothing(self, client: httpx.AsyncClient) -> None:
        await make_service(client)
        await client.post("/job/upper", content=b64(b"x"), headers=bearer("0" * 64), auth=NO_AUTH)
        await settle()
        assert (await client.get("/system/logs/upper")).json()["jobs"] == {}


class TestJobs:
    async def test_base64_body_runs_and_logs_survive(self, client: httpx.AsyncClient) -> None:
        token = await make_service(client)
        response = await client.post("/job/upper", content=b64(b"hello"), headers=bearer(token), auth=NO_AUTH)
        assert response.status_code == 201
        assert response.content == b""
        (job_id,) = response.headers["x-oscar-job-ids"].split(",")
        jobs = await wait_for_jobs(client, "upper", count=1)
        assert jobs[job_id]["status"] == "Succeeded"
        assert {"creation_time", "start_time", "finish_time"} <= set(jobs[job_id])
        log = await client.get(f"/system/logs/upper/{job_id}")
        assert log.status_code == 200
        assert log.headers["content-type"].startswith("text/plain")
        assert "processing event-file" in log.text
        # The output was uploaded to the output path.
        listing = (await client.get("/system/buckets/upper")).json()
        assert "out/event-file" in [o["object_name"] for o in listing["objects"]]
        content = await client.get("/system/buckets/upper/objects/out/event-file")
        assert content.content == b"HELLO"

    async def test_admin_basic_auth_may_start_jobs(self, client: httpx.AsyncClient) -> None:
        await make_service(client)
        assert (await client.post("/job/upper", content=b64(b"a"))).status_code == 201
        await wait_for_jobs(client, "upper", count=1)

    async def test_json_body_is_the_input_file(self, client: httpx.AsyncClient) -> None:
        token = await make_service(client, script='cat "$INPUT_FILE_PATH"\n')
        await client.post("/job/upper", json={"message": "hi"}, headers=bearer(token), auth=NO_AUTH)
        (job_id,) = await wait_for_jobs(client, "upper", count=1)
        assert '{"message": "hi"}' in (await client.get(f"/system/logs/upper/{job_id}")).text

    async def test_the_script_sees_the_variables_upstream_scripts_rely_on(
        self, client: httpx.AsyncClient
    ) -> None:
        """``oscar-clients.md``: the service's name and token (a script may call other services with it),
        its base path (empty: not exposed), the job's id, the event, and the service's own variables."""
        script = (
            'echo "name=$OSCAR_SERVICE_NAME token=$OSCAR_SERVICE_TOKEN base=[$OSCAR_SERVICE_BASE_PATH]"\n'
            'echo "job=$JOB_UUID event=$EVENT color=$COLOR"\n'
        )
        token = await make_service(client, script=script, environment={"variables": {"COLOR": "teal"}})
        response = await client.post("/job/upper", content=b64(b"hi"), headers=bearer(token), auth=NO_AUTH)
        job_id = response.headers["X-Oscar-Job-Ids"]
        await wait_for_jobs(client, "upper", count=1)
        log = (await client.get(f"/system/logs/upper/{job_id}")).text
        assert f"name=upper token={token} base=[]\n" in log
        assert f"job={job_id} event={b64(b'hi').decode()} color=teal\n" in log

    async def test_not_base64_is_400_and_records_nothing(self, client: httpx.AsyncClient) -> None:
        token = await make_service(client)
        response = await client.post(
            "/job/upper", content=b"not base64 !!", headers=bearer(token), auth=NO_AUTH
        )
        assert response.status_code == 400
        assert "base64" in response.text
        await settle()
        assert (await client.get("/system/logs/upper")).json()["jobs"] == {}

    @pytest.mark.parametrize(
        "body",
        [
            {"Records": "x"},
            {"Records": [{"eventSource": "minio:s3", "s3": "x"}]},
            {"Records": [{"eventSource": "minio:s3", "s3": {"bucket": {}, "object": {"key": "k"}}}]},
        ],
    )
    async def test_malformed_notifications(self, client: httpx.AsyncClient, body: dict[str, Any]) -> None:
        token = await make_service(client)
        response = await client.post("/job/upper", json=body, headers=bearer(token), auth=NO_AUTH)
        assert response.status_code == 400
        await settle(0.2)
        assert (await client.get("/system/logs/upper")).json()["jobs"] == {}

    async def test_failing_script(self, client: httpx.AsyncClient) -> None:
        token = await make_service(client, script="echo about to fail\nexit 3\n")
        await client.post("/job/upper", content=b64(b"x"), headers=bearer(token), auth=NO_AUTH)
        jobs = await wait_for_jobs(client, "upper", count=1)
        ((job_id, job),) = jobs.items()
        assert job["status"] == "Failed"
        log = (await client.get(f"/system/logs/upper/{job_id}")).text
        assert "about to fail" in log
        assert "exited with code 3" in log
        # A failed run uploads nothing.
        listed = (await client.get("/system/buckets/upper")).json()["objects"]
        assert [o["object_name"] for o in listed if not o["object_name"].endswith("/")] == []


@pytest.fixture
async def quick_client(backend_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    # Long enough for a pod's supervisor executable to unpack and start the script (about a second).
    fast = backend_settings.model_copy(update={"oscar_job_timeout": 3.0, "oscar_run_timeout": 3.0})
    async with app_client(fast) as http:
        yield http


async def test_hanging_job_is_killed_and_failed(quick_client: httpx.AsyncClient) -> None:
    token = await make_service(quick_client, script="echo started\nsleep 60\n")
    await quick_client.post("/job/upper", content=b64(b"x"), headers=bearer(token), auth=NO_AUTH)
    ((job_id, job),) = (await wait_for_jobs(quick_client, "upper", count=1)).items()
    assert job["status"] == "Failed"
    log = (await quick_client.get(f"/system/logs/upper/{job_id}")).text
    assert "started" in log
    assert "timeout" in log


async def test_hanging_run_is_504(quick_client: httpx.AsyncClient) -> None:
    token = await make_service(quick_client, script="sleep 60\n")
    response = await quick_client.post("/run/upper", content=b64(b"x"), headers=bearer(token), auth=NO_AUTH)
    assert response.status_code == 504


class TestStorageEvents:
    @pytest.fixture
    async def client(self, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
        """Uploads through the local store's watcher (the MinIO sources are tested against MinIO)."""
        async with app_client(settings) as http:
            yield http

    @pytest.fixture
    def store(self, settings: Settings) -> LocalObjectStore:
        """The manager's buckets, read directly: what the watcher sees of an upload."""
        return LocalObjectStore(settings.buckets_dir)

    async def put(self, client: httpx.AsyncClient, bucket: str, key: str, data: bytes) -> dict[str, Any]:
        response = await client.put(f"/system/buckets/{bucket}/objects/{key}", content=data)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    def event_for(self, info: dict[str, Any], *, generation: str = "") -> dict[str, Any]:
        return notification(
            ObjectEvent(
                bucket=info["bucket"],
                key=info["key"],
                etag=info["etag"],
                size=info["size"],
                event_time="t",
                generation=generation,
            )
        )

    async def test_upload_triggers_a_job_and_the_output_appears(self, client: httpx.AsyncClient) -> None:
        await make_service(client)
        await self.put(client, "upper", "in/report one+été.txt", b"some text")
        jobs = await wait_for_jobs(client, "upper", count=1)
        assert [job["status"] for job in jobs.values()] == ["Succeeded"]
        output = await client.get("/system/buckets/upper/objects/out/report one+été.txt")
        assert output.status_code == 200
        assert output.content == b"SOME TEXT"

    async def test_redelivered_event_runs_once(
        self, client: httpx.AsyncClient, store: LocalObjectStore
    ) -> None:
        token = await make_service(client, script='cat "$INPUT_FILE_PATH"\n')
        # Under the input folder (an event may name no other object): the watcher's own event for the
        # upload and the posted ones are the same event.
        stat = await self.put(client, "upper", "in/y.txt", b"payload")
        stored = await store.stat("upper", "in/y.txt")
        assert stored is not None
        event = self.event_for(stat, generation=stored.generation)
        ids = set()
        for _ in range(3):
            response = await client.post("/job/upper", json=event, headers=bearer(token), auth=NO_AUTH)
            assert response.status_code == 201
            ids.add(response.headers["x-oscar-job-ids"])
        assert len(ids) == 1
        jobs = await wait_for_jobs(client, "upper", count=1)
        await settle()
        assert list((await client.get("/system/logs/upper")).json()["jobs"]) == list(jobs) == list(ids)
        assert "payload" in (await client.get(f"/system/logs/upper/{ids.pop()}")).text

    async def test_idempotency_key_dedups_plain_invocations(self, client: httpx.AsyncClient) -> None:
        token = await make_service(client)
        headers = {**bearer(token), "Idempotency-Key": "upload-42"}
        first = await client.post("/job/upper", content=b64(b"a"), headers=headers, auth=NO_AUTH)
        again = await client.post("/job/upper", content=b64(b"a"), headers=headers, auth=NO_AUTH)
        other = await client.post("/job/upper", content=b64(b"a"), headers=bearer(token), auth=NO_AUTH)
        assert first.headers["x-oscar-job-ids"] == again.headers["x-oscar-job-ids"]
        assert other.headers["x-oscar-job-ids"] != first.headers["x-oscar-job-ids"]
        await wait_for_jobs(client, "upper", count=2)
        await settle()
        assert len((await client.get("/system/logs/upper")).json()["jobs"]) == 2

    async def test_the_same_content_uploaded_again_is_a_new_job(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        """Each upload runs once, whatever it holds: a user who fixed the script uploads the input again.
        So does the same content written into the folder by another program."""
        await make_service(client)
        for count in (1, 2):
            await self.put(client, "upper", "in/again.txt", b"same")
            await wait_for_jobs(client, "upper", count=count)
        (settings.buckets_dir / "upper" / "in" / "again.txt").write_bytes(b"same")
        jobs = await wait_for_jobs(client, "upper", count=3)
        await settle()
        assert len((await client.get("/system/logs/upper")).json()["jobs"]) == 3
        assert {job["status"] for job in jobs.values()} == {"Succeeded"}

    async def test_changed_object_is_a_new_event(self, client: httpx.AsyncClient) -> None:
        await make_service(client)
        await self.put(client, "upper", "in/a.txt", b"one")
        await wait_for_jobs(client, "upper", count=1)
        await self.put(client, "upper", "in/a.txt", b"two")
        await wait_for_jobs(client, "upper", count=2)
        assert (await client.get("/system/buckets/upper/objects/out/a.txt")).content == b"TWO"

    async def test_zero_byte_file(self, client: httpx.AsyncClient) -> None:
        await make_service(client, script='wc -c < "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/size"\n')
        await self.put(client, "upper", "in/empty", b"")
        jobs = await wait_for_jobs(client, "upper", count=1)
        assert [job["status"] for job in jobs.values()] == ["Succeeded"]
        assert (await client.get("/system/buckets/upper/objects/out/size")).content.strip() == b"0"

    async def test_large_file_streams_through(self, client: httpx.AsyncClient) -> None:
        await make_service(client, script='wc -c < "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/size"\n')
        size = 40 * 1024 * 1024

        async def chunks() -> AsyncIterator[bytes]:
            block = b"z" * (1024 * 1024)
            for _ in range(size // len(block)):
                yield block

        response = await client.put("/system/buckets/upper/objects/in/big.bin", content=chunks())
        assert response.status_code == 201
        assert response.json()["size"] == size
        await wait_for_jobs(client, "upper", count=1)
        assert (await client.get("/system/buckets/upper/objects/out/size")).content.strip() == str(
            size
        ).encode()

    async def test_event_for_unknown_object_fails_the_job_clearly(self, client: httpx.AsyncClient) -> None:
        token = await make_service(client)
        event = self.event_for({"bucket": "upper", "key": "in/missing.txt", "etag": "e", "size": 1})
        assert (
            await client.post("/job/upper", json=event, headers=bearer(token), auth=NO_AUTH)
        ).status_code == 201
        ((job_id, job),) = (await wait_for_jobs(client, "upper", count=1)).items()
        assert job["status"] == "Failed"
        assert "not found" in (await client.get(f"/system/logs/upper/{job_id}")).text.lower()

    async def test_files_outside_input_folders_run_nothing(self, client: httpx.AsyncClient) -> None:
        await make_service(client)
        await self.put(client, "upper", "other/x.txt", b"x")
        await self.put(client, "upper", "input-not/x.txt", b"x")
        await settle()
        assert (await client.get("/system/logs/upper")).json()["jobs"] == {}


class TestRun:
    async def test_single_output_is_base64(self, client: httpx.AsyncClient) -> None:
        token = await make_service(client)
        response = await client.post(
            "/run/upper", content=b64(b"hello oscar"), headers=bearer(token), auth=NO_AUTH
        )
        assert response.status_code == 200
        assert base64.b64decode(response.content) == b"HELLO OSCAR"

    async def test_no_output_file_returns_script_output(self, client: httpx.AsyncClient) -> None:
        token = await make_service(client, script='echo "got $(cat "$INPUT_FILE_PATH")"\n')
        response = await client.post("/run/upper", content=b64(b"abc"), headers=bearer(token), auth=NO_AUTH)
        assert response.text == "got abc\n"

    async def test_json_body(self, client: httpx.AsyncClient) -> None:
        token = await make_service(client, script='cat "$INPUT_FILE_PATH"\n')
        response = await client.post(
            "/run/upper", json={"message": "hi"}, headers=bearer(token), auth=NO_AUTH
        )
        assert json.loads(response.text) == {"message": "hi"}

    async def test_base64_with_line_breaks(self, client: httpx.AsyncClient) -> None:
        token = await make_service(client, script='cat "$INPUT_FILE_PATH"\n')
        wrapped = base64.encodebytes(b"x" * 200)  # 76-column lines, like the base64 tool
        response = await client.post("/run/upper", content=wrapped, headers=bearer(token), auth=NO_AUTH)
        assert response.text == "x" * 200

    async def test_not_base64_is_400(self, client: httpx.AsyncClient) -> None:
        token = await make_service(client)
        response = await client.post(
            "/run/upper", content=b"%%% not base64", headers=bearer(token), auth=NO_AUTH
        )
        assert response.status_code == 400

    async def test_failing_script_is_500_with_output(self, client: httpx.AsyncClient) -> None:
        token = await make_service(client, script="echo broken >&2\nexit 2\n")
        response = await client.post("/run/upper", content=b64(b"x"), headers=bearer(token), auth=NO_AUTH)
        assert response.status_code == 500
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert "broken" in response.text
        assert "code 2" in response.text

    async def test_auth(self, client: httpx.AsyncClient) -> None:
        await make_service(client)
        assert (await client.post("/run/upper", content=b64(b"x"), auth=NO_AUTH)).status_code == 401
        wrong = await client.post("/run/upper", content=b64(b"x"), headers=bearer("f" * 64), auth=NO_AUTH)
        assert wrong.status_code == 401
        missing = await client.post("/run/ghost", content=b64(b"x"), headers=bearer("f" * 64), auth=NO_AUTH)
        assert missing.status_code == 401
        assert (await client.post("/run/ghost", content=b64(b"x"))).status_code == 404
        assert (await client.post("/run/upper", content=b64(b"x"))).status_code == 200

    async def test_sandbox_has_no_manager_secrets(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        token = await make_service(client, script="env; ls -la /proc/1/root 2>&1 | head -3; echo end\n")
        response = await client.post("/run/upper", content=b64(b"x"), headers=bearer(token), auth=NO_AUTH)
        assert response.status_code == 200
        assert settings.oscar_password not in response.text
        assert "OSCAR_PASSWORD" not in response.text


async def test_the_local_backend_keeps_an_interlink_node_and_runs_the_job_itself(settings: Settings) -> None:
    """``interlink_node_name`` is for Kubernetes (``backends.interlink``): stored and shown, ignored here."""
    async with app_client(settings) as client:
        token = await make_service(client, interlink_node_name="vega-new-vk")
        assert (await client.get("/system/services/upper")).json()["interlink_node_name"] == "vega-new-vk"
        await client.post("/job/upper", content=b64(b"hi"), headers=bearer(token), auth=NO_AUTH)
        jobs = await wait_for_jobs(client, "upper", count=1)
        assert [job["status"] for job in jobs.values()] == ["Succeeded"]
