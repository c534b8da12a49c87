"""Buckets shared exactly as their visibility says (issue 16), through the manager's own bucket API on the
embedded default's local storage: three OIDC users (owner, allowed, outsider) and the admin, on SQLite and
PostgreSQL. MinIO's own enforcement of the same records, with each user's own keys, is proved in
``test_bucket_policies_on_minio.py``."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from oscar_manager.registry import Database
from oscar_manager.settings import Settings
from tests.support.app import app_client
from tests.support.factories import ADMIN_PASSWORD, service_body
from tests.support.oidc import FakeIssuer, egi_issuer, with_egi

pytestmark = pytest.mark.asyncio

ADMIN = {"Authorization": "Basic " + base64.b64encode(f"oscar:{ADMIN_PASSWORD}".encode()).decode()}
USERS = ("owner", "allowed", "outsider")


@pytest.fixture
def egi() -> Iterator[FakeIssuer]:
    with egi_issuer(*USERS) as issuer:
        yield issuer


@pytest.fixture
async def api(settings: Settings, egi: FakeIssuer) -> AsyncIterator[httpx.AsyncClient]:
    oidc = with_egi(settings)
    async with app_client(oidc, auth=False) as http:
        yield http


def as_user(egi: FakeIssuer, name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {egi.token(name)}"}


async def make_bucket(
    api: httpx.AsyncClient, headers: dict[str, str], name: str, visibility: str, **fields: Any
) -> None:
    body = {"bucket_name": name, "visibility": visibility, **fields}
    response = await api.post("/system/buckets", json=body, headers=headers)
    assert response.status_code == 201, response.text


async def uses(api: httpx.AsyncClient, headers: dict[str, str], bucket: str) -> dict[str, int]:
    """What the caller gets from each way of using ``bucket``'s objects, and whether it is listed."""
    put = await api.put(f"/system/buckets/{bucket}/objects/by-test.txt", content=b"x", headers=headers)
    get = await api.get(f"/system/buckets/{bucket}/objects/seed.txt", headers=headers)
    listing = await api.get(f"/system/buckets/{bucket}", headers=headers)
    presign = await api.post(
        f"/system/buckets/{bucket}/presign", json={"object_key": "seed.txt"}, headers=headers
    )
    listed = {b["bucket_name"] for b in (await api.get("/system/buckets", headers=headers)).json()}
    return {
        "put": put.status_code,
        "get": get.status_code,
        "list": listing.status_code,
        "presign": presign.status_code,
        "listed": int(bucket in listed),
    }


ALLOWED = {"put": 201, "get": 200, "list": 200, "presign": 200, "listed": 1}
DENIED = {"put": 403, "get": 403, "list": 403, "presign": 403, "listed": 0}


@pytest.mark.parametrize(
    ("visibility", "expected"),
    [
        ("private", {"owner": ALLOWED, "allowed": DENIED, "outsider": DENIED}),
        ("restricted", {"owner": ALLOWED, "allowed": ALLOWED, "outsider": DENIED}),
        ("public", {"owner": ALLOWED, "allowed": ALLOWED, "outsider": ALLOWED}),
    ],
)
async def test_each_visibility_for_owner_allowed_and_outsider(
    api: httpx.AsyncClient, egi: FakeIssuer, visibility: str, expected: dict[str, dict[str, int]]
) -> None:
    owner = as_user(egi, "owner")
    await make_bucket(api, owner, "shared-data", visibility, allowed_users=["allowed"])
    seeded = await api.put("/system/buckets/shared-data/objects/seed.txt", content=b"seed", headers=owner)
    assert seeded.status_code == 201
    seen = {name: await uses(api, as_user(egi, name), "shared-data") for name in USERS}
    assert seen == expected
    # The admin uses every bucket.
    assert await uses(api, ADMIN, "shared-data") == ALLOWED


async def test_listing_shows_owner_visibility_members_and_metadata(
    api: httpx.AsyncClient, egi: FakeIssuer
) -> None:
    await make_bucket(
        api,
        as_user(egi, "owner"),
        "team",
        "restricted",
        allowed_users=[" allowed ", "", "allowed", "owner"],
        metadata={"project": "p1"},
    )
    listed = {
        b["bucket_name"]: b
        for b in (await api.get("/system/buckets", headers=as_user(egi, "allowed"))).json()
    }
    assert listed["team"] == {
        "bucket_name": "team",
        "visibility": "restricted",
        "allowed_users": ["allowed"],  # trimmed, empties, repeats and the owner dropped
        "owner": "owner",
        "metadata": {"project": "p1"},
    }
    one = (await api.get("/system/buckets/team", headers=as_user(egi, "allowed"))).json()
    assert (one["owner"], one["metadata"]) == ("owner", {"owner": "owner", "project": "p1"})


async def test_update_changes_who_may_use_it(api: httpx.AsyncClient, egi: FakeIssuer) -> None:
    owner, allowed = as_user(egi, "owner"), as_user(egi, "allowed")
    await make_bucket(api, owner, "moving", "restricted", allowed_users=["allowed"], metadata={"k": "v"})
    assert (await api.get("/system/buckets/moving", headers=allowed)).status_code == 200
    body = {"bucket_name": "moving", "visibility": "private"}
    assert (await api.put("/system/buckets", json=body, headers=owner)).status_code == 204
    assert (await api.get("/system/buckets/moving", headers=allowed)).status_code == 403
    # Left out, the metadata stays.
    assert (await api.get("/system/buckets/moving", headers=owner)).json()["metadata"]["k"] == "v"
    body = {"bucket_name": "moving", "visibility": "PUBLIC"}
    assert (await api.put("/system/buckets", json=body, headers=owner)).status_code == 204
    assert (await api.get("/system/buckets/moving", headers=as_user(egi, "outsider"))).status_code == 200


async def test_only_the_owner_or_admin_changes_or_deletes(api: httpx.AsyncClient, egi: FakeIssuer) -> None:
    owner = as_user(egi, "owner")
    await make_bucket(api, owner, "guarded", "public")
    await api.put("/system/buckets/guarded/objects/keep.txt", content=b"keep", headers=owner)
    for name in ("allowed", "outsider"):
        body = {"bucket_name": "guarded", "visibility": "private"}
        changed = await api.put("/system/buckets", json=body, headers=as_user(egi, name))
        assert changed.status_code == 403
        assert (await api.delete("/system/buckets/guarded", headers=as_user(egi, name))).status_code == 403
    # Nothing was lost or changed by the refused calls.
    assert (await api.get("/system/buckets/guarded/objects/keep.txt", headers=owner)).content == b"keep"
    assert (await api.get("/system/buckets/guarded", headers=owner)).json()["visibility"] == "public"
    assert (await api.delete("/system/buckets/guarded", headers=owner)).status_code == 204
    assert (await api.get("/system/buckets/guarded", headers=owner)).status_code == 404


async def test_bad_requests_write_nothing(api: httpx.AsyncClient, egi: FakeIssuer) -> None:
    owner = as_user(egi, "owner")
    for body, status in [
        ({"bucket_name": "odd", "visibility": "secret"}, 400),
        ({"bucket_name": "odd", "visibility": "restricted", "allowed_users": ["two words"]}, 400),
        ({"bucket_name": "odd", "visibility": "restricted", "allowed_users": [7]}, 400),
        ({"bucket_name": "Bad_Name"}, 400),
    ]:
        response = await api.post("/system/buckets", json=body, headers=owner)
        assert response.status_code == status, (body, response.text)
    listed = (await api.get("/system/buckets", headers=ADMIN)).json()
    assert [b["bucket_name"] for b in listed] == []
    # An existing bucket is nobody's to create again, its owner's included.
    await make_bucket(api, owner, "taken", "private")
    for headers in (owner, as_user(egi, "outsider"), ADMIN):
        again = await api.post(
            "/system/buckets", json={"bucket_name": "taken", "visibility": "public"}, headers=headers
        )
        assert again.status_code == 409
    assert (await api.get("/system/buckets/taken", headers=owner)).json()["visibility"] == "private"
    missing = await api.put("/system/buckets", json={"bucket_name": "nothing"}, headers=owner)
    assert missing.status_code == 404
    # A service's members are checked as a bucket's, whether it has buckets or not.
    body = service_body("odd", visibility="restricted", allowed_users=["ok", "two words"])
    refused = await api.post("/system/services", json=body, headers=owner)
    assert (refused.status_code, "two words" in refused.text) == (400, True)


async def test_one_of_two_racing_creates_gets_the_bucket(api: httpx.AsyncClient, egi: FakeIssuer) -> None:
    answers = await asyncio.gather(
        *(
            api.post("/system/buckets", json={"bucket_name": "race"}, headers=as_user(egi, name))
            for name in ("owner", "outsider")
        )
    )
    assert sorted(answer.status_code for answer in answers) == [201, 409]
    winner = USERS[0] if answers[0].status_code == 201 else USERS[2]
    assert (await api.get("/system/buckets/race", headers=ADMIN)).json()["owner"] == winner


async def test_service_buckets_follow_the_service(api: httpx.AsyncClient, egi: FakeIssuer) -> None:
    owner, allowed = as_user(egi, "owner"), as_user(egi, "allowed")
    body = service_body(
        "svc",
        input=[{"storage_provider": "minio.default", "path": "svc-in/in"}],
        output=[{"storage_provider": "minio.default", "path": "svc-out/out"}],
        visibility="restricted",
        allowed_users=["allowed"],
    )
    assert (await api.post("/system/services", json=body, headers=owner)).status_code == 201
    for bucket in ("svc-in", "svc-out"):
        one = (await api.get(f"/system/buckets/{bucket}", headers=allowed)).json()
        assert (one["visibility"], one["allowed_users"], one["metadata"]["from_service"]) == (
            "restricted",
            ["allowed"],
            "svc",
        )
        assert (
            await api.get(f"/system/buckets/{bucket}", headers=as_user(egi, "outsider"))
        ).status_code == 403
    # A service's bucket is changed through the service, not the buckets API (as upstream).
    refused = await api.put(
        "/system/buckets", json={"bucket_name": "svc-in", "visibility": "public"}, headers=owner
    )
    assert refused.status_code == 403
    assert "svc" in refused.text
    # The service made private: so are its buckets.
    body["visibility"] = "private"
    assert (await api.put("/system/services", json=body, headers=owner)).status_code == 204
    assert (await api.get("/system/buckets/svc-in", headers=allowed)).status_code == 403
    # Deleted, it leaves its buckets and their objects to its owner, private.
    await api.put("/system/buckets/svc-out/objects/out/result.txt", content=b"r", headers=owner)
    assert (await api.delete("/system/services/svc", headers=owner)).status_code == 204
    kept = (await api.get("/system/buckets/svc-out", headers=owner)).json()
    assert (kept["visibility"], kept["owner"]) == ("private", "owner")
    assert "out/result.txt" in [o["object_name"] for o in kept["objects"]]


async def test_a_users_service_may_not_take_another_owners_bucket(
    api: httpx.AsyncClient, egi: FakeIssuer
) -> None:
    await make_bucket(api, as_user(egi, "owner"), "owned", "public")
    await make_bucket(api, ADMIN, "admins", "public")
    for bucket in ("owned", "admins"):
        body = service_body("thief", input=[{"storage_provider": "minio.default", "path": f"{bucket}/in"}])
        taken = await api.post("/system/services", json=body, headers=as_user(egi, "outsider"))
        assert taken.status_code == 403, taken.text
        assert bucket in taken.text
    assert (await api.get("/system/buckets/owned", headers=ADMIN)).json()["owner"] == "owner"


async def finished_jobs(api: httpx.AsyncClient, service: str, count: int) -> dict[str, dict[str, Any]]:
    for _ in range(600):
        jobs = (await api.get(f"/system/logs/{service}", headers=ADMIN)).json()["jobs"]
        if len(jobs) >= count and all(job["status"] in ("Succeeded", "Failed") for job in jobs.values()):
            return dict(jobs)
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} job(s) of {service} did not finish")


async def test_user_isolation_gives_each_user_a_private_bucket_that_runs_the_service(
    api: httpx.AsyncClient, egi: FakeIssuer
) -> None:
    """``isolation_level: USER`` (upstream ``docs/multitenancy.md``): each allowed user and the owner get
    ``<input bucket>-<uid prefix>`` with the input and output folders; an upload to their input runs the
    service, whose outputs land in their own bucket; nobody else may use it."""
    owner, allowed, outsider = (as_user(egi, name) for name in USERS)
    body = service_body(
        "gray",
        script='#!/bin/sh\ncp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/done.txt"\n',
        input=[{"storage_provider": "minio.default", "path": "gray/in"}],
        output=[{"storage_provider": "minio.default", "path": "gray/out"}],
        visibility="restricted",
        allowed_users=["allowed"],
        isolation_level="USER",
    )
    assert (await api.post("/system/services", json=body, headers=owner)).status_code == 201
    stored = (await api.get("/system/services/gray", headers=owner)).json()
    assert stored["bucket_list"] == ["gray-allowed", "gray-owner"]
    mine = (await api.get("/system/buckets/gray-allowed", headers=allowed)).json()
    assert (mine["owner"], mine["visibility"]) == ("allowed", "private")
    assert {o["object_name"] for o in mine["objects"]} == {"in/", "out/"}
    # Each private bucket is its user's alone; the service's own bucket is shared as its visibility says.
    assert (await api.get("/system/buckets/gray-owner", headers=allowed)).status_code == 403
    assert (await api.get("/system/buckets/gray-allowed", headers=owner)).status_code == 403
    for bucket in ("gray", "gray-allowed", "gray-owner"):
        assert (await api.get(f"/system/buckets/{bucket}", headers=outsider)).status_code == 403
    assert (await api.get("/system/buckets/gray", headers=allowed)).status_code == 200

    up = await api.put("/system/buckets/gray-allowed/objects/in/photo.txt", content=b"mine", headers=allowed)
    assert up.status_code == 201
    jobs = await finished_jobs(api, "gray", 1)
    assert [job["status"] for job in jobs.values()] == ["Succeeded"]
    result = await api.get("/system/buckets/gray-allowed/objects/out/done.txt", headers=allowed)
    assert result.content == b"mine"
    # Nothing went to the service's own output folder.
    shared = (await api.get("/system/buckets/gray", headers=owner)).json()
    assert {o["object_name"] for o in shared["objects"]} == {"in/", "out/"}


async def test_user_isolation_refuses_users_whose_buckets_would_meet(
    api: httpx.AsyncClient, egi: FakeIssuer
) -> None:
    body = service_body(
        "twins",
        input=[{"storage_provider": "minio.default", "path": "twins/in"}],
        allowed_users=["0123456789-alice", "0123456789-bob"],
        isolation_level="user",
    )
    refused = await api.post("/system/services", json=body, headers=as_user(egi, "owner"))
    assert refused.status_code == 400
    assert "twins-0123456789" in refused.text
    assert (await api.get("/system/services/twins", headers=ADMIN)).status_code == 404
    assert (await api.get("/system/buckets", headers=ADMIN)).json() == []


async def test_buckets_of_services_made_before_records_are_recorded_at_start(
    settings: Settings, egi: FakeIssuer
) -> None:
    """A registry from before buckets had owners: at start-up each service's buckets take its owner and
    visibility, so the owner keeps their bucket and nobody else gains it."""
    oidc = with_egi(settings)
    body = service_body("old", input=[{"storage_provider": "minio.default", "path": "old-data/in"}])
    async with app_client(oidc, auth=False) as api:
        assert (
            await api.post("/system/services", json=body, headers=as_user(egi, "owner"))
        ).status_code == 201
    database = Database(settings.database_url)
    try:
        async with database.transaction() as tx:
            await tx.buckets.remove("old-data")
    finally:
        await database.dispose()
    async with app_client(oidc, auth=False) as api:
        one = await api.get("/system/buckets/old-data", headers=as_user(egi, "owner"))
        assert (one.status_code, one.json()["owner"], one.json()["visibility"]) == (200, "owner", "private")
        assert (
            await api.get("/system/buckets/old-data", headers=as_user(egi, "outsider"))
        ).status_code == 403
