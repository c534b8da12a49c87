"""Turn recorded events into jobs on the backend, with retries and crash recovery."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from oscar_manager.backends.base import Backend, BackendUnavailable, JobRequest, SubmissionRefused
from oscar_manager.domain.jobs import JobOutcome, JobStatus
from oscar_manager.domain.service import Service
from oscar_manager.operations.ratelimit import RateLimiter
from oscar_manager.registry import Database, Transaction
from oscar_manager.registry.event_repository import ClaimedEvent
from oscar_manager.registry.job_repository import PreparedJob

log = logging.getLogger(__name__)

MAX_BATCH = 64
# How long the completion of submitted events may wait to ride in the transaction of another write (the
# next intake, usually): until then they stay claimed, which only a restart would notice (their Jobs are
# made again, and answer 409: done).
COMPLETION_WAIT = 0.05


def backoff(attempt: int) -> float:
    """Seconds before retry ``attempt`` + 1: 1, 2, 4 ... capped at five minutes."""
    return float(min(2 ** (attempt - 1), 300))


_ORPHAN_LOG = "the manager stopped while this job was under way, and nothing queued it again\n"


async def recover(database: Database, *, jobs_die_with_manager: bool = False) -> int:
    """At start-up: events claimed and never finished by a manager that is gone go back to the queue.

    A manager alone on its database (SQLite: ``serve`` locks the file) releases every claim at once, all
    left by a run of its own. Replicas sharing PostgreSQL release only lapsed claims (a live replica
    renews its own); the others lapse later and the lease keeper (:meth:`Dispatcher.keep_leases`)
    releases them then.

    A job of the local executor dies with the manager, so it is run again (its row goes back to Pending
    when it is claimed); one left Pending or Running with no event to run it again is marked Failed, so
    none stays Running for ever. A Kubernetes Job that was created answers 409 to the resubmission, which
    counts as done (its watcher reports its end).
    """
    async with database.transaction() as tx:
        events = tx.events
        released = await (events.release_claimed() if database.alone else events.release_lapsed())
        orphans = (
            await tx.jobs.fail_unqueued(log=_ORPHAN_LOG, at=datetime.now(UTC)) if jobs_die_with_manager else 0
        )
    if released:
        log.info("recovered %d event(s) left claimed by a manager that stopped", released)
    if orphans:
        log.warning("marked %d job(s) left unfinished by a previous run as Failed", orphans)
    return released


async def _claim(
    tx: Transaction,
    *,
    limit: int,
    lookup: Callable[[str], Awaitable[Service | None]],
    replica: str,
    lease: float,
    rerun: bool,
) -> tuple[int, list[tuple[ClaimedEvent, Service]]]:
    """Claim up to ``limit`` events and prepare their job rows; events of services gone are failed.
    Returns how many were claimed, and those to submit with their service. ``rerun``: another attempt
    runs a job again from the start (see ``JobRepository.prepare``).

    Services come from ``lookup``: the database's cache, which a committed change to services clears (a
    claim comes after every event, so reading and validating the definition each time cost more than the
    claim itself)."""
    claimed = await tx.events.claim(limit=limit, replica=replica, lease=lease)
    services: dict[str, Service | None] = {}
    ready: list[tuple[ClaimedEvent, Service]] = []
    for event in claimed:
        if event.service not in services:
            services[event.service] = await lookup(event.service)
        service = services[event.service]
        if service is None:
            await tx.events.fail(event.id, error=f"service {event.service!r} no longer exists")
            continue
        ready.append((event, service))
    if ready:
        await tx.jobs.prepare(
            [
                PreparedJob(job_id=event.job_id, service=event.service, event_id=event.id, owner=event.owner)
                for event, _service in ready
            ],
            rerun=rerun,
        )
    return len(claimed), ready


class Dispatcher:
    """``limiter``: submissions a second at most (none: no limit), beside the backend's own bound on
    submissions in flight (``free_slots``). Claims are ``replica``'s, each for ``lease`` seconds, renewed
    by :meth:`keep_leases` while this process lives."""

    def __init__(
        self,
        database: Database,
        backend: Backend,
        *,
        max_attempts: int,
        limiter: RateLimiter | None = None,
        replica: str = "",
        lease: float = 30.0,
    ) -> None:
        self._database = database
        self._backend = backend
        self._max_attempts = max_attempts
        self.replica = replica
        self.lease = lease
        self._rate = limiter if limiter is not None else RateLimiter(0)
        self._handing = 0  # claimed, not yet handed to the backend (waiting for the rate limit)
        self._batches: set[asyncio.Task[None]] = set()
        # Whether the last claim had fewer slots than events due (or none): only then does a slot freed
        # call for another claim at once.
        self._cut_short = False
        self._next_claim: asyncio.Future[tuple[int, list[tuple[ClaimedEvent, Service]]]] | None = None
        # Called when a claim may find more (slots freed while events waited): the dispatch loop's wake-up
        # (set by the runtime).
        self.wake: Callable[[], None] = lambda: None
        # Whether :meth:`claim_after_writes` claims: set by the runtime while dispatching is on.
        self.claiming = False

    def _free_slots(self) -> int:
        return min(self._backend.free_slots() - self._handing, MAX_BATCH)

    async def _claim_due(self, tx: Transaction) -> tuple[int, list[tuple[ClaimedEvent, Service]]]:
        """Claim as many due events as there are slots, counted as the claim runs (so that claims queued
        together do not take the same slots twice)."""
        slots = self._free_slots()
        if slots <= 0:
            self._cut_short = True
            return 0, []
        # A durable submission (a Kubernetes Job) claimed again may have been made, even have ended, under
        # a replica that died before recording it done: its row keeps what the job watcher reported.
        claimed, ready = await _claim(
            tx,
            limit=slots,
            lookup=self._database.service,
            replica=self.replica,
            lease=self.lease,
            rerun=not self._backend.durable_submissions,
        )
        self._cut_short = claimed == slots
        # They hold slots until handed to the backend (after the rate limit), unless this is rolled back.
        self._handing += len(ready)
        tx.on_rollback(lambda: self._release(len(ready)))
        return claimed, ready

    def _release(self, slots: int) -> None:
        self._handing -= slots

    async def _claim_free_slots(self) -> tuple[int, list[tuple[ClaimedEvent, Service]]]:
        if self._free_slots() <= 0:
            self._cut_short = True
            return 0, []
        return await self._database.write(self._claim_due)

    def claim_after_writes(self) -> None:
        """Claim at the end of the next group of writes, in their transaction, and submit what it took
        once that commits: the intake calls this as it queues its events, so that one transaction
        records and claims them (rather than a claim of its own after theirs)."""
        if not self.claiming:
            return
        claim = self._database.queue_write_last(self._claim_due)
        if claim is not self._next_claim:  # not asked for already in this group
            self._next_claim = claim
            claim.add_done_callback(self._claimed_after_writes)

    def _claimed_after_writes(
        self, claim: asyncio.Future[tuple[int, list[tuple[ClaimedEvent, Service]]]]
    ) -> None:
        if claim.cancelled() or not self.claiming:  # stopping: what it claimed is handed back
            return
        if claim.exception() is not None:
            log.warning(
                "a claim after the intake failed (%s); the dispatch loop tries again", claim.exception()
            )
            self.wake()
            return
        _claimed, ready = claim.result()
        self._submit_in_background(ready)
        if self._cut_short:
            self.wake()

    def slot_freed(self) -> None:
        """A submission or a job ended: claim again if events were left waiting for slots."""
        if self._cut_short:
            self.wake()

    async def dispatch_once(self) -> int:
        """Claim what the backend can take, submit it and record the outcome; return how many events
        were claimed."""
        claimed, ready = await self._claim_free_slots()
        await self._submit_all(ready)
        return claimed

    async def dispatch_more(self) -> int:
        """As :meth:`dispatch_once`, but the claimed batch is submitted in the background: the next
        claim (for slots freed meanwhile) need not wait for the slowest submission of this batch. For the
        dispatch loop; :meth:`stop` ends what is under way."""
        claimed, ready = await self._claim_free_slots()
        self._submit_in_background(ready)
        return claimed

    async def dispatch_round(self) -> int:
        """The dispatch loop's round: :meth:`dispatch_more`, counting the claimed events only when more
        may be due (the claim had fewer slots than events), so the loop goes again at once only then
        rather than claiming nothing in a transaction of its own after every batch."""
        claimed = await self.dispatch_more()
        return claimed if self._cut_short else 0

    def _submit_in_background(self, ready: list[tuple[ClaimedEvent, Service]]) -> None:
        if ready:
            task = asyncio.create_task(self._submit_all(ready), name="dispatch-batch")
            self._batches.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Its events stay claimed until handed back at stop or released at the next start.
            log.error("a dispatch batch failed: %r", task.exception(), exc_info=task.exception())

    async def keep_leases(self) -> int:
        """This replica's claims renewed; claims whose lease lapsed (a replica that died) back to the
        queue, and the dispatch loop woken for them. For a loop every third of a lease."""

        async def renew_and_release(tx: Transaction) -> int:
            await tx.events.renew_leases(self.replica, lease=self.lease)
            return await tx.events.release_lapsed()

        released = await self._database.write(renew_and_release)
        if released:
            log.warning(
                "%d event(s) claimed by a manager that stopped renewing its claims: queued again", released
            )
            self.wake()
        return 0  # never "more to do at once": the next round comes after the interval

    async def hand_back(self) -> int:
        """This replica's claims back to the queue (it is stopping, its jobs stopped): another replica
        takes them at once, or this one when it starts again."""
        return await self._database.write(lambda tx: tx.events.hand_back(self.replica))

    async def stop(self) -> None:
        """Cancel the batches under way: their events stay claimed until :meth:`hand_back`; a Kubernetes
        Job created meanwhile answers 409 to its resubmission, which counts as done."""
        batches = list(self._batches)
        for task in batches:
            task.cancel()
        await asyncio.gather(*batches, return_exceptions=True)

    async def _submit_all(self, ready: list[tuple[ClaimedEvent, Service]]) -> None:
        # All at once: a Kubernetes API round trip each, which need not wait for one another.
        failures = await asyncio.gather(*(self._submit(event, service) for event, service in ready))
        submitted = [
            event.id for (event, _service), failure in zip(ready, failures, strict=True) if failure is None
        ]
        if submitted and self._backend.durable_submissions:
            complete = self._database.queue_write_later(
                lambda tx: tx.events.complete(submitted), within=COMPLETION_WAIT
            )
            await complete
        for (event, _service), failure in zip(ready, failures, strict=True):
            if failure is not None:
                await self._failed_submission(event, failure[0], final=failure[1])

    async def _submit(self, event: ClaimedEvent, service: Service) -> tuple[str, bool] | None:
        """None once submitted; else why not, and whether that is final."""
        request = JobRequest(
            job_id=event.job_id, service=service, payload=event.payload, attempt=event.attempts
        )
        try:
            await self._rate.acquire()
        finally:
            # The backend counts it in flight from the start of submit (before its first await).
            self._handing -= 1
        try:
            await self._backend.submit(request)
        except BackendUnavailable as exc:
            return exc.message, False
        except SubmissionRefused as exc:
            return exc.message, True
        finally:
            self.slot_freed()
        return None

    async def _failed_submission(self, event: ClaimedEvent, reason: str, *, final: bool = False) -> None:
        if event.attempts < self._max_attempts and not final:
            delay = backoff(event.attempts)
            log.warning("job %s not submitted (%s); retry in %.0f s", event.job_id, reason, delay)
            await self._database.write(lambda tx: tx.events.retry(event.id, error=reason, delay=delay))
            return
        log.error("job %s given up after %d attempts: %s", event.job_id, event.attempts, reason)
        message = f"the job could not be submitted after {event.attempts} attempts: {reason}\n"
        outcome = JobOutcome(
            status=JobStatus.FAILED, exit_code=None, log=message, finished_at=datetime.now(UTC)
        )

        async def give_up(tx: Transaction) -> None:
            await tx.events.fail(event.id, error=reason)
            await tx.jobs.finish(event.job_id, outcome=outcome)

        await self._database.write(give_up)
