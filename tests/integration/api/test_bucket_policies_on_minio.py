"""Bucket visibility held in MinIO itself (issue 16): the records' rules, proved with each OIDC user's own
keys (as ``/system/config`` gives them) against the real MinIO of the tests.

Records are written as the buckets API and the services write them, in a transaction that calls the
app's ``bucket_policies.apply`` before it commits, so that each rule (and each failure) is driven alone.
Three users: the owner, an allowed user and an outsider; buckets made by the root, as the manager makes
them. The manager's own checks of the same records are ``test_bucket_access.py``'s.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI
from miniopy_async.minioadmin import MinioAdmin

from oscar_manager.domain.bucket_policies import bucket_group, policy, same_policy, use_statements
from oscar_manager.domain.buckets import BucketRecord
from oscar_manager.operations.bucket_access import ALL_USERS_POLICY, MinioBucketPolicies
from oscar_manager.registry import Database
from oscar_manager.settings import Settings
from oscar_manager.storage.minio_errors import MinioAdminUnavailable
from tests.support.app import running_app
from tests.support.minio import MinioServer, boto3_client, start_minio
from tests.support.oidc import FakeIssuer, egi_issuer
from tests.support.storage_users import (
    minio_admin,
    new_user,
    oidc_on,
    provider,
    s3_as,
    s3_error,
)

pytestmark = pytest.mark.asyncio

SEED = "in/seed.txt"


@pytest.fixture
def egi() -> Iterator[FakeIssuer]:
    with egi_issuer() as issuer:
        yield issuer


@pytest.fixture
async def admin_api(minio_server: MinioServer) -> AsyncIterator[MinioAdmin]:
    async with minio_admin(minio_server) as admin:
        yield admin


@dataclass
class User:
    uid: str
    keys: dict[str, Any]
    s3: Any


async def login(http: httpx.AsyncClient, egi: FakeIssuer, minio: MinioServer, name: str) -> User:
    uid, headers = new_user(egi, name)
    keys = await provider(http, headers)
    return User(uid, keys, s3_as(minio, keys))


def new_bucket(minio: MinioServer, kind: str) -> str:
    """A bucket made by the root (as the manager makes them), with one object."""
    name = f"{kind}-{uuid.uuid4().hex[:10]}"
    root = boto3_client(minio.endpoint, minio.access_key, minio.secret_key)
    root.create_bucket(Bucket=name)
    root.put_object(Bucket=name, Key=SEED, Body=b"seed")
    return name


def policies_of(app: FastAPI) -> MinioBucketPolicies:
    return cast(MinioBucketPolicies, app.state.bucket_policies)


async def record(app: FastAPI, *records: BucketRecord) -> None:
    """As the buckets API will: the records written and MinIO told, before the transaction commits."""
    database: Database = app.state.database
    async with database.transaction() as tx:
        for one in records:
            await tx.buckets.put(one, now=datetime.now(UTC))
        await policies_of(app).apply(tx, [one.name for one in records])


def shared_with(bucket: str, owner: User, *allowed: User) -> BucketRecord:
    return BucketRecord(
        bucket, owner=owner.uid, visibility="restricted", allowed_users=tuple(user.uid for user in allowed)
    )


def uses(user: User, bucket: str) -> None:
    """``user`` lists, reads, writes and deletes objects of ``bucket`` with their own keys."""
    listed = user.s3.list_objects_v2(Bucket=bucket, Prefix="in/")
    assert SEED in [item["Key"] for item in listed.get("Contents", [])]
    assert user.s3.get_object(Bucket=bucket, Key=SEED)["Body"].read() == b"seed"
    key = f"in/{uuid.uuid4().hex}.txt"
    user.s3.put_object(Bucket=bucket, Key=key, Body=b"mine")
    user.s3.delete_object(Bucket=bucket, Key=key)
    assert s3_error(user.s3.head_object, Bucket=bucket, Key=key) == "404"


def denied(user: User, bucket: str) -> None:
    """Every object operation of ``user`` on ``bucket`` refused by MinIO."""
    assert s3_error(user.s3.list_objects_v2, Bucket=bucket) == "AccessDenied"
    assert s3_error(user.s3.get_object, Bucket=bucket, Key=SEED) == "AccessDenied"
    assert s3_error(user.s3.put_object, Bucket=bucket, Key="in/x.txt", Body=b"x") == "AccessDenied"
    assert s3_error(user.s3.delete_object, Bucket=bucket, Key=SEED) == "AccessDenied"


def changes_nothing_of_the_bucket(user: User, bucket: str) -> None:
    """Bucket-level changes stay with the manager, whoever may use the objects."""
    s3 = user.s3
    everyone = policy([{"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject"], "Resource": "*"}])
    assert s3_error(s3.delete_bucket, Bucket=bucket) == "AccessDenied"
    assert s3_error(s3.put_bucket_policy, Bucket=bucket, Policy=json.dumps(everyone)) == "AccessDenied"
    assert s3_error(s3.delete_bucket_policy, Bucket=bucket) == "AccessDenied"
    assert (
        s3_error(s3.put_bucket_notification_configuration, Bucket=bucket, NotificationConfiguration={})
        == "AccessDenied"
    )
    tags = {"TagSet": [{"Key": "k", "Value": "v"}]}
    assert s3_error(s3.put_bucket_tagging, Bucket=bucket, Tagging=tags) == "AccessDenied"
    versioning = {"Status": "Enabled"}
    assert (
        s3_error(s3.put_bucket_versioning, Bucket=bucket, VersioningConfiguration=versioning)
        == "AccessDenied"
    )


def uploads_in_parts(user: User, bucket: str) -> None:
    """What clients' large uploads do: multipart, listed, completed or aborted."""
    s3 = user.s3
    key = f"in/{uuid.uuid4().hex}.bin"
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    part = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"part")
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])] == [upload]
    assert [p["PartNumber"] for p in s3.list_parts(Bucket=bucket, Key=key, UploadId=upload)["Parts"]] == [1]
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"part"
    aborted = s3.create_multipart_upload(Bucket=bucket, Key=key + ".2")["UploadId"]
    s3.abort_multipart_upload(Bucket=bucket, Key=key + ".2", UploadId=aborted)
    s3.delete_object(Bucket=bucket, Key=key)


async def test_private_restricted_and_public_hold_in_minio_with_each_users_own_keys(
    settings: Settings, minio_server: MinioServer, egi: FakeIssuer
) -> None:
    private, restricted, public = (new_bucket(minio_server, kind) for kind in ("priv", "restr", "pub"))
    async with running_app(oidc_on(settings, minio_server), auth=False) as (app, http):
        owner, allowed, outsider = [await login(http, egi, minio_server, n) for n in ("own", "ally", "out")]
        await record(
            app,
            BucketRecord(private, owner=owner.uid),
            shared_with(restricted, owner, allowed),
            BucketRecord(public, owner=owner.uid, visibility="public"),
        )
    # MinIO lists each user the buckets they may use, and none of the others (the dashboard shows these).
    everything = {private, restricted, public}
    for user, theirs in ((owner, everything), (allowed, {restricted, public}), (outsider, {public})):
        listed = {b["Name"] for b in user.s3.list_buckets()["Buckets"]}
        assert (listed & everything) == theirs
    for user in (owner, allowed, outsider):  # the rules are MinIO's: they hold with the manager gone
        uses(user, public)
    uses(owner, private)
    denied(allowed, private)
    denied(outsider, private)
    uses(owner, restricted)
    uses(allowed, restricted)
    denied(outsider, restricted)
    uploads_in_parts(allowed, restricted)
    uploads_in_parts(outsider, public)
    for user in (owner, allowed, outsider):
        for bucket in (private, restricted, public):
            changes_nothing_of_the_bucket(user, bucket)


async def test_narrowing_a_bucket_revokes_at_once(
    settings: Settings, minio_server: MinioServer, egi: FakeIssuer
) -> None:
    bucket, public = new_bucket(minio_server, "narrow"), new_bucket(minio_server, "pub")
    async with running_app(oidc_on(settings, minio_server), auth=False) as (app, http):
        owner, ally, other, outsider = [
            await login(http, egi, minio_server, n) for n in ("own", "ally", "other", "out")
        ]
        await record(
            app,
            shared_with(bucket, owner, ally, other),
            BucketRecord(public, owner=owner.uid, visibility="public"),
        )
        uses(other, bucket)
        uses(outsider, public)
        # A member removed.
        await record(app, shared_with(bucket, owner, ally))
        denied(other, bucket)
        uses(ally, bucket)
        # Restricted to private: the allowed users go, though still listed in the record.
        await record(app, BucketRecord(bucket, owner=owner.uid, allowed_users=(ally.uid,)))
        denied(ally, bucket)
        uses(owner, bucket)
        # Public to private: every other user goes.
        await record(app, BucketRecord(public, owner=owner.uid))
        denied(outsider, public)
        denied(ally, public)
        uses(owner, public)
        # Given to the admin: no user keeps anything, and MinIO keeps no group or policy for it.
        await record(app, BucketRecord(bucket))
        denied(owner, bucket)


async def test_an_allowed_user_who_never_logged_in_has_access_with_the_keys_of_their_first_login(
    settings: Settings, minio_server: MinioServer, egi: FakeIssuer
) -> None:
    bucket = new_bucket(minio_server, "later")
    newcomer, newcomer_headers = new_user(egi, "new")
    async with running_app(oidc_on(settings, minio_server), auth=False) as (app, http):
        owner = await login(http, egi, minio_server, "own")
        restricted = BucketRecord(bucket, owner=owner.uid, visibility="restricted", allowed_users=(newcomer,))
        await record(app, restricted)
        database: Database = app.state.database
        async with database.reading() as tx:
            made = await tx.identities.get(newcomer)
        assert made is not None  # made with the change, as upstream makes allowed users
        keys = await provider(http, newcomer_headers)
    assert keys["access_key"] == made.access_key
    uses(User(newcomer, keys, s3_as(minio_server, keys)), bucket)


async def test_a_member_whose_minio_user_was_deleted_is_put_back_in_the_bucket(
    settings: Settings, minio_server: MinioServer, egi: FakeIssuer, admin_api: MinioAdmin
) -> None:
    """MinIO drops a deleted user from its groups: making the user again (on their next request, or when
    a change of the bucket finds them missing) puts them back, with the same keys."""
    bucket, other_bucket = new_bucket(minio_server, "back"), new_bucket(minio_server, "back2")
    configured = oidc_on(settings, minio_server, oscar_minio_user_check_interval=0)
    async with running_app(configured, auth=False) as (app, http):
        owner, ally = (
            await login(http, egi, minio_server, "own"),
            await login(http, egi, minio_server, "ally"),
        )
        await record(app, shared_with(bucket, owner, ally), shared_with(other_bucket, owner, ally))
        # Deleted, then their next request.
        await admin_api.user_remove(ally.keys["access_key"])
        assert s3_error(ally.s3.list_buckets) == "InvalidAccessKeyId"
        headers = {"Authorization": f"Bearer {egi.token(ally.uid)}"}
        assert (await http.get("/system/services", headers=headers)).status_code == 200
        uses(ally, bucket)
        uses(ally, other_bucket)
        # Deleted, then a change of one bucket (no request of theirs): back in both.
        await admin_api.user_remove(ally.keys["access_key"])
        await record(app, replace(shared_with(bucket, owner, ally), metadata={"note": "changed"}))
        uses(ally, bucket)
        uses(ally, other_bucket)


async def test_start_up_undoes_what_was_done_behind_the_managers_back(
    settings: Settings, minio_server: MinioServer, egi: FakeIssuer, admin_api: MinioAdmin, tmp_path: Path
) -> None:
    kinds = ("kept", "gone", "mine", "wide", "stale")
    restricted, emptied, private, widened, stale = (new_bucket(minio_server, kind) for kind in kinds)
    configured = oidc_on(settings, minio_server)
    async with running_app(configured, auth=False) as (app, http):
        owner, ally, outsider = [await login(http, egi, minio_server, n) for n in ("own", "ally", "out")]
        await record(
            app,
            shared_with(restricted, owner, ally),
            BucketRecord(emptied, owner=owner.uid),
            BucketRecord(private, owner=owner.uid),
            BucketRecord(widened, owner=owner.uid),
        )
    # Behind its back: an outsider added to a bucket's group; a bucket's policy and the all-users one
    # widened to buckets they do not name; a group of the manager's naming that no record needs (with its
    # policy); a recorded bucket's group removed.
    outsiders_key = outsider.keys["access_key"]
    await admin_api.group_add(bucket_group(restricted), cast(str, [outsiders_key]))
    await put_policy(
        admin_api, bucket_group(widened), policy(use_statements([widened, restricted])), tmp_path
    )
    await admin_api.group_add(bucket_group(widened), cast(str, [outsiders_key]))
    await put_policy(admin_api, ALL_USERS_POLICY, policy(use_statements([private])), tmp_path)
    await put_policy(admin_api, bucket_group(stale), policy(use_statements([stale])), tmp_path)
    await admin_api.group_add(bucket_group(stale), cast(str, [outsiders_key]))
    await admin_api.policy_set(bucket_group(stale), group=bucket_group(stale))
    await admin_api.group_remove(bucket_group(emptied), cast(str, [owner.keys["access_key"]]))
    await admin_api.group_remove(bucket_group(emptied))
    for bucket in (restricted, private, stale):
        uses(outsider, bucket)
    denied(owner, emptied)
    # The owner out of the restricted bucket's group still uses it, through the widened policy alone.
    await admin_api.group_remove(bucket_group(restricted), cast(str, [owner.keys["access_key"]]))
    uses(owner, restricted)
    async with running_app(configured, auth=False) as (app, _http):
        await asyncio.wait_for(policies_of(app).reconciled.wait(), 30)
    for bucket in (restricted, private, stale, widened):
        denied(outsider, bucket)
    uses(ally, restricted)
    with pytest.raises(Exception, match="XMinioAdminNoSuchGroup"):
        await admin_api.group_info(bucket_group(stale))
    with pytest.raises(Exception, match="XMinioAdminNoSuchPolicy"):
        await admin_api.policy_info(bucket_group(stale))
    uses(owner, emptied)
    members = {
        bucket: set(json.loads(await admin_api.group_info(bucket_group(bucket)))["members"])
        for bucket in (restricted, widened)
    }
    assert members == {
        restricted: {owner.keys["access_key"], ally.keys["access_key"]},
        widened: {owner.keys["access_key"]},
    }
    assert same_policy(
        json.loads(await admin_api.policy_info(bucket_group(widened))), policy(use_statements([widened]))
    )


async def put_policy(admin_api: MinioAdmin, name: str, document: dict[str, Any], folder: Path) -> None:
    path = folder / f"{name}.json"  # miniopy-async reads policies from files only
    await asyncio.to_thread(path.write_text, json.dumps(document))
    await admin_api.policy_add(name, str(path))


async def test_a_change_minio_cannot_be_told_of_fails_and_is_not_recorded(
    settings: Settings, minio_binary: Path, egi: FakeIssuer
) -> None:
    minio = await start_minio(minio_binary)  # its own: this test kills it
    try:
        bucket = new_bucket(minio, "down")
        async with running_app(oidc_on(settings, minio), auth=False) as (app, http):
            owner, ally = await login(http, egi, minio, "own"), await login(http, egi, minio, "ally")
            shared = shared_with(bucket, owner, ally)
            await record(app, shared)
            await asyncio.to_thread(minio.kill)
            with pytest.raises(MinioAdminUnavailable, match="unreachable"):
                await record(app, BucketRecord(bucket, owner=owner.uid))
            database: Database = app.state.database
            async with database.reading() as tx:
                assert await tx.buckets.get(bucket) == shared
            await asyncio.to_thread(minio.revive)
            # As the repair worker does: again while the revived MinIO is still initialising (503).
            for _ in range(300):
                try:
                    await policies_of(app).repair()
                    break
                except MinioAdminUnavailable:
                    await asyncio.sleep(0.1)
            uses(ally, bucket)  # as recorded
    finally:
        await asyncio.to_thread(minio.stop)


async def test_rules_of_a_change_that_did_not_commit_are_set_back(
    settings: Settings, minio_server: MinioServer, egi: FakeIssuer
) -> None:
    """MinIO was told, then the change failed before it committed (a later step of the request): the
    repair makes MinIO's rules the committed ones again."""
    bucket = new_bucket(minio_server, "undo")
    async with running_app(oidc_on(settings, minio_server), auth=False) as (app, http):
        owner, ally = (
            await login(http, egi, minio_server, "own"),
            await login(http, egi, minio_server, "ally"),
        )
        await record(app, BucketRecord(bucket, owner=owner.uid))
        with pytest.raises(RuntimeError, match="a later step"):
            await made_public_then_failed(app, BucketRecord(bucket, owner=owner.uid), ally)
        for _ in range(100):
            if s3_error_or_none(ally, bucket) == "AccessDenied":
                break
            await asyncio.sleep(0.1)
        denied(ally, bucket)
        uses(owner, bucket)


async def made_public_then_failed(app: FastAPI, private: BucketRecord, ally: User) -> None:
    database: Database = app.state.database
    async with database.transaction() as tx:
        await tx.buckets.put(replace(private, visibility="public"), now=datetime.now(UTC))
        await policies_of(app).apply(tx, [private.name])
        uses(ally, private.name)  # MinIO told, the change not committed yet
        raise RuntimeError("a later step failed")


def s3_error_or_none(user: User, bucket: str) -> str | None:
    try:
        user.s3.list_objects_v2(Bucket=bucket)
    except Exception as exc:
        return str(getattr(exc, "response", {}).get("Error", {}).get("Code"))
    return None
