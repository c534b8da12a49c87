"""The dispatcher: retries with backoff, giving up visibly, crash recovery (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from oscar_manager.backends.base import BackendUnavailable, JobReporter, JobRequest, SyncRequest
from oscar_manager.backends.exposed import Exposer
from oscar_manager.domain.cluster import ClusterOffers, NodeStatus
from oscar_manager.domain.jobs import JobOutcome, JobStatus
from oscar_manager.domain.service import MinioDefault, Service, normalise_new, parse_service
from oscar_manager.operations import Database, dispatch
from oscar_manager.operations.dispatch import Dispatcher, recover
from oscar_manager.operations.intake import Intake
from oscar_manager.operations.jobs import DatabaseJobReporter
from oscar_manager.operations.ratelimit import RateLimiter
from oscar_manager.supervisor.answer import SyncAnswer
from tests.support.factories import service_body

pytestmark = pytest.mark.asyncio


class FlakyBackend:
    """Refuses the first ``failures`` submissions, then records what it accepts."""

    def __init__(self, *, failures: int, durable: bool = True) -> None:
        self.durable_submissions = durable
        self.failures = failures
        self.accepted: list[str] = []
        self.attempts = 0

    async def start(self, reporter: JobReporter) -> None: ...

    async def stop(self) -> None: ...

    follows_jobs = False
    exposed: Exposer | None = None

    async def follow_jobs(self, up: Callable[[], None]) -> None: ...

    def free_slots(self) -> int:
        return 10

    async def submit(self, request: JobRequest) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise BackendUnavailable("the cluster is away")
        self.accepted.append(request.job_id)

    async def run_sync(self, request: SyncRequest) -> SyncAnswer:
        raise NotImplementedError

    async def cancel(self, job_id: str) -> None: ...

    async def prepare_service(self, service: Service, *, previous: Service | None = None) -> None: ...

    async def remove_service(self, service: Service) -> None: ...

    async def nodes(self) -> list[NodeStatus]:
        return []

    async def offers(self) -> ClusterOffers:
        return ClusterOffers()

    def describe(self) -> dict[str, Any]:
        return {}


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "backoff", lambda attempt: 0.0)


async def one_event(database: Database, *, fresh: bool = False) -> str:
    """An event of service cowsay (created if need be); ``fresh``: a new one each call."""
    service = normalise_new(
        parse_service(service_body()),
        owner="o",
        namespace="ns",
        minio=MinioDefault(endpoint="", region="", verify=True),
    )
    if await database.service(service.name) is None:
        async with database.transaction() as tx:
            await tx.services.add(service)
    accepted = await Intake(database, dispatch=lambda: None).invocation(
        service=service, body=b"aGVsbG8=", idempotency_key=uuid.uuid4().hex if fresh else None
    )
    return accepted.job_ids[0]


async def event_status(database: Database) -> dict[str, int]:
    async with database.transaction() as tx:
        return await tx.events.counts()


async def test_retried_until_accepted(database: Database) -> None:
    job_id = await one_event(database)
    backend = FlakyBackend(failures=2)
    dispatcher = Dispatcher(database, backend, max_attempts=5)
    for _ in range(3):
        assert await dispatcher.dispatch_once() == 1
    assert backend.accepted == [job_id]
    assert await event_status(database) == {"done": 1}
    assert await dispatcher.dispatch_once() == 0


async def test_gives_up_visibly_after_max_attempts(database: Database) -> None:
    job_id = await one_event(database)
    dispatcher = Dispatcher(database, FlakyBackend(failures=99), max_attempts=3)
    for _ in range(3):
        await dispatcher.dispatch_once()
    assert await dispatcher.dispatch_once() == 0
    assert await event_status(database) == {"failed": 1}
    async with database.transaction() as tx:
        job = await tx.jobs.get("cowsay", job_id)
        log = await tx.jobs.log("cowsay", job_id)
    assert job is not None
    assert job.status is JobStatus.FAILED
    assert log is not None
    assert "after 3 attempts" in log.text
    assert "the cluster is away" in log.text


async def test_local_submissions_stay_claimed_until_recovered(database: Database) -> None:
    job_id = await one_event(database)
    backend = FlakyBackend(failures=0, durable=False)
    first = Dispatcher(database, backend, max_attempts=3, replica="gone", lease=1.0)
    assert await first.dispatch_once() == 1
    # Not durable: the event stays claimed while the job lives in this process only.
    assert await event_status(database) == {"claimed": 1}
    if database.alone:
        assert await recover(database) == 1  # alone on SQLite: every claim is a previous run's
    else:
        # Several managers may share PostgreSQL: a claim under its lease may be a live replica's.
        assert await recover(database) == 0
        assert await event_status(database) == {"claimed": 1}
        await asyncio.sleep(1.1)
        assert await recover(database) == 1  # lapsed: its replica stopped renewing it
    again = FlakyBackend(failures=0, durable=False)
    assert await Dispatcher(database, again, max_attempts=3).dispatch_once() == 1
    assert again.accepted == [job_id]
    async with database.transaction() as tx:
        job = await tx.jobs.get("cowsay", job_id)
    assert job is not None
    assert job.attempts == 2


async def claims(database: Database) -> dict[str, str | None]:
    """The claimed events' jobs and the replica holding each."""
    async with database.reading() as tx:
        return await tx.events.holders()


async def test_a_live_replica_keeps_its_claims_and_a_dead_ones_go_back(database: Database) -> None:
    """Two replicas on one database: one claims and keeps renewing; the other's claims lapse, go back to
    the queue and are taken by the live one. Handing back at stop gives the rest away at once."""
    live_job = await one_event(database, fresh=True)
    live = Dispatcher(
        database, FlakyBackend(failures=0, durable=False), max_attempts=3, replica="a", lease=1.0
    )
    assert await live.dispatch_once() == 1
    dead_job = await one_event(database, fresh=True)
    dead = Dispatcher(
        database, FlakyBackend(failures=0, durable=False), max_attempts=3, replica="b", lease=1.0
    )
    assert await dead.dispatch_once() == 1
    assert await claims(database) == {live_job: "a", dead_job: "b"}

    for _ in range(3):  # past the lease, "a" renewing as its lease keeper does
        await asyncio.sleep(0.4)
        await live.keep_leases()
    assert await claims(database) == {live_job: "a"}  # "b"'s lapsed: back in the queue
    assert await event_status(database) == {"claimed": 1, "pending": 1}
    assert await live.dispatch_once() == 1
    assert await claims(database) == {live_job: "a", dead_job: "a"}

    assert await live.hand_back() == 2
    assert await claims(database) == {}
    assert await event_status(database) == {"pending": 2}


class HangingBackend(FlakyBackend):
    """Durable, and its submissions never return: a replica killed while creating its Jobs."""

    async def submit(self, request: JobRequest) -> None:
        self.accepted.append(request.job_id)
        await asyncio.Event().wait()


async def test_a_dead_replicas_job_already_ended_keeps_its_end_when_resubmitted(database: Database) -> None:
    """Kubernetes, several replicas: one creates a Job and dies before its event is recorded done; the
    leader's job watcher records the Job's end; the claim lapses and another replica submits the event
    again (409: done). The job keeps its end: the watcher reports each end once, so a row put back to
    Pending would stay Pending for good (as the replicas' test on the real control plane found)."""
    job_id = await one_event(database, fresh=True)
    dead = Dispatcher(database, HangingBackend(failures=0), max_attempts=3, replica="dead", lease=1.0)
    assert await dead.dispatch_more() == 1
    await asyncio.sleep(0)  # its submission under way: the Job is "created", the event still claimed
    ended = datetime.now(UTC)
    watcher = DatabaseJobReporter(database, complete_events_on_finish=False)
    await watcher.finished(
        job_id, outcome=JobOutcome(status=JobStatus.SUCCEEDED, exit_code=0, log="done\n", finished_at=ended)
    )

    live = Dispatcher(database, FlakyBackend(failures=0), max_attempts=3, replica="live", lease=1.0)
    await asyncio.sleep(1.1)  # the dead replica's lease lapses
    await live.keep_leases()
    assert await live.dispatch_once() == 1
    assert await event_status(database) == {"done": 1}
    async with database.reading() as tx:
        job = await tx.jobs.get("cowsay", job_id)
        log = await tx.jobs.log("cowsay", job_id)
    assert job is not None
    assert (job.status, job.exit_code, job.attempts) == (JobStatus.SUCCEEDED, 0, 2)
    assert job.finished_at is not None
    assert log is not None
    assert log.text == "done\n"
    await dead.stop()


async def test_events_of_deleted_services_fail_without_a_job(database: Database) -> None:
    await one_event(database)
    async with database.transaction() as tx:
        await tx.services.delete("cowsay")
    backend = FlakyBackend(failures=0)
    assert await Dispatcher(database, backend, max_attempts=3).dispatch_once() == 1
    assert backend.accepted == []
    assert await event_status(database) == {"failed": 1}


async def test_the_rate_limit_holds_submissions_back(database: Database) -> None:
    """OSCAR_KUBERNETES_RATE: with 3 submissions a second (bursts of 3), 10 events wait for the bucket
    until 7/3 s have passed on a virtual clock; all are submitted and completed."""
    clock = [0.0]

    async def sleep(seconds: float) -> None:
        clock[0] += seconds

    for _ in range(10):
        await one_event(database, fresh=True)
    backend = FlakyBackend(failures=0)
    limiter = RateLimiter(3, clock=lambda: clock[0], sleep=sleep)
    dispatcher = Dispatcher(database, backend, max_attempts=3, limiter=limiter)
    assert await dispatcher.dispatch_once() == 10
    assert len(backend.accepted) == 10
    assert clock[0] == pytest.approx((10 - 3) / 3)
    assert await event_status(database) == {"done": 10}


async def test_pipelined_dispatch_counts_claimed_events_against_the_slots(database: Database) -> None:
    """dispatch_more hands a batch to a task; until it is submitted its events hold slots, so the next
    round claims no more than the backend can take."""
    for _ in range(15):
        await one_event(database, fresh=True)
    backend = FlakyBackend(failures=0)  # 10 slots
    dispatcher = Dispatcher(database, backend, max_attempts=3)
    assert await dispatcher.dispatch_more() == 10
    assert await dispatcher.dispatch_more() == 0  # the first batch is not handed over yet

    async def settled(done: int) -> None:
        for _ in range(500):
            if await event_status(database) == {
                "done": done,
                **({"pending": 15 - done} if done < 15 else {}),
            }:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(await event_status(database))

    await settled(10)
    assert await dispatcher.dispatch_more() == 5
    await settled(15)
    assert sorted(backend.accepted) == sorted(set(backend.accepted))
    assert len(backend.accepted) == 15
    await dispatcher.stop()


async def test_a_batch_that_breaks_in_the_background_is_logged(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A submission failing in a way no backend error describes ends its batch's task; the error is
    logged (its events stay claimed until the next start) rather than lost with the task."""
    await one_event(database)
    backend = FlakyBackend(failures=0)

    async def broken(request: JobRequest) -> None:
        raise RuntimeError("a bug in the backend")

    backend.submit = broken  # type: ignore[method-assign]
    dispatcher = Dispatcher(database, backend, max_attempts=3)
    assert await dispatcher.dispatch_more() == 1
    for _ in range(200):
        if any("a dispatch batch failed" in record.message for record in caplog.records):
            break
        await asyncio.sleep(0.01)
    failed = [record for record in caplog.records if "a dispatch batch failed" in record.message]
    assert len(failed) == 1
    assert "a bug in the backend" in failed[0].getMessage()
    assert await event_status(database) == {"claimed": 1}
    await dispatcher.stop()


async def test_jobs_a_previous_process_left_unfinished_are_rerun_or_marked_failed(database: Database) -> None:
    """At start-up, with a backend whose jobs die with the manager: a job whose event is still claimed
    runs again (back to Pending); one left Running with no event to run it again (here its event was
    completed by hand) is marked Failed instead of staying Running for ever."""
    rerun = await one_event(database, fresh=True)
    orphan = await one_event(database, fresh=True)
    backend = FlakyBackend(failures=0, durable=False)
    # A process gone long enough for its claims' lease to have lapsed (on PostgreSQL that counts).
    assert await Dispatcher(database, backend, max_attempts=3, lease=0.0).dispatch_once() == 2
    async with database.transaction() as tx:
        await tx.jobs.mark_running_many({rerun: datetime.now(UTC), orphan: datetime.now(UTC)})
        await tx.events.complete_for_job(orphan)

    assert await recover(database, jobs_die_with_manager=True) == 1
    async with database.transaction() as tx:
        left = await tx.jobs.get("cowsay", orphan)
        log = await tx.jobs.log("cowsay", orphan)
    assert left is not None
    assert left.status is JobStatus.FAILED
    assert log is not None
    assert "the manager stopped" in log.text
    again = FlakyBackend(failures=0, durable=False)
    assert await Dispatcher(database, again, max_attempts=3).dispatch_once() == 1
    assert again.accepted == [rerun]
    async with database.transaction() as tx:
        job = await tx.jobs.get("cowsay", rerun)
    assert job is not None
    assert job.status is JobStatus.PENDING
