"""A user's uploads start jobs that are theirs (issue 16), against real MinIO and the fake OIDC issuer.

A restricted service of Alice's allows Bob; Carol is an outsider. Bob uploads with his own keys from
``/system/config``; MinIO's record of the upload names his access key, so the job is recorded as his: he
lists it, reads its log and may delete it, and no job of anyone else's; Alice sees them all; Carol sees
none. By the listen stream and by the webhook (MinIO's own records, relayed to ``/events/minio`` by the
test: the in-process app has no port for MinIO to post to).

Bob may write into the service's bucket because the restricted service's bucket lets its allowed users,
in MinIO itself (``operations.bucket_access``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from oscar_manager.registry import Database
from oscar_manager.settings import Settings
from tests.support.app import NO_AUTH, app_client, bearer, create_io_service
from tests.support.factories import ADMIN_PASSWORD
from tests.support.minio import (
    MinioServer,
    WebhookReceiver,
    boto3_client,
    notify_webhook,
    start_minio,
    webhook_env,
)
from tests.support.oidc import FakeIssuer, egi_issuer
from tests.support.storage_users import minio_admin, new_user, oidc_on

pytestmark = pytest.mark.asyncio

ADMIN = {"Authorization": "Basic " + base64.b64encode(f"oscar:{ADMIN_PASSWORD}".encode()).decode()}
WEBHOOK_TOKEN = "w" * 40
SCRIPT = 'echo "processing $(basename "$INPUT_FILE_PATH")"\n'
FINISHED = ("Succeeded", "Failed")


@pytest.fixture
def egi() -> Iterator[FakeIssuer]:
    with egi_issuer() as issuer:
        yield issuer


class User:
    def __init__(self, egi: FakeIssuer, name: str) -> None:
        self.uid, self.headers = new_user(egi, name)


class Scene:
    """Alice's restricted service allowing Bob, Carol outside, and Bob's own S3 client."""

    def __init__(self, http: httpx.AsyncClient, minio: MinioServer, egi: FakeIssuer) -> None:
        self.http = http
        self.minio = minio
        self.alice, self.bob, self.carol = User(egi, "alice"), User(egi, "bob"), User(egi, "carol")
        self.name = f"owned-{uuid.uuid4().hex[:8]}"
        self.token = ""
        self.bob_key = ""
        self.bob_s3: Any = None

    async def set_up(self) -> None:
        self.token = await create_io_service(
            self.http,
            self.name,
            SCRIPT,
            headers=self.alice.headers,
            visibility="restricted",
            allowed_users=[self.bob.uid],
        )
        answer = await self.http.get("/system/config", headers=self.bob.headers)
        assert answer.status_code == 200, answer.text
        keys = answer.json()["minio_provider"]
        self.bob_key = keys["access_key"]
        # Bob may write there: the restricted service's bucket lets its allowed users, in MinIO itself.
        self.bob_s3 = boto3_client(self.minio.endpoint, keys["access_key"], keys["secret_key"])

    async def bob_uploads(self, key: str) -> None:
        # In a thread: with synchronous events MinIO answers once the webhook (on this loop) has the record.
        await asyncio.to_thread(self.bob_s3.put_object, Bucket=self.name, Key=key, Body=b"bob's")

    async def root_uploads(self, key: str) -> None:
        root = boto3_client(self.minio.endpoint, self.minio.access_key, self.minio.secret_key)
        await asyncio.to_thread(root.put_object, Bucket=self.name, Key=key, Body=b"the root's")

    async def jobs(self, user: User) -> dict[str, dict[str, Any]]:
        answer = await self.http.get(f"/system/logs/{self.name}", headers=user.headers)
        assert answer.status_code == 200, answer.text
        jobs: dict[str, dict[str, Any]] = answer.json()["jobs"]
        return jobs

    async def until_finished(self, user: User, count: int, within: float = 30) -> set[str]:
        deadline = time.monotonic() + within
        while True:
            jobs = await self.jobs(user)
            if len(jobs) >= count and all(job["status"] in FINISHED for job in jobs.values()):
                return set(jobs)
            assert time.monotonic() < deadline, f"{count} finished job(s) expected, {jobs}"
            await asyncio.sleep(0.05)

    async def owners(self, settings: Settings) -> dict[str, str | None]:
        """job id -> owner, as the registry records them."""
        database = Database(settings.database_url)
        try:
            async with database.reading() as tx:
                page = await tx.jobs.page(self.name, limit=100, after=None)
        finally:
            await database.dispose()
        return {job.id: job.owner for job in page}

    async def check_who_sees_what(self, bobs: str, others: set[str]) -> None:
        """Bob: his job only (list, log, delete); Alice: all; Carol: not the service at all."""
        http, name = self.http, self.name
        assert set(await self.jobs(self.bob)) == {bobs}
        assert set(await self.jobs(self.alice)) == {bobs, *others}
        assert (await http.get(f"/system/logs/{name}", headers=self.carol.headers)).status_code == 403
        assert (await http.get(f"/system/logs/{name}/{bobs}", headers=self.carol.headers)).status_code == 403
        log = await http.get(f"/system/logs/{name}/{bobs}", headers=self.bob.headers)
        assert log.status_code == 200, log.text
        assert "processing bobs" in log.text
        for other in others:
            assert (
                await http.get(f"/system/logs/{name}/{other}", headers=self.bob.headers)
            ).status_code == 404
            assert (
                await http.delete(f"/system/logs/{name}/{other}", headers=self.bob.headers)
            ).status_code == 404
        assert (await http.delete(f"/system/logs/{name}/{bobs}", headers=self.bob.headers)).status_code == 204
        assert await self.jobs(self.bob) == {}
        assert set(await self.jobs(self.alice)) == others


async def _until_following(http: httpx.AsyncClient, bucket: str, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while bucket not in (await http.get("/system/info", headers=ADMIN)).json()["storage"]["listening"]:
        assert time.monotonic() < deadline, f"not listening to {bucket}"
        await asyncio.sleep(0.02)


async def test_by_the_listen_stream_an_allowed_users_upload_is_their_job(
    settings: Settings, minio_server: MinioServer, egi: FakeIssuer
) -> None:
    configured = oidc_on(settings, minio_server, oscar_minio_listen=True)
    async with app_client(configured, auth=False) as http:
        scene = Scene(http, minio_server, egi)
        await scene.set_up()
        await _until_following(http, scene.name)
        await scene.bob_uploads("in/bobs.txt")
        await scene.root_uploads("in/roots.txt")
        everyone = await scene.until_finished(scene.alice, 2)
        owners = await scene.owners(configured)
        assert sorted(owners.values(), key=lambda owner: owner or "") == [None, scene.bob.uid]
        [bobs] = [job for job, owner in owners.items() if owner == scene.bob.uid]
        await scene.check_who_sees_what(bobs, everyone - {bobs})


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    receiving = WebhookReceiver()
    await receiving.start()
    try:
        yield receiving
    finally:
        await receiving.stop()


@pytest.fixture
async def hooked_minio(minio_binary: Path, receiver: WebhookReceiver) -> AsyncIterator[MinioServer]:
    """A MinIO of this test's own, posting its records to ``receiver`` (target ``OSCAR``)."""
    server = await start_minio(minio_binary, webhook_env("OSCAR", receiver.url(), "t"))
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def relay(http: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, int]:
    answer = await http.post(
        "/events/minio", json=body, headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"}, auth=NO_AUTH
    )
    assert answer.status_code == 200, answer.text
    counts: dict[str, int] = answer.json()
    return counts


async def test_by_the_webhook_an_allowed_users_upload_is_their_job(
    settings: Settings, hooked_minio: MinioServer, receiver: WebhookReceiver, egi: FakeIssuer
) -> None:
    configured = oidc_on(settings, hooked_minio, oscar_minio_webhook_token=WEBHOOK_TOKEN)
    async with app_client(configured, auth=False) as http:
        scene = Scene(http, hooked_minio, egi)
        await scene.set_up()
        s3 = boto3_client(hooked_minio.endpoint, hooked_minio.access_key, hooked_minio.secret_key)
        await asyncio.to_thread(notify_webhook, s3, scene.name, "arn:minio:sqs::OSCAR:webhook")
        await scene.bob_uploads("in/bobs.txt")
        await scene.root_uploads("in/roots.txt")
        deliveries = await receiver.wait_for(scene.name, 2)
        # MinIO itself names who wrote each object.
        assert [d.record["userIdentity"]["principalId"] for d in deliveries] == [
            scene.bob_key,
            hooked_minio.access_key,
        ]
        for delivery in deliveries:
            assert await relay(http, delivery.body) == {"new": 1, "duplicates": 0, "ignored": 0}
        everyone = await scene.until_finished(scene.alice, 2)
        # MinIO configured as upstream's posts its record to /job with the service's token: the same upload,
        # the same job, the same owner.
        again = await http.post(
            f"/job/{scene.name}", json=deliveries[0].body, headers=bearer(scene.token), auth=NO_AUTH
        )
        assert again.status_code == 201, again.text
        owners = await scene.owners(configured)
        assert again.headers["X-Oscar-Job-Ids"] in owners
        assert owners[again.headers["X-Oscar-Job-Ids"]] == scene.bob.uid
        assert sorted(owners.values(), key=lambda owner: owner or "") == [None, scene.bob.uid]
        [bobs] = [job for job, owner in owners.items() if owner == scene.bob.uid]
        await scene.check_who_sees_what(bobs, everyone - {bobs})


async def test_an_upload_a_listing_found_first_becomes_the_uploaders_when_the_webhook_tells(
    settings: Settings, hooked_minio: MinioServer, receiver: WebhookReceiver, egi: FakeIssuer
) -> None:
    """The reconcile scan cannot tell who uploaded: its job has no owner until MinIO's record of the same
    upload arrives, which then makes it Bob's (still one job)."""
    configured = oidc_on(
        settings, hooked_minio, oscar_minio_webhook_token=WEBHOOK_TOKEN, oscar_reconcile_interval=0.2
    )
    async with app_client(configured, auth=False) as http:
        scene = Scene(http, hooked_minio, egi)
        await scene.set_up()
        s3 = boto3_client(hooked_minio.endpoint, hooked_minio.access_key, hooked_minio.secret_key)
        await asyncio.to_thread(notify_webhook, s3, scene.name, "arn:minio:sqs::OSCAR:webhook")
        await scene.bob_uploads("in/bobs.txt")
        [delivery] = await receiver.wait_for(scene.name, 1)
        [found] = await scene.until_finished(scene.alice, 1)
        assert await scene.jobs(scene.bob) == {}
        assert await relay(http, delivery.body) == {"new": 0, "duplicates": 1, "ignored": 0}
        assert set(await scene.jobs(scene.bob)) == {found}
        assert await scene.owners(configured) == {found: scene.bob.uid}


async def test_a_users_first_request_by_job_or_run_makes_their_minio_user(
    settings: Settings, minio_server: MinioServer, egi: FakeIssuer
) -> None:
    """``/job`` and ``/run`` authenticate by themselves (they take the service's token too): a user's own
    token there is still their first request, and makes their MinIO user."""
    dave, erin = User(egi, "dave"), User(egi, "erin")
    async with app_client(oidc_on(settings, minio_server), auth=False) as http:
        name = f"open-{uuid.uuid4().hex[:8]}"
        token = await create_io_service(http, name, SCRIPT, headers=ADMIN, visibility="public")
        by_token = await http.post(f"/job/{name}", content=b"aGk=", headers=bearer(token), auth=NO_AUTH)
        assert by_token.status_code == 201, by_token.text
        async with minio_admin(minio_server) as admin:
            for user in (dave, erin):
                with pytest.raises(Exception, match="XMinioAdminNoSuchUser"):
                    await admin.user_info(user.uid)
            job = await http.post(f"/job/{name}", content=b"aGk=", headers=dave.headers, auth=NO_AUTH)
            assert job.status_code == 201, job.text
            run = await http.post(f"/run/{name}", content=b"aGk=", headers=erin.headers, auth=NO_AUTH)
            assert run.status_code == 200, run.text
            for user in (dave, erin):
                info = json.loads(await admin.user_info(user.uid))
                assert "all_users_group" in info["memberOf"]
