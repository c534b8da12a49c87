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


async def test_a_write_that_can_wait_rides_in_the_next_urgent_writes_transaction(database: Database) -> None:
    seen: list[Transaction] = []

    async def note(tx: Transaction) -> int:
        seen.append(tx)
        return len(seen)

    later = database.queue_write_later(note, within=30.0)
    for _ in range(5):
        await asyncio.sleep(0)
    assert not later.done()  # no commit of its own yet
    assert await database.write(note) == 2
    assert await later == 1
    assert seen[0] is seen[1]  # one transaction for both


async def test_a_write_that_can_wait_alone_is_committed_once_its_time_is_up(database: Database) -> None:
    async with database.transaction() as tx:
        await tx.services.add(a_service())
    later = database.queue_write_later(lambda tx: tx.events.enqueue_many([event("a")]), within=0.2)
    await asyncio.sleep(0.05)
    assert not later.done()
    assert await asyncio.wait_for(later, 5) == [True]
    async with database.reading() as tx:
        assert await tx.events.counts() == {"pending": 1}


async def test_a_write_that_can_wait_survives_an_urgent_one_failing_beside_it(database: Database) -> None:
    async with database.transaction() as tx:
        await tx.services.add(a_service())

    async def add_again(tx: Transaction) -> None:
        await tx.services.add(a_service())  # Conflict: the group is rolled back, each work run alone

    later = database.queue_write_later(lambda tx: tx.events.enqueue_many([event("a")]), within=30.0)
    with pytest.raises(Conflict):
        await database.write(add_again)
    assert await later == [True]
    async with database.reading() as tx:
        assert await tx.events.counts() == {"pending": 1}


async def test_the_last_write_runs_once_after_every_write_of_its_group(database: Database) -> None:
    async with database.transaction() as tx:
        await tx.services.add(a_service())
    seen: list[Transaction] = []

    async def count(tx: Transaction) -> dict[str, int]:
        seen.append(tx)
        return await tx.events.counts()

    async def record(tx: Transaction, key: str) -> list[bool]:
        seen.append(tx)
        return await tx.events.enqueue_many([event(key)])

    first = database.queue_write_last(count)
    a = database.queue_write(lambda tx: record(tx, "a"))
    again = database.queue_write_last(count)  # asked for again before the group started: the same run
    b = database.queue_write(lambda tx: record(tx, "b"))
    assert again is first
    assert (await a, await b, await first) == ([True], [True], {"pending": 2})
    assert len(seen) == 3
    assert seen[0] is seen[1] is seen[2]


async def test_a_last_write_that_fails_takes_nothing_else_down(database: Database) -> None:
    async with database.transaction() as tx:
        await tx.services.add(a_service())

    async def broken(tx: Transaction) -> None:
        raise RuntimeError("a broken claim")

    last = database.queue_write_last(broken)
    recorded = database.queue_write(lambda tx: tx.events.enqueue_many([event("a")]))
    assert await recorded == [True]
    with pytest.raises(RuntimeError, match="a broken claim"):
        await last
    async with database.reading() as tx:
        assert await tx.events.counts() == {"pending": 1}
