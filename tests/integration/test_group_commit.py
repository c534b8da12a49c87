"""Group commit, batched writes and the cached service lookup of the registry (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio

import pytest

from oscar_manager.domain.service import MinioDefault, Service, normalise_new, parse_service
from oscar_manager.errors import Conflict
from oscar_manager.registry import Database, NewEvent, Transaction, WriteBatch
from tests.support.factories import service_body

pytestmark = pytest.mark.asyncio


def a_service(**changes: object) -> Service:
    return normalise_new(
        parse_service({**service_body(), **changes}),
        owner="o",
        namespace="ns",
        minio=MinioDefault(endpoint="", region="", verify=True),
    )


def event(key: str) -> NewEvent:
    return NewEvent(dedup_key=key, service="cowsay", job_id=f"cowsay-{key}", payload=b"{}")


async def test_writes_queued_together_commit_together_and_errors_reach_only_their_caller(
    database: Database,
) -> None:
    async with database.transaction() as tx:
        await tx.services.add(a_service())

    async def add_again(tx: Transaction) -> None:
        await tx.services.add(a_service())  # a second service of that name: Conflict

    results = await asyncio.gather(
        database.write(lambda tx: tx.events.enqueue_many([event("a")])),
        database.write(add_again),
        database.write(lambda tx: tx.events.enqueue_many([event("b"), event("a")])),
        return_exceptions=True,
    )
    assert results[0] == [True]
    assert isinstance(results[1], Conflict)
    assert results[2] == [True, False]  # "a" was recorded by the first write
    async with database.reading() as tx:
        assert await tx.events.counts() == {"pending": 2}


async def test_a_batch_answers_each_caller_for_its_own_items(database: Database) -> None:
    async with database.transaction() as tx:
        await tx.services.add(a_service())
    batch: WriteBatch[NewEvent, bool] = WriteBatch(database, lambda tx, items: tx.events.enqueue_many(items))
    results = await asyncio.gather(
        batch.add([event("x"), event("y")]),
        batch.add([event("y")]),  # the same event again, within the same statement
        batch.add([event("z")]),
    )
    assert list(results) == [[True, True], [False], [True]]
    async with database.reading() as tx:
        assert await tx.events.counts() == {"pending": 3}


async def test_the_cached_service_follows_committed_changes(database: Database) -> None:
    assert await database.service("cowsay") is None
    async with database.transaction() as tx:
        await tx.services.add(a_service())
    first = await database.service("cowsay")
    assert first is not None
    assert await database.service("cowsay") is first  # from the cache
    async with database.transaction() as tx:
        changed = first.model_copy(update={"token": "f" * 64})
        assert await tx.services.replace(changed)
    again = await database.service("cowsay")
    assert again is not None
    assert again.token == "f" * 64
    async with database.transaction() as tx:
        await tx.services.delete("cowsay")
    assert await database.service("cowsay") is None
