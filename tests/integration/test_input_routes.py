"""The routes of every service input, kept between reads (``operations.input_routes``): what this process
changes shows at once, what another process changes once the copy's trust window has passed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from oscar_manager.domain.service import MinioDefault, Service, normalise_new, parse_service
from oscar_manager.operations import Database, input_routes
from oscar_manager.operations.input_routes import InputRoutes
from tests.support.factories import service_body

pytestmark = pytest.mark.asyncio


def a_service(name: str, folder: str) -> Service:
    return normalise_new(
        parse_service(service_body(name, input=[{"storage_provider": "minio", "path": f"in/{folder}"}])),
        owner="o",
        namespace="ns",
        minio=MinioDefault(endpoint="", region="", verify=True),
    )


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


async def folders(routes: InputRoutes) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for route in await routes.current():
        found.setdefault(route.service, set()).add(f"{route.bucket}/{route.folder}")
    return found


async def replace_then_fail(database: Database, service: Service) -> None:
    async with database.transaction() as tx:
        assert await tx.services.replace(service)
        raise RuntimeError("rolled back")


async def test_changes_made_here_show_in_the_next_routes(database: Database) -> None:
    routes = InputRoutes(database)
    assert await folders(routes) == {}
    async with database.transaction() as tx:
        await tx.services.add(a_service("one", "a"))
        await tx.services.add(a_service("two", "b"))
    assert await folders(routes) == {"one": {"in/a"}, "two": {"in/b"}}
    async with database.transaction() as tx:
        assert await tx.services.replace(a_service("one", "c"))
    assert await folders(routes) == {"one": {"in/c"}, "two": {"in/b"}}
    async with database.transaction() as tx:
        assert await tx.services.delete("two")
        await tx.services.add(a_service("three", "d"))
    assert await folders(routes) == {"one": {"in/c"}, "three": {"in/d"}}
    # Rolled back: nothing changed, whatever the journal names.
    with pytest.raises(RuntimeError):
        await replace_then_fail(database, a_service("one", "never"))
    assert await folders(routes) == {"one": {"in/c"}, "three": {"in/d"}}


async def test_changes_made_elsewhere_show_once_the_copy_is_checked(
    database: Database, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However often this process keeps changing services (each read again alone), what another
    process changed shows within the window."""
    monkeypatch.setattr(input_routes, "SERVICE_CACHE_SECONDS", 0.5)
    routes = InputRoutes(database)
    async with database.transaction() as tx:
        await tx.services.add(a_service("here", "a"))
        await tx.services.add(a_service("there", "b"))
    assert await folders(routes) == {"here": {"in/a"}, "there": {"in/b"}}

    elsewhere = Database(database_url)
    try:
        async with elsewhere.transaction() as tx:
            assert await tx.services.replace(a_service("there", "moved"))
    finally:
        await elsewhere.dispose()

    seen_there = []
    for n in range(20):
        async with database.transaction() as tx:
            assert await tx.services.replace(a_service("here", f"a{n}"))
        found = await folders(routes)
        assert found["here"] == {f"in/a{n}"}
        seen_there.append(found["there"])
        await asyncio.sleep(0.1)
    assert seen_there[-1] == {"in/moved"}
