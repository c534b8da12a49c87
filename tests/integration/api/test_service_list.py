"""``GET /system/services`` answered from renderings kept between requests (``operations.service_listing``),
on SQLite and PostgreSQL: every change shows in the next list (create, update, secrets, delete, who may
see what), each entry is what reading that service answers the same caller, and a change made by
another process shows once the listing is checked against the registry."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from oscar_manager.domain import credentials
from oscar_manager.domain.service import MinioDefault, normalise_new, parse_service
from oscar_manager.operations import Database, service_listing
from oscar_manager.settings import Settings
from tests.support.app import app_client, running_app
from tests.support.factories import ADMIN_PASSWORD, service_body
from tests.support.oidc import FakeIssuer, egi_issuer, with_egi

pytestmark = pytest.mark.asyncio

ADMIN = {"Authorization": "Basic " + base64.b64encode(f"oscar:{ADMIN_PASSWORD}".encode()).decode()}


@pytest.fixture
def egi() -> Iterator[FakeIssuer]:
    with egi_issuer("alice", "bob", "carol") as issuer:
        yield issuer


@pytest.fixture
async def api(settings: Settings, egi: FakeIssuer) -> AsyncIterator[httpx.AsyncClient]:
    """The app with OIDC on, sending no credentials unless a request names some."""
    oidc = with_egi(settings)
    async with app_client(oidc, auth=False) as http:
        yield http


def as_user(egi: FakeIssuer, subject: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {egi.token(subject)}"}


async def listed(api: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    answer = await api.get("/system/services", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert int(answer.headers["content-length"]) == len(answer.content)
    services: list[dict[str, Any]] = answer.json()
    names = [service["name"] for service in services]
    assert names == sorted(names)
    return {service["name"]: service for service in services}


async def put(api: httpx.AsyncClient, headers: dict[str, str], name: str, **fields: Any) -> None:
    answer = await api.put("/system/services", json=service_body(name, **fields), headers=headers)
    assert answer.status_code == 204, answer.text


async def post(api: httpx.AsyncClient, headers: dict[str, str], name: str, **fields: Any) -> None:
    answer = await api.post("/system/services", json=service_body(name, **fields), headers=headers)
    assert answer.status_code == 201, answer.text


async def test_every_change_shows_in_the_next_list(api: httpx.AsyncClient) -> None:
    assert await listed(api, ADMIN) == {}
    await post(api, ADMIN, "one")
    await post(api, ADMIN, "two", memory="512Mi")
    services = await listed(api, ADMIN)
    assert list(services) == ["one", "two"]
    assert services["two"]["memory"] == "512Mi"

    await put(api, ADMIN, "one", memory="1Gi")
    assert (await listed(api, ADMIN))["one"]["memory"] == "1Gi"

    # Secrets: their names show, masked; a new value shows as the same mask, never itself.
    await put(api, ADMIN, "one", memory="1Gi", environment={"secrets": {"TOKEN": "first-value"}})
    answer = await api.get("/system/services", headers=ADMIN)
    assert answer.json()[0]["environment"]["secrets"] == {"TOKEN": credentials.MASKED}
    await put(api, ADMIN, "one", environment={"secrets": {"TOKEN": "other", "KEY": "more"}})
    answer = await api.get("/system/services", headers=ADMIN)
    assert answer.json()[0]["environment"]["secrets"] == {
        "TOKEN": credentials.MASKED,
        "KEY": credentials.MASKED,
    }
    assert b"first-value" not in answer.content
    assert b"other" not in answer.content

    assert (await api.delete("/system/services/two", headers=ADMIN)).status_code == 204
    assert list(await listed(api, ADMIN)) == ["one"]
    await post(api, ADMIN, "two", image="again")
    assert (await listed(api, ADMIN))["two"]["image"] == "again"


async def test_each_entry_is_what_reading_the_service_answers(
    api: httpx.AsyncClient, egi: FakeIssuer
) -> None:
    """Entries are the same JSON as ``GET /system/services/{name}`` for the same caller: a declared
    provider's keys to who may change the service, masked to the others."""
    providers = {"s3": {"aws": {"access_key": "AKIA", "secret_key": "alices-secret", "region": "eu-west-1"}}}
    alice = as_user(egi, "alice")
    await post(
        api,
        alice,
        "shared",
        visibility="public",
        storage_providers=providers,
        output=[{"storage_provider": "s3.aws", "path": "results/out"}],
        environment={"variables": {"MODE": "ünïcode"}, "secrets": {"S": "v"}},
    )
    await post(api, alice, "mine", visibility="restricted", allowed_users=["bob"])
    await post(api, ADMIN, "admins", visibility="public")
    for headers in (alice, as_user(egi, "bob"), as_user(egi, "carol"), ADMIN):
        for name, entry in (await listed(api, headers)).items():
            assert entry == (await api.get(f"/system/services/{name}", headers=headers)).json()
    assert (await listed(api, alice))["shared"]["storage_providers"]["s3"]["aws"][
        "secret_key"
    ] == "alices-secret"
    bobs = await api.get("/system/services", headers=as_user(egi, "bob"))
    assert b"alices-secret" not in bobs.content


async def test_who_sees_what_follows_changes(api: httpx.AsyncClient, egi: FakeIssuer) -> None:
    alice, bob, carol = (as_user(egi, subject) for subject in ("alice", "bob", "carol"))
    await post(api, alice, "priv", visibility="private")
    await post(api, alice, "pub", visibility="public")
    await post(api, alice, "restr", visibility="restricted", allowed_users=["bob"])
    await post(api, bob, "bobs")
    expected = {
        "alice": {"priv", "pub", "restr"},
        "bob": {"pub", "restr", "bobs"},
        "carol": {"pub"},
    }
    for _ in range(2):  # the second time from what the first kept
        seen = {
            who: set(await listed(api, headers))
            for who, headers in zip(expected, (alice, bob, carol), strict=True)
        }
        assert seen == expected
    assert set(await listed(api, ADMIN)) == {"priv", "pub", "restr", "bobs"}

    await put(api, alice, "restr", visibility="restricted", allowed_users=["carol"])
    await put(api, alice, "pub", visibility="private")
    await put(api, bob, "bobs", visibility="public")
    assert set(await listed(api, bob)) == {"bobs"}
    assert set(await listed(api, carol)) == {"restr", "bobs"}
    assert set(await listed(api, alice)) == {"priv", "pub", "restr", "bobs"}


async def test_lists_beside_changes_never_go_back(api: httpx.AsyncClient) -> None:
    """Lists running while a service changes may show it before or after; a list that starts after the
    change has been answered shows it, whatever the lists running beside it kept meanwhile."""
    await post(api, ADMIN, "busy")
    for n in range(8):
        beside = [asyncio.create_task(listed(api, ADMIN)) for _ in range(4)]
        await put(api, ADMIN, "busy", memory=f"{n + 1}Mi")
        assert (await listed(api, ADMIN))["busy"]["memory"] == f"{n + 1}Mi"
        await asyncio.gather(*beside)


async def test_a_change_by_another_process_shows_once_checked(
    api: httpx.AsyncClient, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Changes committed elsewhere (another manager on the same database) do not move this process's
    services generation: they show once the listing is checked against the registry's versions,
    at the latest ``SERVICE_CACHE_SECONDS`` after the last check (here at once)."""
    monkeypatch.setattr(service_listing, "SERVICE_CACHE_SECONDS", 0.0)
    for name in ("kept", "changed", "deleted"):
        await post(api, ADMIN, name)
    assert list(await listed(api, ADMIN)) == ["changed", "deleted", "kept"]

    elsewhere = Database(database_url)
    try:
        async with elsewhere.transaction() as tx:
            changed = await tx.services.get("changed")
            assert changed is not None
            assert await tx.services.replace(changed.model_copy(update={"image": "elsewhere"}))
            assert await tx.services.delete("deleted")
            added = normalise_new(
                parse_service(service_body("added")),
                owner="cluster_admin",
                namespace="oscar-svc",
                minio=MinioDefault(endpoint="", region="us-east-1", verify=True),
            )
            await tx.services.add(added)
    finally:
        await elsewhere.dispose()

    services = await listed(api, ADMIN)
    assert list(services) == ["added", "changed", "kept"]
    assert services["changed"]["image"] == "elsewhere"


async def test_changes_made_here_do_not_hide_those_made_elsewhere(
    api: httpx.AsyncClient, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An update made by this process is read again alone (its journal names it); what another process
    changed meanwhile still shows once the listing's last full check is ``SERVICE_CACHE_SECONDS`` old,
    however often this process keeps changing services in between."""
    monkeypatch.setattr(service_listing, "SERVICE_CACHE_SECONDS", 0.5)
    for name in ("here", "there"):
        await post(api, ADMIN, name)
    assert list(await listed(api, ADMIN)) == ["here", "there"]

    elsewhere = Database(database_url)
    try:
        async with elsewhere.transaction() as tx:
            there = await tx.services.get("there")
            assert there is not None
            assert await tx.services.replace(there.model_copy(update={"image": "elsewhere"}))
    finally:
        await elsewhere.dispose()

    seen_there = []
    for n in range(20):
        await put(api, ADMIN, "here", memory=f"{n + 1}Mi")
        services = await listed(api, ADMIN)
        assert services["here"]["memory"] == f"{n + 1}Mi"
        seen_there.append(services["there"]["image"])
        await asyncio.sleep(0.1)
    assert seen_there[-1] == "elsewhere"
    assert seen_there.index("elsewhere") <= 10  # within the half-second window (0.1 s a round, or more)


async def test_a_start_makes_the_listing_before_anyone_lists(settings: Settings) -> None:
    """The first list after a start would render every service (seconds for 10,000): the start makes the
    listing in the background, and that listing is what the first list answers."""
    async with app_client(settings) as http:
        for name in ("first", "second"):
            answer = await http.post("/system/services", json=service_body(name))
            assert answer.status_code == 201, answer.text
    async with running_app(settings) as (app, http):
        rendered: service_listing.RenderedServices = app.state.rendered_services
        for _ in range(200):
            if rendered._last is not None:
                break
            await asyncio.sleep(0.05)
        prepared = rendered._last
        assert prepared is not None
        assert list(prepared.entries) == ["first", "second"]
        answer = await http.get("/system/services")
        assert [service["name"] for service in answer.json()] == ["first", "second"]
        assert rendered._last is prepared  # answered from it, not made again
