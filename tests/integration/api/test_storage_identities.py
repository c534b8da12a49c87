"""OIDC users' own MinIO identities (issue 16, first part), against the real MinIO of the tests and the fake
issuer: each user's keys from ``/system/config`` are proved with an S3 client of their own on MinIO."""

from __future__ import annotations

import asyncio
import base64
import json
import stat
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from miniopy_async.minioadmin import MinioAdmin

from oscar_manager.domain.identities import StorageIdentity
from oscar_manager.registry import Database
from oscar_manager.settings import Settings
from tests.support.app import app_client
from tests.support.factories import ADMIN_PASSWORD
from tests.support.minio import MinioServer, boto3_client, start_minio
from tests.support.oidc import FakeIssuer, egi_issuer
from tests.support.storage_users import (
    keys_work,
    minio_admin,
    new_user,
    oidc_on,
    provider,
    s3_as,
    s3_error,
)

pytestmark = pytest.mark.asyncio

ADMIN = {"Authorization": "Basic " + base64.b64encode(f"oscar:{ADMIN_PASSWORD}".encode()).decode()}


async def recorded(settings: Settings, subject: str) -> StorageIdentity | None:
    """What the registry holds of ``subject``'s MinIO identity, read as another process would."""
    database = Database(settings.database_url)
    try:
        async with database.reading() as tx:
            return await tx.identities.get(subject)
    finally:
        await database.dispose()


@pytest.fixture
def egi() -> Iterator[FakeIssuer]:
    with egi_issuer() as issuer:
        yield issuer


@pytest.fixture
async def admin_api(minio_server: MinioServer) -> AsyncIterator[MinioAdmin]:
    async with minio_admin(minio_server) as admin:
        yield admin


async def test_two_users_get_distinct_keys_that_work_and_reach_no_bucket_of_the_root(
    settings: Settings, minio_server: MinioServer, egi: FakeIssuer, admin_api: MinioAdmin
) -> None:
    root = boto3_client(minio_server.endpoint, minio_server.access_key, minio_server.secret_key)
    bucket = f"root-only-{uuid.uuid4().hex[:8]}"
    root.create_bucket(Bucket=bucket)
    root.put_object(Bucket=bucket, Key="in/secret.txt", Body=b"root's")
    alice, alice_headers = new_user(egi, "alice")
    _bob, bob_headers = new_user(egi, "bob")
    async with app_client(oidc_on(settings, minio_server), auth=False) as http:
        alice_keys = await provider(http, alice_headers)
        bob_keys = await provider(http, bob_headers)
        admin_keys = await provider(http, ADMIN)
    # As upstream: the access key is the subject; the admin still gets the root's keys.
    assert alice_keys["access_key"] == alice
    assert alice_keys["access_key"] != bob_keys["access_key"]
    assert alice_keys["secret_key"] != bob_keys["secret_key"]
    assert (admin_keys["access_key"], admin_keys["secret_key"]) == (
        minio_server.access_key,
        minio_server.secret_key,
    )
    assert set(alice_keys) == {"endpoint", "verify", "access_key", "secret_key", "region"}
    info = json.loads(await admin_api.user_info(alice))
    assert info["status"] == "enabled"
    assert "all_users_group" in info["memberOf"]
    for keys in (alice_keys, bob_keys):
        s3 = s3_as(minio_server, keys)
        # The keys are MinIO's, and no bucket of the root is theirs to list, read or write.
        assert bucket not in keys_work(minio_server, keys)
        assert s3_error(s3.list_objects_v2, Bucket=bucket) == "AccessDenied"
        assert s3_error(s3.get_object, Bucket=bucket, Key="in/secret.txt") == "AccessDenied"
        assert s3_error(s3.put_object, Bucket=bucket, Key="in/mine.txt", Body=b"x") == "AccessDenied"
    wrong = dict(alice_keys, secret_key=bob_keys["secret_key"])
    assert s3_error(s3_as(minio_server, wrong).list_buckets) == "SignatureDoesNotMatch"


async def test_the_keys_outlive_the_manager_and_the_secret_is_sealed_at_rest(
    settings: Settings, minio_server: MinioServer, egi: FakeIssuer
) -> None:
    subject, headers = new_user(egi, "carol")
    configured = oidc_on(settings, minio_server)
    async with app_client(configured, auth=False) as http:
        first = await provider(http, headers)
    async with app_client(configured, auth=False) as http:  # a restart: same registry, same key file
        again = await provider(http, headers)
    assert (again["access_key"], again["secret_key"]) == (first["access_key"], first["secret_key"])
    key_file = configured.credentials_key_file
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    row = await recorded(configured, subject)
    assert row is not None
    assert row.access_key == subject
    secret = first["secret_key"].encode()
    assert secret not in row.sealed_secret
    assert base64.b64encode(secret) not in row.sealed_secret
    assert Fernet(key_file.read_text().strip().encode()).decrypt(row.sealed_secret) == secret


# Replicas share a PostgreSQL database: SQLite is one manager's (``registry.database``). Two in one process
# on one SQLite file even stall each other: inline SQLite waits for the file's lock on the event loop's
# thread, so the replica holding it across a MinIO call (the bucket rules do) cannot finish.
@pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
async def test_concurrent_first_requests_on_two_replicas_make_one_user_with_one_secret(
    settings: Settings, minio_server: MinioServer, egi: FakeIssuer, tmp_path: Path
) -> None:
    """Two managers on one database (same OSCAR_CREDENTIALS_KEY, data directories of their own), each
    taking several first requests of the same user at once: one row, the same keys everywhere, and they
    work (whoever finds the row recorded by another makes no MinIO user of its own secret)."""
    subject, headers = new_user(egi, "dave")
    shared = {"oscar_credentials_key": Fernet.generate_key().decode()}
    one = oidc_on(settings, minio_server, **shared)
    two = oidc_on(settings, minio_server, oscar_data_dir=tmp_path / "replica-2", **shared)
    async with app_client(one, auth=False) as first, app_client(two, auth=False) as second:
        answers = await asyncio.gather(
            *(provider(http, headers) for _ in range(4) for http in (first, second))
        )
    assert len({(a["access_key"], a["secret_key"]) for a in answers}) == 1
    assert not (tmp_path / "replica-2" / "credentials-key").exists()
    keys_work(minio_server, answers[0])
    row = await recorded(one, subject)
    assert row is not None
    assert row.access_key == subject


async def test_a_minio_user_deleted_behind_the_managers_back_is_made_again_on_the_next_request(
    settings: Settings, minio_server: MinioServer, egi: FakeIssuer, admin_api: MinioAdmin
) -> None:
    subject, headers = new_user(egi, "erin")
    configured = oidc_on(settings, minio_server, oscar_minio_user_check_interval=0)
    async with app_client(configured, auth=False) as http:
        keys = await provider(http, headers)
        for ask_again in ("/system/services", "/system/config"):
            await admin_api.user_remove(subject)
            assert s3_error(s3_as(minio_server, keys).list_buckets) == "InvalidAccessKeyId"
            answer = await http.get(ask_again, headers=headers)
            assert answer.status_code == 200, answer.text
            keys_work(minio_server, keys)  # the same keys work again
            info = json.loads(await admin_api.user_info(subject))
            assert "all_users_group" in info["memberOf"]
        assert await provider(http, headers) == keys


async def test_minio_admin_unreachable_is_a_503_that_records_nothing_and_the_next_request_retries(
    settings: Settings, minio_binary: Path, egi: FakeIssuer
) -> None:
    minio = await start_minio(minio_binary)  # its own: this test kills it
    try:
        subject, headers = new_user(egi, "frank")
        configured = oidc_on(settings, minio)
        async with app_client(configured, auth=False) as http:
            await asyncio.to_thread(minio.kill)
            refused = await http.get("/system/services", headers=headers)
            assert refused.status_code == 503, refused.text
            assert "MinIO's admin API" in refused.text
            assert "unreachable" in refused.text
            assert subject in refused.text
            assert refused.headers["retry-after"]
            assert await recorded(configured, subject) is None
            await asyncio.to_thread(minio.revive)
            keys = await provider(http, headers)
            assert await recorded(configured, subject) is not None
        keys_work(minio, keys)
    finally:
        await asyncio.to_thread(minio.stop)


async def test_without_minio_users_get_no_keys_and_nothing_is_made(
    settings: Settings, minio_server: MinioServer, egi: FakeIssuer, admin_api: MinioAdmin
) -> None:
    """``OSCAR_MINIO_USERS=false`` (an S3 server with no MinIO admin API): as before, no keys."""
    subject, headers = new_user(egi, "gina")
    async with app_client(oidc_on(settings, minio_server, oscar_minio_users=False), auth=False) as http:
        keys = await provider(http, headers)
    assert (keys["access_key"], keys["secret_key"]) == ("", "")
    with pytest.raises(Exception, match="XMinioAdminNoSuchUser"):
        await admin_api.user_info(subject)
