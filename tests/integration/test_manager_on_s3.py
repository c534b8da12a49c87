"""The manager with ``minio.default`` on a real S3 server: MinIO (listen API and all), and moto's server for
what any S3 offers. Objects are put and read with boto3, as a user's own S3 tool would."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import EndpointConnectionError

from oscar_manager.settings import Settings
from tests.support.app import NO_AUTH, app_client
from tests.support.components import free_port
from tests.support.databases import SqliteDatabases
from tests.support.factories import make_settings
from tests.support.jobs import all_jobs, settle, wait_for_jobs
from tests.support.minio import (
    MinioServer,
    WebhookReceiver,
    boto3_client,
    notify_webhook,
    start_minio,
    webhook_env,
)

WEBHOOK_TOKEN = "w" * 40
UPPERCASE = 'tr a-z A-Z < "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/$(basename "$INPUT_FILE_PATH")"\n'


@dataclass(frozen=True)
class S3Server:
    kind: str
    endpoint: str
    access_key: str
    secret_key: str

    def client(self) -> Any:
        return boto3_client(self.endpoint, self.access_key, self.secret_key)


@pytest.fixture(params=["minio", "moto"])
def s3_server(request: pytest.FixtureRequest) -> S3Server:
    if request.param == "minio":
        minio: MinioServer = request.getfixturevalue("minio_server")
        return S3Server("minio", minio.endpoint, minio.access_key, minio.secret_key)
    return S3Server("moto", request.getfixturevalue("moto_endpoint"), "testing", "testing")


@pytest.fixture
def minio(minio_server: MinioServer) -> S3Server:
    return S3Server("minio", minio_server.endpoint, minio_server.access_key, minio_server.secret_key)


def s3_settings(server: S3Server, tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    # moto has no ListenBucketNotification.
    options: dict[str, Any] = {"oscar_minio_listen": server.kind == "minio", **overrides}
    return make_settings(
        database_url=database_url,
        data_dir=tmp_path / "data",
        minio_endpoint=server.endpoint,
        minio_access_key=server.access_key,
        minio_secret_key=server.secret_key,
        **options,
    )


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_databases: SqliteDatabases) -> str:
    return sqlite_databases.create(tmp_path / "oscar.db", migrated=True)


@pytest.fixture
async def manager(s3_server: S3Server, tmp_path: Path, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(s3_settings(s3_server, tmp_path, database_url)) as http:
        yield http


@pytest.fixture
async def minio_manager(minio: S3Server, tmp_path: Path, sqlite_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(s3_settings(minio, tmp_path, sqlite_url)) as http:
        yield http


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def service(name: str, *, inputs: list[str], outputs: list[str], script: str = UPPERCASE) -> dict[str, Any]:
    return {
        "name": name,
        "image": "img",
        "script": script,
        "input": [{"path": path} for path in inputs],
        "output": [{"path": path} for path in outputs],
    }


def keys(s3: Any, bucket: str) -> list[str]:
    listed = s3.list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listed.get("Contents", []))


async def wait_for_object(s3: Any, bucket: str, key: str, within: float = 20) -> bytes:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            body: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            return body
        except s3.exceptions.NoSuchKey:
            await asyncio.sleep(0.05)
    raise AssertionError(f"{bucket}/{key} did not appear; the bucket holds {keys(s3, bucket)}")


# --- any S3 ----------------------------------------------------------------------------------------------


async def test_create_makes_buckets_and_folders_and_reuses_an_existing_bucket(
    manager: httpx.AsyncClient, s3_server: S3Server
) -> None:
    s3 = s3_server.client()
    name = unique("svc")
    existing = unique("existing")
    s3.create_bucket(Bucket=existing)
    s3.put_object(Bucket=existing, Key="kept.txt", Body=b"mine")

    body = service(name, inputs=[f"{existing}/in"], outputs=[f"{name}/out"])
    assert (await manager.post("/system/services", json=body)).status_code == 201

    assert keys(s3, existing) == ["in/", "kept.txt"]
    assert keys(s3, name) == ["out/"]
    config = (await manager.get("/system/config")).json()["minio_provider"]
    assert config == {
        "endpoint": s3_server.endpoint,
        "verify": True,
        "access_key": s3_server.access_key,
        "secret_key": s3_server.secret_key,
        "region": "us-east-1",
    }


async def test_deleting_a_service_keeps_its_data_and_purge_removes_it(
    manager: httpx.AsyncClient, s3_server: S3Server
) -> None:
    s3 = s3_server.client()
    keep, purge, shared = unique("keep"), unique("purge"), unique("shared")
    for name in (keep, purge):
        body = service(name, inputs=[f"{name}/in"], outputs=[f"{shared}/{name}"])
        assert (await manager.post("/system/services", json=body)).status_code == 201
        s3.put_object(Bucket=name, Key="in/data.txt", Body=b"x")
        s3.put_object(Bucket=shared, Key=f"{name}/result.txt", Body=b"y")

    assert (await manager.delete(f"/system/services/{keep}")).status_code == 204
    assert keys(s3, keep) == ["in/", "in/data.txt"]

    assert (await manager.delete(f"/system/services/{purge}", params={"purge": "true"})).status_code == 204
    buckets = {bucket["Name"] for bucket in s3.list_buckets()["Buckets"]}
    assert purge not in buckets  # its own bucket, now empty and unused, is gone
    assert keys(s3, shared) == [f"{keep}/", f"{keep}/result.txt"]  # the other service's output stays


async def test_bucket_api_lists_creates_presigns_and_deletes(
    manager: httpx.AsyncClient, s3_server: S3Server
) -> None:
    s3 = s3_server.client()
    bucket = unique("bkt")
    assert (await manager.post("/system/buckets", json={"bucket_name": bucket})).status_code == 201
    assert bucket in {item["bucket_name"] for item in (await manager.get("/system/buckets")).json()}

    upload = await manager.post(
        f"/system/buckets/{bucket}/presign", json={"object_key": "dir/a file.txt", "operation": "upload"}
    )
    assert upload.status_code == 200, upload.text
    signed = upload.json()
    assert signed["method"] == "PUT"
    assert signed["url"].startswith(s3_server.endpoint)  # the storage's own URL, not the manager's
    async with httpx.AsyncClient() as anonymous:
        assert (await anonymous.put(signed["url"], content=b"payload")).status_code == 200
        download = await manager.post(
            f"/system/buckets/{bucket}/presign",
            json={"object_key": "dir/a file.txt", "operation": "download"},
        )
        assert (await anonymous.get(download.json()["url"])).content == b"payload"

    listing = (await manager.get(f"/system/buckets/{bucket}")).json()
    assert [item["object_name"] for item in listing["objects"]] == ["dir/a file.txt"]

    assert (await manager.delete(f"/system/buckets/{bucket}")).status_code == 204
    assert bucket not in {item["Name"] for item in s3.list_buckets()["Buckets"]}
    assert (await manager.delete(f"/system/buckets/{bucket}")).status_code == 404


async def test_a_bucket_a_service_uses_is_not_deleted(
    manager: httpx.AsyncClient, s3_server: S3Server
) -> None:
    name = unique("used")
    body = service(name, inputs=[f"{name}/in"], outputs=[f"{name}/out"])
    assert (await manager.post("/system/services", json=body)).status_code == 201
    answer = await manager.delete(f"/system/buckets/{name}")
    assert answer.status_code == 409
    assert name in answer.text
    assert keys(s3_server.client(), name) == ["in/", "out/"]


async def test_uploads_while_the_manager_was_down_run_once_each_after_start(
    s3_server: S3Server, tmp_path: Path, sqlite_url: str
) -> None:
    s3 = s3_server.client()
    name = unique("offline")
    settings = s3_settings(s3_server, tmp_path, sqlite_url)
    async with app_client(settings) as http:
        body = service(name, inputs=[f"{name}/in"], outputs=[f"{name}/out"])
        assert (await http.post("/system/services", json=body)).status_code == 201
        assert (await http.put("/system/services", json=body)).status_code == 204
    for index in range(3):
        s3.put_object(Bucket=name, Key=f"in/file-{index}.txt", Body=f"text {index}".encode())

    for _start in range(2):  # a second start finds nothing new
        async with app_client(settings) as http:
            jobs = await wait_for_jobs(http, name, count=3)
            await settle()
            assert len(await all_jobs(http, name)) == 3
    assert {job["status"] for job in jobs.values()} == {"Succeeded"}
    assert await wait_for_object(s3, name, "out/file-2.txt") == b"TEXT 2"

    # Down again (more than a second after the first PUTs: moto's listings show whole seconds): file-0
    # uploaded again with the same content, twice (a listing sees the last upload only), and a new file.
    for _put in range(2):
        s3.put_object(Bucket=name, Key="in/file-0.txt", Body=b"text 0")
    s3.put_object(Bucket=name, Key="in/file-3.txt", Body=b"text 3")
    async with app_client(settings) as http:
        jobs = await wait_for_jobs(http, name, count=5)
        await settle()
        assert len(await all_jobs(http, name)) == 5


async def test_storage_unreachable_at_create_is_502_and_creates_nothing(
    tmp_path: Path, sqlite_url: str
) -> None:
    nowhere = S3Server("minio", f"http://127.0.0.1:{free_port()}", "k", "secret-key")
    async with app_client(s3_settings(nowhere, tmp_path, sqlite_url)) as http:
        body = service("stranded", inputs=["stranded/in"], outputs=["stranded/out"])
        answer = await http.post("/system/services", json=body)
        assert answer.status_code == 502
        assert "127.0.0.1" in answer.text
        assert (await http.get("/system/services")).json() == []
        assert (await http.get("/system/services/stranded")).status_code == 404


# --- MinIO: its listen API ------------------------------------------------------------------------------


async def test_an_upload_with_any_s3_client_runs_the_job_and_the_output_lands(
    minio_manager: httpx.AsyncClient, minio: S3Server
) -> None:
    s3 = minio.client()
    name = unique("upper")
    body = service(name, inputs=[f"{name}/in"], outputs=[f"{name}-out/result"])
    assert (await minio_manager.post("/system/services", json=body)).status_code == 201
    await _until_following(minio_manager, name)

    # Keys that MinIO's notifications encode: spaces, plus signs, percent signs, non-ASCII, sub-folders.
    key = "in/sub dir/a+b%2F ünï.txt"
    s3.put_object(Bucket=name, Key=key, Body=b"hello minio")
    s3.put_object(Bucket=name, Key="elsewhere.txt", Body=b"not an input")  # outside in/: no job

    jobs = await wait_for_jobs(minio_manager, name, count=1)
    assert [job["status"] for job in jobs.values()] == ["Succeeded"]
    assert await wait_for_object(s3, f"{name}-out", "result/a+b%2F ünï.txt") == b"HELLO MINIO"
    await settle()
    assert len(await all_jobs(minio_manager, name)) == 1


async def test_each_upload_is_one_job_from_listen_and_webhook_and_redelivery(
    minio_binary: Path, tmp_path: Path, sqlite_url: str
) -> None:
    """Both MinIO sources on: the listen stream, and the webhook record of the same PUT (relayed to
    ``/events/minio`` by the test, as the in-process app has no port for MinIO to post to; the records are
    MinIO's own). One job per PUT, however often it is reported; the same content put again is a new one."""
    receiver = WebhookReceiver()
    await receiver.start()
    server = await start_minio(minio_binary, webhook_env("OSCAR", receiver.url(), "t"))
    try:
        minio = S3Server("minio", server.endpoint, server.access_key, server.secret_key)
        s3 = minio.client()
        name = unique("twice")
        settings = s3_settings(minio, tmp_path, sqlite_url, oscar_minio_webhook_token=WEBHOOK_TOKEN)
        async with app_client(settings) as http:
            body = service(name, inputs=[f"{name}/in"], outputs=[f"{name}/out"])
            assert (await http.post("/system/services", json=body)).status_code == 201
            await _until_following(http, name)
            await asyncio.to_thread(notify_webhook, s3, name, "arn:minio:sqs::OSCAR:webhook")

            for count in (1, 2):
                # In a thread: MinIO answers the PUT once the receiver (on this loop) has the record.
                await asyncio.to_thread(s3.put_object, Bucket=name, Key="in/x.txt", Body=b"same")
                [*_, delivery] = await receiver.wait_for(name, count)
                for _delivery in range(2):  # MinIO redelivering it changes nothing
                    relayed = await http.post(
                        "/events/minio",
                        json=delivery.body,
                        headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"},
                        auth=NO_AUTH,
                    )
                    assert relayed.status_code == 200, relayed.text
                    assert relayed.json()["new"] + relayed.json()["duplicates"] == 1
                await wait_for_jobs(http, name, count=count)
                await settle()
                assert len(await all_jobs(http, name)) == count
            info = (await http.get("/system/info")).json()["storage"]["events"]
            assert info["new"] == 2
            assert info["duplicates"] == 4
    finally:
        await asyncio.to_thread(server.stop)
        await receiver.stop()


async def _until_following(http: httpx.AsyncClient, bucket: str, within: float = 10) -> None:
    """The listener picks up a new input bucket right after the create (/system/info tells)."""
    deadline = time.monotonic() + within
    while bucket not in (await http.get("/system/info")).json()["storage"]["listening"]:
        assert time.monotonic() < deadline, f"not listening to {bucket}"
        await asyncio.sleep(0.02)


async def _readiness_until(http: httpx.AsyncClient, check: Any, within: float = 60) -> dict[str, Any]:
    """The readiness answer once ``check`` holds for it (waited for: the listener notices a cut stream
    and reconnects on its own schedule)."""
    deadline = time.monotonic() + within
    while True:
        answer: dict[str, Any] = (await http.get("/health", params={"ready": "1"})).json()
        if check(answer):
            return answer
        assert time.monotonic() < deadline, answer
        await asyncio.sleep(0.1)


async def test_minio_down_while_events_flow_loses_nothing(
    minio_binary: Path, tmp_path: Path, sqlite_url: str
) -> None:
    """MinIO killed and started again while uploads happen, the manager running on. No periodic
    reconcile: only the listener (its streams, and the listing after each reconnect) finds objects, so
    the uploads after the restart run only if it subscribes again by itself."""
    server = await start_minio(minio_binary)
    try:
        minio = S3Server("minio", server.endpoint, server.access_key, server.secret_key)
        s3 = minio.client()
        name = unique("outage")
        settings = s3_settings(minio, tmp_path, sqlite_url, oscar_reconcile_interval=0)
        async with app_client(settings) as http:
            body = service(name, inputs=[f"{name}/in"], outputs=[f"{name}/out"])
            assert (await http.post("/system/services", json=body)).status_code == 201
            await _until_following(http, name)
            s3.put_object(Bucket=name, Key="in/before.txt", Body=b"before")
            await wait_for_jobs(http, name, count=1)

            # Right before the kill: its event may or may not have reached the listener.
            s3.put_object(Bucket=name, Key="in/just-before.txt", Body=b"just-before")
            await asyncio.to_thread(server.kill)
            with pytest.raises(EndpointConnectionError):
                s3.put_object(Bucket=name, Key="in/while-down.txt", Body=b"lost")
            # The intake does not need MinIO: a direct invocation is still recorded and answered.
            token = (await http.get(f"/system/services/{name}")).json()["token"]
            direct = await http.post(
                f"/job/{name}", content=b"aGk=", headers={"Authorization": f"Bearer {token}"}
            )
            assert direct.status_code == 201
            # Readiness shows the fault while it lasts: the store does not answer, the stream is down.
            down = await _readiness_until(http, lambda answer: not answer["event_sources"]["listen"]["ok"])
            assert down["ready"] is False
            assert down["storage"]["ok"] is False
            assert down["storage"]["reason"]
            assert name in down["event_sources"]["listen"]["reason"]
            assert name not in (await http.get("/system/info")).json()["storage"]["listening"]

            await asyncio.to_thread(server.revive)
            # Right after the restart, likely before the listener is back: found by the listing that
            # follows its reconnect.
            s3.put_object(Bucket=name, Key="in/after.txt", Body=b"after")
            await _until_following(http, name, within=60)
            await _readiness_until(http, lambda answer: answer["ready"])
            # Subscribed again: a new upload arrives through the stream.
            s3.put_object(Bucket=name, Key="in/resubscribed.txt", Body=b"resubscribed")
            uploads = ["after.txt", "before.txt", "just-before.txt", "resubscribed.txt"]
            for upload in uploads:
                expected = upload.removesuffix(".txt").upper().encode()
                assert await wait_for_object(s3, name, f"out/{upload}", within=60) == expected
            jobs = await wait_for_jobs(http, name, count=len(uploads) + 1, within=60)
            await settle()
            # Exactly one job per accepted upload (and the direct invocation); nothing for the refused.
            assert len(await all_jobs(http, name)) == len(uploads) + 1
            assert [job["status"] for job in jobs.values()].count("Succeeded") == len(uploads) + 1
            inputs = [key for key in keys(s3, name) if key.startswith("in/") and key != "in/"]
            assert inputs == [f"in/{upload}" for upload in uploads]
    finally:
        await asyncio.to_thread(server.stop)


async def test_a_services_own_s3_provider_receives_its_outputs(
    minio: S3Server, moto_endpoint: str, tmp_path: Path, sqlite_url: str
) -> None:
    """Input on the manager's MinIO, output on another S3 server named in the service's storage_providers
    (moto, on loopback: allowed explicitly, as service-declared endpoints may not reach loopback)."""
    settings = s3_settings(minio, tmp_path, sqlite_url, oscar_provider_allowed_networks="127.0.0.1")
    async with app_client(settings) as minio_manager:
        await _outputs_reach_the_services_own_provider(minio_manager, minio, moto_endpoint)


async def _outputs_reach_the_services_own_provider(
    minio_manager: httpx.AsyncClient, minio: S3Server, moto_endpoint: str
) -> None:
    name = unique("twostores")
    elsewhere = S3Server("moto", moto_endpoint, "testing", "testing").client()
    elsewhere.create_bucket(Bucket=name)
    body = service(name, inputs=[f"{name}/in"], outputs=[])
    body["output"] = [{"storage_provider": "minio.other", "path": f"{name}/results"}]
    body["storage_providers"] = {
        "minio": {
            "other": {
                "endpoint": moto_endpoint,
                "access_key": "testing",
                "secret_key": "testing",
                "region": "us-east-1",
                "verify": False,
            }
        }
    }
    assert (await minio_manager.post("/system/services", json=body)).status_code == 201
    await _until_following(minio_manager, name)
    minio.client().put_object(Bucket=name, Key="in/data.txt", Body=b"to moto")
    jobs = await wait_for_jobs(minio_manager, name, count=1)
    assert [job["status"] for job in jobs.values()] == ["Succeeded"]
    assert await wait_for_object(elsewhere, name, "results/data.txt") == b"TO MOTO"
    assert "results/" not in keys(minio.client(), name)  # nothing went to the manager's own storage


def webhook_rules(s3: Any, bucket: str) -> list[tuple[str, str]]:
    config = s3.get_bucket_notification_configuration(Bucket=bucket)
    rules = []
    for rule in config.get("QueueConfigurations", []):
        filters = rule.get("Filter", {}).get("Key", {}).get("FilterRules", [])
        prefix = next((item["Value"] for item in filters if item["Name"].lower() == "prefix"), "")
        rules.append((rule["QueueArn"], prefix))
    return sorted(rules)


async def test_webhook_rules_follow_the_services_and_keep_foreign_ones(
    minio_binary: Path, tmp_path: Path, sqlite_url: str
) -> None:
    target = "OSCAR"
    arn = f"arn:minio:sqs::{target}:webhook"
    foreign_arn = "arn:minio:sqs::OTHER:webhook"
    env = {
        **webhook_env(target, "http://127.0.0.1:9/unused", "t"),
        **webhook_env("OTHER", "http://127.0.0.1:9/unused", "t"),
    }
    server = await start_minio(minio_binary, env)
    try:
        minio = S3Server("minio", server.endpoint, server.access_key, server.secret_key)
        s3 = minio.client()
        bucket = unique("rules")
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_notification_configuration(
            Bucket=bucket,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {"Id": "someone-else", "QueueArn": foreign_arn, "Events": ["s3:ObjectCreated:*"]}
                ]
            },
        )
        settings = s3_settings(
            minio,
            tmp_path,
            sqlite_url,
            oscar_minio_listen=False,
            oscar_minio_webhook_url="http://127.0.0.1:9",
        )
        async with app_client(settings) as http:
            deadline = time.monotonic() + 20
            while (await http.get("/system/info")).json()["storage"]["event_sources"] != ["webhook"]:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            for name, folder in (("one", "in"), ("two", "in/deeper"), ("three", "other")):
                body = service(f"{bucket}-{name}", inputs=[f"{bucket}/{folder}"], outputs=[f"{bucket}/out"])
                assert (await http.post("/system/services", json=body)).status_code == 201
            # in/ covers in/deeper/: one rule for both.
            assert webhook_rules(s3, bucket) == sorted([(foreign_arn, ""), (arn, "in/"), (arn, "other/")])
            assert (await http.delete(f"/system/services/{bucket}-one")).status_code == 204
            assert webhook_rules(s3, bucket) == sorted(
                [(foreign_arn, ""), (arn, "in/deeper/"), (arn, "other/")]
            )
            for name in ("two", "three"):
                assert (await http.delete(f"/system/services/{bucket}-{name}")).status_code == 204
            assert webhook_rules(s3, bucket) == [(foreign_arn, "")]
    finally:
        await asyncio.to_thread(server.stop)
