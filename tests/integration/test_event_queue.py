"""The intake queue and the job rows as the dispatcher drives them (SQLite and PostgreSQL): what a claim
takes, in which order, and that concurrent claimers never share an event."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from oscar_manager.domain.jobs import JobOutcome, JobStatus
from oscar_manager.registry import Database, NewEvent
from oscar_manager.registry.hot_statements import hot_statements
from oscar_manager.registry.job_repository import PreparedJob

pytestmark = pytest.mark.asyncio


def event(index: int, *, owner: str | None = None) -> NewEvent:
    return NewEvent(
        dedup_key=f"key-{index}",
        service="cowsay",
        job_id=f"cowsay-{index:04d}",
        payload=f"payload {index}".encode(),
        owner=owner,
    )


async def enqueue(database: Database, events: list[NewEvent]) -> list[bool]:
    async with database.transaction() as tx:
        return await tx.events.enqueue_many(events)


async def claim(database: Database, limit: int) -> list[int]:
    async with database.transaction() as tx:
        return [claimed.id for claimed in await tx.events.claim(limit=limit)]


async def test_a_claim_takes_the_oldest_due_events_up_to_its_limit(database: Database) -> None:
    await enqueue(database, [event(index, owner=f"user{index}") for index in range(6)])
    async with database.transaction() as tx:
        first = await tx.events.claim(limit=4)
        assert [claimed.job_id for claimed in first] == [f"cowsay-{index:04d}" for index in range(4)]
        assert [claimed.payload for claimed in first] == [f"payload {index}".encode() for index in range(4)]
        assert [claimed.owner for claimed in first] == [f"user{index}" for index in range(4)]
        assert {claimed.attempts for claimed in first} == {1}
        # The first goes back for later, the second for now.
        await tx.events.retry(first[0].id, error="busy", delay=3600)
        await tx.events.retry(first[1].id, error="busy", delay=0)
    async with database.transaction() as tx:
        again = await tx.events.claim(limit=10)
    assert [claimed.job_id for claimed in again] == ["cowsay-0001", "cowsay-0004", "cowsay-0005"]
    assert [claimed.attempts for claimed in again] == [2, 1, 1]
    assert await claim(database, 10) == []
    async with database.reading() as tx:
        assert await tx.events.counts() == {"claimed": 5, "pending": 1}


async def test_concurrent_claimers_never_take_the_same_event(database: Database) -> None:
    """Two manager processes on one database (PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite: one writer at
    a time), each with several claims at once."""
    await enqueue(database, [event(index) for index in range(90)])
    other = Database(database.url)
    try:
        rounds = await asyncio.gather(*(claim(db, 4) for db in [database, other] * 15))
    finally:
        await other.dispose()
    taken = [event_id for claimed in rounds for event_id in claimed]
    assert len(taken) == len(set(taken)) == 90
    assert await claim(database, 10) == []


async def test_many_events_in_one_write_each_get_their_answer(database: Database) -> None:
    """More rows than SQLAlchemy puts in one statement; duplicates of earlier rows in the same write and
    of rows already recorded come back False."""
    assert await enqueue(database, [event(index) for index in range(0, 3000, 7)]) == [True] * 429
    events = [event(index) for index in range(3000)] + [event(5), event(3001)]
    answers = await enqueue(database, events)
    assert answers[:3000] == [index % 7 != 0 for index in range(3000)]
    assert answers[3000:] == [False, True]
    async with database.reading() as tx:
        assert await tx.events.counts() == {"pending": 3001}


async def test_preparing_a_job_again_resets_it_for_another_attempt(database: Database) -> None:
    job = PreparedJob(job_id="cowsay-0001", service="cowsay", event_id=1, owner="alice")
    async with database.transaction() as tx:
        await tx.jobs.prepare([job])
    async with database.reading() as tx:
        created = await tx.jobs.get("cowsay", "cowsay-0001")
    assert created is not None
    assert (created.status, created.attempts, created.owner) == (JobStatus.PENDING, 1, "alice")
    ended = datetime.now(UTC)
    async with database.transaction() as tx:
        await tx.jobs.mark_running_many({"cowsay-0001": ended})
        await tx.jobs.finish(
            "cowsay-0001",
            outcome=JobOutcome(status=JobStatus.FAILED, exit_code=3, log="boom\n", finished_at=ended),
        )
        await tx.jobs.prepare([job, PreparedJob(job_id="cowsay-0002", service="cowsay", event_id=2)])
    async with database.reading() as tx:
        again = await tx.jobs.get("cowsay", "cowsay-0001")
        other = await tx.jobs.get("cowsay", "cowsay-0002")
    assert again is not None
    assert other is not None
    assert (again.status, again.attempts) == (JobStatus.PENDING, 2)
    assert (again.started_at, again.finished_at, again.exit_code) == (None, None, None)
    assert again.created_at == created.created_at
    assert (other.status, other.attempts, other.owner) == (JobStatus.PENDING, 1, None)


async def test_preparing_a_job_again_without_a_rerun_keeps_its_state(database: Database) -> None:
    """A Kubernetes Job dispatched again (its claim lapsed) is found where it is: its row counts the
    attempt and keeps the start and end reported for it."""
    started = datetime.now(UTC)
    jobs = [PreparedJob(job_id=f"cowsay-{index:04d}", service="cowsay", event_id=index) for index in range(3)]
    async with database.transaction() as tx:
        await tx.jobs.prepare(jobs, rerun=False)
        await tx.jobs.mark_running_many({"cowsay-0001": started, "cowsay-0002": started})
        await tx.jobs.finish(
            "cowsay-0002",
            outcome=JobOutcome(status=JobStatus.SUCCEEDED, exit_code=0, log="done\n", finished_at=started),
        )
        await tx.jobs.prepare(jobs, rerun=False)
    async with database.reading() as tx:
        found = [await tx.jobs.get("cowsay", job.job_id) for job in jobs]
        log = await tx.jobs.log("cowsay", "cowsay-0002")
    assert [(job.status, job.attempts) for job in found if job is not None] == [
        (JobStatus.PENDING, 2),
        (JobStatus.RUNNING, 2),
        (JobStatus.SUCCEEDED, 2),
    ]
    assert found[2] is not None
    assert (found[2].exit_code, found[2].finished_at is not None, found[2].started_at is not None) == (
        0,
        True,
        True,
    )
    assert log is not None
    assert log.text == "done\n"


async def test_done_and_started_touch_only_their_own_rows(database: Database) -> None:
    await enqueue(database, [event(index) for index in range(4)])
    claimed = await claim(database, 4)
    async with database.transaction() as tx:
        await tx.events.complete(claimed[1:3])
        await tx.jobs.prepare(
            [PreparedJob(job_id=f"cowsay-{index:04d}", service="cowsay", event_id=None) for index in range(3)]
        )
        await tx.jobs.finish(
            "cowsay-0002",
            outcome=JobOutcome(
                status=JobStatus.SUCCEEDED, exit_code=0, log="", finished_at=datetime.now(UTC)
            ),
        )
        # A late "started" for a job already ended does not undo its end.
        await tx.jobs.mark_running_many({"cowsay-0000": datetime.now(UTC), "cowsay-0002": datetime.now(UTC)})
    async with database.reading() as tx:
        assert await tx.events.counts() == {"claimed": 2, "done": 2}
        statuses = [await tx.jobs.get("cowsay", f"cowsay-{index:04d}") for index in range(3)]
    assert [job.status if job else None for job in statuses] == [
        JobStatus.RUNNING,
        JobStatus.PENDING,
        JobStatus.SUCCEEDED,
    ]


async def test_ended_names_the_finished_jobs_among_many(database: Database) -> None:
    """What the Kubernetes job watcher asks after a restart, for every Job still within its TTL."""
    ids = [f"cowsay-{index:04d}" for index in range(2500)]
    async with database.transaction() as tx:
        await tx.jobs.prepare([PreparedJob(job_id=job_id, service="cowsay", event_id=None) for job_id in ids])
        for job_id in (ids[3], ids[1500], ids[2499]):
            await tx.jobs.finish(
                job_id,
                outcome=JobOutcome(
                    status=JobStatus.FAILED, exit_code=1, log="", finished_at=datetime.now(UTC)
                ),
            )
        await tx.jobs.mark_running_many({ids[4]: datetime.now(UTC)})
    async with database.reading() as tx:
        assert await tx.jobs.ended([*ids, "cowsay-unknown"]) == {ids[3], ids[1500], ids[2499]}
        assert await tx.jobs.ended([]) == set()


async def test_a_claim_reads_the_backlog_in_due_order_from_an_index(database: Database) -> None:
    """However many events wait, a claim reads only those it takes: its plan has no sort. (Sorting the
    whole backlog for each claim made the dispatcher slower the further behind it was.)"""
    await enqueue(database, [event(index) for index in range(3000)])
    engine = database.engine
    dialect = engine.dialect.name
    compiled = hot_statements(dialect).claim.compile(dialect=engine.dialect)
    values = {"now": datetime.now(UTC), "limit": 8}
    parameters = tuple({**compiled.params, **values}[name] for name in compiled.positiontup or ())
    explain = "EXPLAIN QUERY PLAN " if dialect == "sqlite" else "EXPLAIN "
    async with engine.connect() as connection:
        if dialect == "postgresql":
            await connection.exec_driver_sql("ANALYZE events")
        plan = (await connection.exec_driver_sql(explain + str(compiled), parameters)).all()
    text = "\n".join(str(row[-1]) for row in plan)
    assert "ix_events_due" in text
    assert "TEMP B-TREE" not in text  # SQLite's sort
    assert "Sort" not in text  # PostgreSQL's
