"""The registry directly: secrets kept apart from definitions, conflicts, transactions."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo

import pytest

from oscar_manager.domain.service import MinioDefault, normalise_new, parse_service
from oscar_manager.errors import Conflict
from oscar_manager.operations import Database
from oscar_manager.registry import service_repository
from tests.support.factories import service_body

pytestmark = pytest.mark.asyncio

MINIO = MinioDefault(endpoint="", region="us-east-1", verify=True)


async def test_round_trip_keeps_secrets(database: Database) -> None:
    stored = normalise_new(
        parse_service(service_body(environment={"secrets": {"K": "v"}, "variables": {"A": "1"}})),
        owner="o",
        namespace="ns",
        minio=MINIO,
    )
    async with database.transaction() as tx:
        await tx.services.add(stored)
    async with database.transaction() as tx:
        loaded = await tx.services.get("cowsay")
    assert loaded == stored
    assert loaded is not None
    assert loaded.environment.secrets == {"K": "v"}


async def test_duplicate_add_is_conflict_and_rolls_back(database: Database) -> None:
    first = normalise_new(parse_service(service_body(image="first")), owner="o", namespace="ns", minio=MINIO)
    second = normalise_new(
        parse_service(service_body(image="second")), owner="o", namespace="ns", minio=MINIO
    )
    async with database.transaction() as tx:
        await tx.services.add(first)
    with pytest.raises(Conflict):
        async with database.transaction() as tx:
            await tx.services.add(second)
    async with database.transaction() as tx:
        loaded = await tx.services.get("cowsay")
    assert loaded is not None
    assert loaded.image == "first"


async def test_error_inside_a_transaction_writes_nothing(database: Database) -> None:
    svc = normalise_new(parse_service(service_body()), owner="o", namespace="ns", minio=MINIO)

    async def write_then_fail() -> None:
        async with database.transaction() as tx:
            await tx.services.add(svc)
            raise RuntimeError("fail after the write")

    with pytest.raises(RuntimeError, match="fail after the write"):
        await write_then_fail()
    async with database.transaction() as tx:
        assert await tx.services.list() == []


async def test_replace_and_delete_report_missing(database: Database) -> None:
    svc = normalise_new(parse_service(service_body()), owner="o", namespace="ns", minio=MINIO)
    async with database.transaction() as tx:
        assert await tx.services.replace(svc) is False
        assert await tx.services.delete("cowsay") is False
        await tx.services.add(svc)
        assert await tx.services.replace(svc.model_copy(update={"image": "new"})) is True
        assert await tx.services.delete("cowsay") is True
        assert await tx.services.get("cowsay") is None


async def test_every_replace_moves_the_version_even_within_one_clock_tick(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service's version (what the rendered list is checked against) is its ``updated_at``: a change
    must move it even when the clock has not moved since the last one."""
    frozen = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)

    class StoppedClock(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> StoppedClock:
            return cls.fromtimestamp(frozen.timestamp(), tz)

    monkeypatch.setattr(service_repository, "datetime", StoppedClock)
    svc = normalise_new(parse_service(service_body()), owner="o", namespace="ns", minio=MINIO)
    seen = []
    async with database.transaction() as tx:
        await tx.services.add(svc)
        seen.append(dict(await tx.services.versions())["cowsay"])
    for image in ("second", "third", "second"):
        async with database.transaction() as tx:
            assert await tx.services.replace(svc.model_copy(update={"image": image})) is True
        async with database.transaction() as tx:
            seen.append(dict(await tx.services.versions())["cowsay"])
    assert len(set(seen)) == len(seen)


async def test_versions_and_reads_of_more_services_than_one_query_takes(database: Database) -> None:
    template = normalise_new(
        parse_service(service_body(environment={"secrets": {"K": "v"}})),
        owner="o",
        namespace="ns",
        minio=MINIO,
    )
    names = [f"svc-{n:04d}" for n in range(1201)]  # past the 1000 names a query asks for
    async with database.transaction() as tx:
        for name in reversed(names):
            await tx.services.add(template.model_copy(update={"name": name, "token": f"{name:0>64}"}))
    async with database.transaction() as tx:
        versions = await tx.services.versions()
        found = await tx.services.get_many([*names, "ghost"])
    assert [name for name, _version in versions] == names
    assert sorted(service.name for service in found) == names
    assert all(service.environment.secrets == {"K": "v"} for service in found)
    async with database.transaction() as tx:
        assert await tx.services.delete("svc-0600")
        assert await tx.services.replace(template.model_copy(update={"name": "svc-0007", "image": "new"}))
    async with database.transaction() as tx:
        moved = set(await tx.services.versions()).symmetric_difference(versions)
    assert {name for name, _version in moved} == {"svc-0600", "svc-0007"}
