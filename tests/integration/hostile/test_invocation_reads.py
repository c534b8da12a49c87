"""Issue 12 item 2: an invocation reads only what its caller may read.

A storage event sent to ``/run`` or ``/job`` names a bucket and a key, and whoever stages the job in
downloads that object for the script. With OIDC, user B (or B's service token) must not read user A's
private results by naming them in an event sent to B's own service: 403, nothing staged, nothing recorded.
Keys are checked at intake (400). Events under the service's own inputs keep working from every source
(the service token, ``/events/minio``, MinIO's listen); the admin may name any bucket in a sync run; and
the Kubernetes supervisor refuses an outside event by itself.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import httpx
import pytest
import yaml

from oscar_manager.backends import manifests
from oscar_manager.settings import Settings
from oscar_manager.storage.s3 import S3ObjectStore
from tests.support.app import app_client, bearer, create_io_service
from tests.support.factories import ADMIN_PASSWORD, stored_service
from tests.support.minio import MinioServer
from tests.support.oidc import FakeIssuer, egi_issuer, with_egi
from tests.support.supervisor import chunks, run_python, s3_definition

pytestmark = pytest.mark.asyncio

ADMIN = {"Authorization": "Basic " + base64.b64encode(f"oscar:{ADMIN_PASSWORD}".encode()).decode()}
WEBHOOK_TOKEN = "w" * 40
SECRET = b"alice's private result"
# The script copies its input to the output, so whatever was staged in lands in the output bucket.
COPY = 'cat "$INPUT_FILE_PATH"; cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/copy"\n'


def record(bucket: str, key: str, etag: str = "0123abcd") -> dict[str, Any]:
    """One record as MinIO posts it (key URL-encoded the way Go's url.QueryEscape does)."""
    return {
        "eventVersion": "2.0",
        "eventSource": "minio:s3",
        "eventName": "s3:ObjectCreated:Put",
        "eventTime": "2026-11-22T06:00:00.000Z",
        "userIdentity": {"principalId": "minio"},
        "s3": {
            "bucket": {"name": bucket},
            "object": {"key": quote_plus(key, safe=""), "size": len(SECRET), "eTag": etag},
        },
    }


def event(*records: dict[str, Any]) -> bytes:
    return json.dumps({"EventName": "s3:ObjectCreated:Put", "Records": list(records)}).encode()


async def jobs_of(api: httpx.AsyncClient, service: str) -> dict[str, Any]:
    response = await api.get(f"/system/logs/{service}", headers=ADMIN)
    assert response.status_code == 200, response.text
    jobs: dict[str, Any] = response.json()["jobs"]
    return jobs


async def finished_jobs(api: httpx.AsyncClient, service: str, count: int) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        jobs = await jobs_of(api, service)
        if len(jobs) >= count and all(job["status"] in ("Succeeded", "Failed") for job in jobs.values()):
            return jobs
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} finished job(s) of {service}")


async def objects(api: httpx.AsyncClient, bucket: str) -> list[str]:
    listing = await api.get(f"/system/buckets/{bucket}", headers=ADMIN)
    assert listing.status_code == 200, listing.text
    # Folder markers (``in/``, ``out/``) are no results.
    return [
        entry["object_name"] for entry in listing.json()["objects"] if not entry["object_name"].endswith("/")
    ]


# --- two OIDC users: alice's private results, bob's service -----------------------------------------


@pytest.fixture
def egi() -> Iterator[FakeIssuer]:
    with egi_issuer("alice", "bob") as issuer:
        yield issuer


@pytest.fixture
async def api(settings: Settings, egi: FakeIssuer) -> AsyncIterator[httpx.AsyncClient]:
    oidc = with_egi(settings)
    async with app_client(oidc, auth=False) as http:
        yield http


def as_user(egi: FakeIssuer, name: str) -> dict[str, str]:
    return bearer(egi.token(name))


async def create(api: httpx.AsyncClient, headers: dict[str, str], name: str, **fields: Any) -> str:
    return await create_io_service(api, name, COPY, headers=headers, **fields)


@pytest.fixture
async def bob_token(api: httpx.AsyncClient, egi: FakeIssuer) -> str:
    """alice's private service with a result in its output folder; bob's own service, and its token."""
    await create(api, as_user(egi, "alice"), "alice-svc")
    put = await api.put("/system/buckets/alice-svc/objects/out/result.txt", content=SECRET, headers=ADMIN)
    assert put.status_code == 201, put.text
    return await create(api, as_user(egi, "bob"), "bob-svc")


def callers(egi: FakeIssuer, token: str) -> dict[str, dict[str, str]]:
    return {"bob's OIDC token": as_user(egi, "bob"), "bob-svc's token": bearer(token)}


ALICES_RESULT = event(record("alice-svc", "out/result.txt"))


async def test_a_crafted_event_cannot_read_another_users_results_through_run(
    api: httpx.AsyncClient, egi: FakeIssuer, bob_token: str
) -> None:
    for who, headers in callers(egi, bob_token).items():
        response = await api.post("/run/bob-svc", content=ALICES_RESULT, headers=headers)
        assert response.status_code == 403, (who, response.text)
        assert "alice-svc/out/result.txt" in response.text
        assert SECRET.decode() not in response.text
    assert await objects(api, "bob-svc") == []  # nothing staged out either


async def test_a_crafted_event_cannot_read_another_users_results_through_a_job(
    api: httpx.AsyncClient, egi: FakeIssuer, bob_token: str
) -> None:
    for who, headers in callers(egi, bob_token).items():
        response = await api.post("/job/bob-svc", content=ALICES_RESULT, headers=headers)
        assert response.status_code == 403, (who, response.text)
        assert "x-oscar-job-ids" not in response.headers
    await asyncio.sleep(0.5)  # a job wrongly recorded would have run by now
    assert await jobs_of(api, "bob-svc") == {}
    assert await objects(api, "bob-svc") == []


async def test_every_record_of_a_body_must_pass(
    api: httpx.AsyncClient, egi: FakeIssuer, bob_token: str
) -> None:
    put = await api.put("/system/buckets/bob-svc/objects/in/own.txt", content=b"own", headers=ADMIN)
    assert put.status_code == 201
    await finished_jobs(api, "bob-svc", 1)  # the upload's own job
    mixed = event(record("bob-svc", "in/own.txt", etag="other"), record("alice-svc", "out/result.txt"))
    for path in ("/job/bob-svc", "/run/bob-svc"):
        response = await api.post(path, content=mixed, headers=bearer(bob_token))
        assert response.status_code == 403, (path, response.text)
    await asyncio.sleep(0.5)
    assert len(await jobs_of(api, "bob-svc")) == 1


@pytest.mark.parametrize(
    "key",
    [
        "in/../../alice-svc/out/result.txt",  # under the input prefix, climbing out of it
        "in/./x.txt",
        "in//x.txt",
        "in/x\x01.txt",
        "in/sub/../",  # a "folder marker" climbing out: nothing to read, at /run a bad key
    ],
)
async def test_bad_keys_are_400_at_intake(
    api: httpx.AsyncClient, egi: FakeIssuer, bob_token: str, key: str
) -> None:
    body = event(record("bob-svc", key))
    paths = ["/run/bob-svc"] if key.endswith("/") else ["/job/bob-svc", "/run/bob-svc"]
    for path in paths:
        response = await api.post(path, content=body, headers=bearer(bob_token))
        assert response.status_code == 400, (path, response.text)
        assert "key" in response.text
    await asyncio.sleep(0.3)
    assert await jobs_of(api, "bob-svc") == {}


async def test_folder_markers_posted_to_job_start_nothing(
    api: httpx.AsyncClient, egi: FakeIssuer, bob_token: str
) -> None:
    """As /events/minio ignores them: MinIO posting a folder marker gets a 201 it will not retry."""
    for key in ("in/sub/", "in/sub/../"):
        response = await api.post(
            "/job/bob-svc", content=event(record("bob-svc", key)), headers=bearer(bob_token)
        )
        assert response.status_code == 201, response.text
        assert response.headers["x-oscar-job-ids"] == ""
    await asyncio.sleep(0.3)
    assert await jobs_of(api, "bob-svc") == {}


async def test_events_under_the_services_own_input_still_run(
    api: httpx.AsyncClient, egi: FakeIssuer, bob_token: str
) -> None:
    # Outside the watched folders' reach: posted events only (the upload's own job is counted too).
    put = await api.put("/system/buckets/bob-svc/objects/in/mine+é.txt", content=b"mine", headers=ADMIN)
    etag = put.json()["etag"]
    await finished_jobs(api, "bob-svc", 1)
    own = event(record("bob-svc", "in/mine+é.txt", etag=etag))
    for headers in callers(egi, bob_token).values():
        run = await api.post("/run/bob-svc", content=own, headers=headers)
        assert run.status_code == 200, run.text
        assert run.text == "mine"  # a storage event's sync answer is the script's output
    job = await api.post("/job/bob-svc", content=event(record("bob-svc", "in/mine+é.txt")), headers=ADMIN)
    assert job.status_code == 201, job.text
    jobs = await finished_jobs(api, "bob-svc", 2)
    assert [j["status"] for j in jobs.values()] == ["Succeeded", "Succeeded"]


async def test_the_admin_may_name_another_bucket_in_a_sync_run(
    api: httpx.AsyncClient, egi: FakeIssuer, bob_token: str
) -> None:
    run = await api.post("/run/bob-svc", content=ALICES_RESULT, headers=ADMIN)
    assert run.status_code == 200, run.text
    assert run.text == SECRET.decode()
    # A job runs later and unattended: it reads only the service's inputs, whoever sent it.
    job = await api.post("/job/bob-svc", content=ALICES_RESULT, headers=ADMIN)
    assert job.status_code == 403


# --- MinIO itself: the webhook and listen deliver events for input buckets ----------------------------


async def test_minio_webhook_events_for_input_buckets_still_run(settings: Settings) -> None:
    hooked = settings.model_copy(update={"oscar_minio_webhook_token": WEBHOOK_TOKEN})
    async with app_client(hooked, auth=False) as api:
        token = await create(api, ADMIN, "hooked")
        put = await api.put("/system/buckets/hooked/objects/in/a.txt", content=b"hook", headers=ADMIN)
        await finished_jobs(api, "hooked", 1)
        body = event(record("hooked", "in/a.txt", etag="second-version"))
        # Upstream's way: MinIO posts to /job/{service} with the service's token ...
        assert (await api.post("/job/hooked", content=body, headers=bearer(token))).status_code == 201
        # ... and ours: /events/minio with the webhook token.
        again = event(record("hooked", "in/a.txt", etag="third-version"))
        webhook = await api.post("/events/minio", content=again, headers=bearer(WEBHOOK_TOKEN))
        assert webhook.status_code == 200, webhook.text
        jobs = await finished_jobs(api, "hooked", 3)
        assert {j["status"] for j in jobs.values()} == {"Succeeded"}
        assert put.status_code == 201


async def test_minio_listen_events_for_input_buckets_still_run(
    minio_server: MinioServer, minio_store: S3ObjectStore, tmp_path: Path, sqlite_databases: Any
) -> None:
    settings = Settings(
        oscar_database_url=sqlite_databases.create(tmp_path / "oscar.db", migrated=True),
        oscar_data_dir=tmp_path / "data",
        oscar_password=ADMIN_PASSWORD,
        minio_endpoint=minio_server.endpoint,
        minio_access_key=minio_server.access_key,
        minio_secret_key=minio_server.secret_key,
        oscar_minio_listen=True,
    )
    async with app_client(settings, auth=False) as api:
        await create(api, ADMIN, "listened")
        await minio_store.put_stream("listened", "in/b.txt", chunks(b"listen"))
        jobs = await finished_jobs(api, "listened", 1)
        assert [j["status"] for j in jobs.values()] == ["Succeeded"]
        out = await api.get("/system/buckets/listened/objects/out/copy", headers=ADMIN)
        assert out.content == b"listen"


# --- the Kubernetes supervisor refuses by itself --------------------------------------------------


async def test_the_kubernetes_supervisor_refuses_an_event_outside_the_inputs(
    moto_endpoint: str, s3_store: S3ObjectStore
) -> None:
    """The job's own supervisor (``python -m oscar_manager.supervisor``, what the pod runs) with a body that
    no manager checked: it refuses to download, even when the service sets the manager's flag itself."""
    for bucket in ("k8s-victim", "k8s-svc"):
        await s3_store.ensure_bucket(bucket)
    secret = await s3_store.put_stream("k8s-victim", "out/result.txt", chunks(SECRET))
    definition = s3_definition(moto_endpoint, "k8s-svc", access_key="testing", secret_key="testing")
    definition["environment"] = {"variables": {"OSCAR_READ_ANY_BUCKET": "true"}}
    env = {
        "FUNCTION_CONFIG": base64.b64encode(yaml.safe_dump(definition).encode()).decode(),
        "SCRIPT": base64.b64encode(COPY.encode()).decode(),
    }
    body = event(record(secret.bucket, secret.key))
    done = await asyncio.to_thread(run_python, body, env)
    assert done.returncode != 0
    assert b"Forbidden" in done.stderr, done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert await s3_store.list_objects("k8s-svc", "out/") == []
    # And the Job the manager builds sets the flag itself, after (over) the service's own variables.
    service = stored_service("k8s-svc", environment={"variables": {"OSCAR_READ_ANY_BUCKET": "true"}})
    job = manifests.job(
        service, job_id="j", event=body, cluster=manifests.ClusterConfig(manager_image="m", ttl_seconds=1)
    )
    env_list = job["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e["value"] for e in env_list if e["name"] == "OSCAR_READ_ANY_BUCKET"] == ["false"]
