"""Events arriving together, or one at a time, share transactions: their record, their claim, and the
completion of those submitted (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import event as sqlalchemy_event

from oscar_manager.domain.service import MinioDefault, Service, normalise_new, parse_service
from oscar_manager.operations import Database
from oscar_manager.operations.dispatch import Dispatcher
from oscar_manager.operations.intake import Intake
from oscar_manager.registry import NewEvent, Transaction, WriteBatch
from tests.integration.test_dispatch import FlakyBackend
from tests.support.factories import service_body

pytestmark = pytest.mark.asyncio


async def stored_service(database: Database) -> Service:
    service = normalise_new(
        parse_service(service_body()),
        owner="o",
        namespace="ns",
        minio=MinioDefault(endpoint="", region="", verify=True),
    )
    async with database.transaction() as tx:
        await tx.services.add(service)
    return service


def commits(database: Database) -> list[int]:
    """Counts the commits of the database's writers from now on (one item each)."""
    seen: list[int] = []
    sqlalchemy_event.listen(database.engine.sync_engine, "commit", lambda _connection: seen.append(1))
    return seen


async def statuses(database: Database) -> dict[str, int]:
    async with database.reading() as tx:
        return await tx.events.counts()


async def settled(database: Database, expected: dict[str, int]) -> None:
    for _ in range(300):
        if await statuses(database) == expected:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(await statuses(database))


def claiming_dispatcher(database: Database, backend: FlakyBackend) -> Dispatcher:
    dispatcher = Dispatcher(database, backend, max_attempts=3)
    dispatcher.claiming = True
    return dispatcher


async def test_events_of_concurrent_requests_are_recorded_and_claimed_in_one_transaction(
    database: Database,
) -> None:
    service = await stored_service(database)
    backend = FlakyBackend(failures=0)
    dispatcher = claiming_dispatcher(database, backend)
    intake = Intake(database, dispatch=dispatcher.claim_after_writes)
    await intake.invocation(service=service, body=b"aGVsbG8=", idempotency_key=None)  # reads its marks
    await settled(database, {"done": 1})
    committed = commits(database)
    accepted = await asyncio.gather(
        *(
            intake.invocation(service=service, body=f"e{i}".encode().hex().encode(), idempotency_key=str(i))
            for i in range(3)
        )
    )
    assert len(committed) == 1  # the three events and their claim
    assert await statuses(database) == {"claimed": 3, "done": 1}
    await settled(database, {"done": 4})
    assert len(committed) == 2  # and their completion, together
    assert sorted(backend.accepted[1:]) == sorted(a.job_ids[0] for a in accepted)
    await dispatcher.stop()


async def test_a_lone_event_costs_one_commit_for_its_record_and_claim(database: Database) -> None:
    service = await stored_service(database)
    backend = FlakyBackend(failures=0)
    dispatcher = claiming_dispatcher(database, backend)
    intake = Intake(database, dispatch=dispatcher.claim_after_writes)
    committed = commits(database)
    accepted = await intake.invocation(service=service, body=b"aGVsbG8=", idempotency_key=None)
    assert len(committed) == 1
    await settled(database, {"done": 1})
    assert backend.accepted == accepted.job_ids
    await dispatcher.stop()


async def test_an_error_in_one_batched_write_reaches_only_its_caller_and_the_others_are_dispatched(
    database: Database,
) -> None:
    await stored_service(database)
    backend = FlakyBackend(failures=0)
    dispatcher = claiming_dispatcher(database, backend)

    async def write_many(tx: Transaction, keys: list[str]) -> list[bool]:
        if "bad" in keys:
            raise ValueError("a bad event")
        events = [NewEvent(dedup_key=k, service="cowsay", job_id=f"cowsay-{k}", payload=b"{}") for k in keys]
        return await tx.events.enqueue_many(events)

    batch: WriteBatch[str, bool] = WriteBatch(
        database, write_many, after_queued=dispatcher.claim_after_writes
    )
    results: tuple[Any, ...] = await asyncio.gather(
        batch.add(["a"]), batch.add(["bad"]), batch.add(["b"]), return_exceptions=True
    )
    assert results[0] == [True]
    assert isinstance(results[1], ValueError)
    assert results[2] == [True]
    await settled(database, {"done": 2})
    assert sorted(backend.accepted) == ["cowsay-a", "cowsay-b"]
    await dispatcher.stop()


async def test_nothing_is_lost_when_the_claim_in_the_intakes_transaction_fails(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim fails (its service lookup breaks): the events are recorded all the same, and the
    dispatch loop is woken to claim them."""
    service = await stored_service(database)
    backend = FlakyBackend(failures=0)
    dispatcher = claiming_dispatcher(database, backend)
    woken: list[int] = []
    dispatcher.wake = lambda: woken.append(1)
    intake = Intake(database, dispatch=dispatcher.claim_after_writes)

    async def broken_lookup(name: str) -> Service | None:
        raise RuntimeError("the lookup broke")

    monkeypatch.setattr(database, "service", broken_lookup)
    accepted = await asyncio.gather(
        intake.invocation(service=service, body=b"aGVsbG8=", idempotency_key="1"),
        intake.invocation(service=service, body=b"aGVsbG8=", idempotency_key="2"),
    )
    assert [a.new for a in accepted] == [1, 1]
    for _ in range(100):
        if woken:
            break
        await asyncio.sleep(0.01)
    assert woken
    assert await statuses(database) == {"pending": 2}
    monkeypatch.undo()
    assert await dispatcher.dispatch_once() == 2
    assert await statuses(database) == {"done": 2}
    assert len(backend.accepted) == 2
    await dispatcher.stop()


async def test_the_loop_goes_again_at_once_only_when_a_claim_ran_out_of_slots(database: Database) -> None:
    """A claim that took every due event asks for no other round (which would find nothing, in a
    transaction of its own); one cut short by the backend's slots does."""
    service = await stored_service(database)
    intake = Intake(database, dispatch=lambda: None)
    for i in range(13):
        await intake.invocation(service=service, body=b"aGVsbG8=", idempotency_key=str(i))
    backend = FlakyBackend(failures=0)  # 10 slots
    dispatcher = Dispatcher(database, backend, max_attempts=3)
    woken: list[int] = []
    dispatcher.wake = lambda: woken.append(1)
    assert await dispatcher.dispatch_round() == 10  # more may be due
    await settled(database, {"done": 10, "pending": 3})
    assert woken  # slots freed while events waited
    woken.clear()
    assert await dispatcher.dispatch_round() == 0  # took the last 3: nothing more due
    await settled(database, {"done": 13})
    assert not woken  # no slot was waited for
    await dispatcher.stop()
