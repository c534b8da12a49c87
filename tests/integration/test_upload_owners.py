"""Jobs of an upload are its uploader's (issue 16): MinIO's access key of the writer -> the user whose own
MinIO user has it -> the owner recorded with the event and its job (SQLite and PostgreSQL).

Against the intake and the registry directly, so the order of the deliveries (a listing first, MinIO's
record after) is the test's to choose; the same with real MinIO and users' own keys:
``api/test_upload_owners.py``."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus

import pytest

from oscar_manager.domain import generations
from oscar_manager.domain.events import ObjectEvent, object_events
from oscar_manager.domain.identities import StorageIdentity
from oscar_manager.domain.service import Service
from oscar_manager.events.reconcile import object_event
from oscar_manager.operations.intake import Intake
from oscar_manager.operations.uploaders import Uploaders
from oscar_manager.registry import Database
from oscar_manager.registry.job_repository import PreparedJob
from oscar_manager.storage.base import ObjectInfo
from tests.support.factories import stored_service

pytestmark = pytest.mark.asyncio

ROOT = "minioadmin"
BOB = "bob@egi.eu"
CAROL = "carol@egi.eu"
WRITTEN_NS = 1_790_000_000_123_456_789
WRITTEN = datetime.fromtimestamp(WRITTEN_NS / 1e9, tz=UTC)


def record(bucket: str, key: str, principal: str | None, *, etag: str = "e1") -> dict[str, Any]:
    """A record as MinIO's webhook sends it (``principal`` None: a record naming no one)."""
    item: dict[str, Any] = {
        "eventVersion": "2.0",
        "eventSource": "minio:s3",
        "eventName": "s3:ObjectCreated:Put",
        "eventTime": "2026-09-21T14:13:20.130Z",
        "s3": {
            "bucket": {"name": bucket},
            "object": {
                "key": quote_plus(key, safe=""),
                "size": 3,
                "eTag": etag,
                "sequencer": f"{WRITTEN_NS:X}",
            },
        },
    }
    if principal is not None:
        item["userIdentity"] = {"principalId": principal}
        item["requestParameters"] = {"principalId": principal}
    return item


def uploaded(bucket: str, key: str, principal: str | None, *, etag: str = "e1") -> ObjectEvent:
    [event] = object_events({"Records": [record(bucket, key, principal, etag=etag)]}) or []
    return event


def listed(bucket: str, key: str, *, etag: str = "e1") -> ObjectEvent:
    """The same upload as a listing finds it (the reconcile scan): its modification time to the ms."""
    info = ObjectInfo(bucket, key, 3, WRITTEN, etag, generation=generations.from_nanoseconds(WRITTEN_NS))
    return object_event(info, principal="minio")


async def with_service(database: Database) -> Service:
    name = f"svc-{uuid.uuid4().hex[:8]}"
    service = stored_service(name)
    async with database.transaction() as tx:
        await tx.services.add(service)
        for uid in (BOB, CAROL):
            await tx.identities.add_if_absent(StorageIdentity(uid, uid, b"sealed"), now=datetime.now(UTC))
    return service


def intake(database: Database, *, uploaders: bool = True) -> Intake:
    return Intake(
        database,
        dispatch=lambda: None,
        uploaders=Uploaders(database, root_access_key=ROOT) if uploaders else None,
    )


async def event_owners(database: Database) -> dict[str, str | None]:
    """job id -> owner of each event not yet claimed, claiming them and making their job rows as the
    dispatcher does (``dispatch._claim``)."""
    async with database.transaction() as tx:
        claimed = await tx.events.claim(limit=100)
        await tx.jobs.prepare(
            [PreparedJob(job_id=e.job_id, service=e.service, event_id=e.id, owner=e.owner) for e in claimed]
        )
    return {event.job_id: event.owner for event in claimed}


async def job_owner(database: Database, service: Service, job_id: str) -> str | None:
    async with database.reading() as tx:
        job = await tx.jobs.get(service.name, job_id)
    assert job is not None
    return job.owner


async def test_a_users_key_is_their_uid_and_any_other_key_no_ones(database: Database) -> None:
    await with_service(database)
    uploaders = Uploaders(database, root_access_key=ROOT)
    assert await uploaders.owners([BOB, ROOT, "someone-minio-knows", ""]) == {BOB: BOB}
    # A key of no user is not remembered as no one's: once it is a user's, it maps.
    dave = f"dave-{uuid.uuid4().hex[:6]}@egi.eu"
    assert await uploaders.owners([dave]) == {}
    async with database.transaction() as tx:
        await tx.identities.add_if_absent(StorageIdentity(dave, dave, b"s"), now=datetime.now(UTC))
    assert await uploaders.owners([dave, CAROL]) == {dave: dave, CAROL: CAROL}


async def test_a_users_key_is_looked_up_once(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    await with_service(database)
    uploaders = Uploaders(database, root_access_key=ROOT)
    reads = 0
    reading = database.reading

    def counted() -> Any:
        nonlocal reads
        reads += 1
        return reading()

    monkeypatch.setattr(database, "reading", counted)
    for _ in range(3):
        assert await uploaders.owners([BOB]) == {BOB: BOB}
    assert await uploaders.owners([ROOT]) == {}  # the root's key is no user's: never looked up
    assert reads == 1


async def test_a_minio_record_of_a_users_upload_records_the_job_as_theirs(database: Database) -> None:
    service = await with_service(database)
    bucket = service.input[0].path.split("/")[0]
    routed = await intake(database).storage_events(
        [
            uploaded(bucket, "in/bobs.txt", BOB),
            uploaded(bucket, "in/roots.txt", ROOT),
            uploaded(bucket, "in/strangers.txt", "someone-minio-knows"),
            uploaded(bucket, "in/no-ones.txt", None),
        ]
    )
    assert routed.new == 4
    owners = await event_owners(database)
    assert Counter(owners.values()) == {BOB: 1, None: 3}
    [bobs] = [job for job, owner in owners.items() if owner == BOB]
    assert await job_owner(database, service, bobs) == BOB


async def test_without_users_own_minio_users_no_upload_is_anyones(database: Database) -> None:
    service = await with_service(database)
    bucket = service.input[0].path.split("/")[0]
    await intake(database, uploaders=False).storage_events([uploaded(bucket, "in/bobs.txt", BOB)])
    assert list((await event_owners(database)).values()) == [None]


@pytest.mark.parametrize("dispatched", [False, True], ids=["event-pending", "job-made"])
async def test_an_upload_a_listing_found_first_becomes_the_uploaders_when_minio_tells(
    database: Database, dispatched: bool
) -> None:
    """The listing and MinIO's record of one upload are one event (one job): the listing, first, cannot
    tell whose it is; MinIO's record then gives the event, and the job if it was made meanwhile, its
    owner. An owner once recorded is never replaced."""
    service = await with_service(database)
    bucket = service.input[0].path.split("/")[0]
    the_intake = intake(database)
    found = await the_intake.object_event(service=service.name, event=listed(bucket, "in/bobs.txt"))
    assert found.new == 1
    [job_id] = found.job_ids
    if dispatched:
        assert await event_owners(database) == {job_id: None}
        assert await job_owner(database, service, job_id) is None

    routed = await the_intake.storage_events([uploaded(bucket, "in/bobs.txt", BOB)])
    assert (routed.new, routed.duplicates) == (0, 1)
    if dispatched:
        assert await job_owner(database, service, job_id) == BOB
    else:
        assert await event_owners(database) == {job_id: BOB}
        assert await job_owner(database, service, job_id) == BOB

    # Later deliveries naming someone else (or no one) change nothing.
    await the_intake.storage_events([uploaded(bucket, "in/bobs.txt", CAROL)])
    await the_intake.storage_events([uploaded(bucket, "in/bobs.txt", None)])
    body = json.dumps({"Records": [record(bucket, "in/bobs.txt", CAROL)]}).encode()
    again = await the_intake.invocation(service=service, body=body, idempotency_key=None)
    assert (again.job_ids, again.new) == ([job_id], 0)
    assert await job_owner(database, service, job_id) == BOB
    assert await event_owners(database) == {}  # still one event: nothing new to claim


async def test_a_job_request_carrying_minio_records_is_the_uploaders_unless_a_user_sends_it(
    database: Database,
) -> None:
    """``/job`` with MinIO's record (as MinIO configured like upstream's posts, with the service's token):
    the uploader's job, record by record; sent by an OIDC user (``owner``), the job is the sender's."""
    service = await with_service(database)
    bucket = service.input[0].path.split("/")[0]
    the_intake = intake(database)
    body = json.dumps(
        {"Records": [record(bucket, "in/bobs.txt", BOB), record(bucket, "in/carols.txt", CAROL)]}
    ).encode()
    by_token = await the_intake.invocation(service=service, body=body, idempotency_key=None)
    assert by_token.new == 2
    owners = await event_owners(database)
    assert [owners[job] for job in by_token.job_ids] == [BOB, CAROL]

    sent = json.dumps({"Records": [record(bucket, "in/other.txt", BOB)]}).encode()
    by_user = await the_intake.invocation(service=service, body=sent, idempotency_key=None, owner=CAROL)
    assert (await event_owners(database))[by_user.job_ids[0]] == CAROL


async def test_an_upload_to_another_storage_names_none_of_the_users(database: Database) -> None:
    """An access key of another MinIO (a service's own ``minio.<id>``) is no key of this one's users,
    even when it reads the same."""
    name = f"svc-{uuid.uuid4().hex[:8]}"
    service = stored_service(
        name,
        input=[{"storage_provider": "minio.other", "path": f"{name}/in"}],
        storage_providers={
            "minio": {"other": {"endpoint": "http://other:9000", "access_key": "k", "secret_key": "s"}}
        },
    )
    async with database.transaction() as tx:
        await tx.services.add(service)
        await tx.identities.add_if_absent(StorageIdentity(BOB, BOB, b"sealed"), now=datetime.now(UTC))
    body = json.dumps({"Records": [record(name, "in/bobs.txt", BOB)]}).encode()
    accepted = await intake(database).invocation(service=service, body=body, idempotency_key=None)
    assert (await event_owners(database))[accepted.job_ids[0]] is None
