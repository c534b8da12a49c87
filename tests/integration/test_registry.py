"""The registry directly: secrets kept apart from definitions, conflicts, transactions."""

from __future__ import annotations

import pytest

from oscar_manager.domain.service import MinioDefault, normalise_new, parse_service
from oscar_manager.errors import Conflict
from oscar_manager.operations import Database
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
