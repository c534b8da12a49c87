"""Who uses a bucket of the manager's own storage, and the input routes of a bucket's objects, found from
a few fields of the stored definitions and a text prefilter in the database rather than from every
definition: the same answers as the whole definitions give, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from oscar_manager.domain.buckets import StorageUse
from oscar_manager.domain.service import MinioDefault, Service, normalise_new, parse_service
from oscar_manager.operations import Database, service_buckets
from tests.support.factories import service_body

pytestmark = pytest.mark.asyncio

MINIO = MinioDefault(endpoint="", region="us-east-1", verify=True)


def make(name: str, owner: str = "oscar", **fields: Any) -> Service:
    return normalise_new(
        parse_service(service_body(name, **fields)), owner=owner, namespace="ns", minio=MINIO
    )


def io(path: str, provider: str = "minio") -> dict[str, str]:
    return {"storage_provider": provider, "path": path}


SERVICES = [
    make("plain", input=[io("data/in")], output=[io("data/out")]),
    # USER isolation: each allowed user (and the owner) a private bucket "data-in-<uid prefix>".
    make(
        "isolated",
        owner="owner@egi.test",
        input=[io("data-in/x")],
        output=[io("results/y")],
        isolation_level="USER",
        allowed_users=["alice@example.org", "bob"],
    ),
    # A later service of the same bucket: the one the bucket's record follows.
    make("later", input=[io("data/again")], output=[io("elsewhere/out")]),
    # Names a bucket only in its script and on another provider: uses none of them here.
    make(
        "mentions",
        script="echo data-in-alice results elsewhere\n",
        input=[io("results/z", "s3.aws")],
        output=[io("data/out", "webdav.dcache")],
        storage_providers={
            "s3": {"aws": {"access_key": "a", "secret_key": "s", "region": "r", "queue": "q"}},
            "webdav": {"dcache": {"hostname": "https://dav.example", "login": "l", "password": "p"}},
        },
    ),
]


@pytest.fixture
async def filled(database: Database) -> Database:
    async with database.transaction() as tx:
        for service in SERVICES:
            await tx.services.add(service)
    return database


async def test_storage_uses_hold_what_the_whole_definitions_say(filled: Database) -> None:
    async with filled.transaction() as tx:
        uses = await tx.services.storage_uses()
        whole = [StorageUse.of(service) for service in await tx.services.list_by_creation()]
    assert uses == whole
    assert [use.name for use in uses] == ["plain", "isolated", "later", "mentions"]


async def test_the_users_of_each_bucket_are_those_the_definitions_give(filled: Database) -> None:
    every = set().union(*map(service_buckets.own_buckets, SERVICES))
    assert {"data", "data-in", "data-in-alice-exam", "data-in-bob", "data-in-owner-egi", "results"} <= every
    async with filled.transaction() as tx:
        for bucket in sorted(every | {"elsewhere", "nobody-uses-this"}):
            expected = sorted(s.name for s in SERVICES if bucket in service_buckets.own_buckets(s))
            assert await service_buckets.using_bucket(tx, bucket) == expected, bucket
    # The prefilter alone takes the one that names a bucket on another provider.
    async with filled.transaction() as tx:
        prefiltered = await tx.services.storage_uses(bucket="results")
    assert [use.name for use in prefiltered] == ["isolated", "mentions"]


async def test_a_bucket_left_by_a_deleted_service_follows_the_last_one_still_using_it(
    filled: Database,
) -> None:
    async with filled.transaction() as tx:
        await service_buckets.record(tx, SERVICES[0])
        await service_buckets.record(tx, SERVICES[2])
        assert (await tx.buckets.get("data")).service == "later"  # type: ignore[union-attr]
    async with filled.transaction() as tx:
        await tx.services.delete("later")
        await service_buckets.release(tx, SERVICES[2])
        record = await tx.buckets.get("data")
        assert record is not None
        assert record.service == "plain"
        elsewhere = await tx.buckets.get("elsewhere")
        assert elsewhere is not None
        assert elsewhere.service is None  # no service left: its owner's, private
        assert elsewhere.owner == "oscar"


async def test_adopt_records_each_bucket_from_the_last_service_created_using_it(filled: Database) -> None:
    async with filled.transaction() as tx:
        adopted = await service_buckets.adopt(tx)
    expected = set().union(*map(service_buckets.own_buckets, SERVICES))
    assert adopted == expected
    async with filled.transaction() as tx:
        data = await tx.buckets.get("data")
        private = await tx.buckets.get("data-in-bob")
        assert await service_buckets.adopt(tx) == set()  # once
    assert data is not None
    assert data.service == "later"
    assert private is not None
    assert private.owner == "bob"
    assert private.service == "isolated"


async def test_the_routes_of_a_buckets_objects_are_those_every_route_gives(filled: Database) -> None:
    """What the intake reads for a batch of events: the routes in their buckets, through the same
    prefilter (a user's private bucket included), equal to those among every route."""
    every = set().union(*map(service_buckets.own_buckets, SERVICES)) | {"elsewhere", "nobody-uses-this"}
    async with filled.transaction() as tx:
        all_routes = await tx.services.input_routes()
        for bucket in sorted(every):
            found = await tx.services.input_routes(buckets={bucket})
            expected = [route for route in all_routes if route.bucket == bucket]
            assert [route for route in found if route.bucket == bucket] == expected, bucket
        both = await tx.services.input_routes(buckets={"data", "data-in-bob"})
    assert {route.service for route in both} == {"plain", "isolated", "later"}
