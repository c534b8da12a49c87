"""Job records: progress reported by backends, listing, logs and deletion."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from oscar_manager.backends.base import Backend
from oscar_manager.domain import logtimes
from oscar_manager.domain.access import can_change
from oscar_manager.domain.jobs import JobLog, JobOutcome, JobRecord, JobStatus
from oscar_manager.domain.principal import Principal
from oscar_manager.errors import BadRequest, NotFound
from oscar_manager.operations import services
from oscar_manager.operations.dispatch import backoff
from oscar_manager.registry import Database, Transaction

logger = logging.getLogger(__name__)

# At most this long between attempts to record a job's end.
_MAX_RECORD_DELAY = 30.0

# How long a job's start may wait to ride in the transaction of another write (an intake, a claim): a
# start alone is not worth a commit of its own, and the job shows Running that much later at most.
START_WAIT = 0.05

# Job logs read at a time when recent ones are gathered (a log may hold up to the output budget).
_LOG_BATCH = 20

# A page's ``remaining_jobs`` is counted up to this many (under a millisecond of index walk; 10,000 took
# 2-4 ms, a third of a page on PostgreSQL); past it the field is left out, as Kubernetes leaves
# ``remainingItemCount`` out when it does not know it. No client reads it: oscar-cli decodes it and never
# uses it, the dashboard and oscar-python pass it by, and upstream lists Jobs by label, for which
# Kubernetes never sets it.
REMAINING_COUNTED = 1_000


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.error("a job progress update was not recorded: %s", future.exception())


class DatabaseJobReporter:
    """Backends report here. Updates go through the database's group commit, so many of them (and the
    intake's events) share one transaction."""

    def __init__(
        self, database: Database, *, complete_events_on_finish: bool, wake: Callable[[], None] = lambda: None
    ) -> None:
        self._database = database
        self._complete_events = complete_events_on_finish
        # Called once a finished job is recorded: a slot is free, so the dispatcher may claim more now.
        self._wake = wake
        self._starts: dict[str, datetime] | None = None  # job -> started at, waiting for their write

    async def started(self, job_id: str, *, at: datetime) -> None:
        """Not awaited: a backend reports the next job at once. Starts reported while a write of earlier
        ones is queued join it (one statement). Updates are committed in the order they were made, and a
        start never overwrites an end. One lost in a crash is found again: a local job runs again after a
        restart, and the Kubernetes watcher lists every Job then."""
        if self._starts is None:
            starts: dict[str, datetime] = {}
            self._starts = starts
            written = self._database.queue_write_later(
                lambda tx: self._write_starts(tx, starts), within=START_WAIT
            )
            written.add_done_callback(_log_failure)
        self._starts[job_id] = at

    async def _write_starts(self, tx: Transaction, starts: dict[str, datetime]) -> None:
        if self._starts is starts:
            self._starts = None  # starts from now on go in the next write
        await tx.jobs.mark_running_many(starts)

    async def finished(self, job_id: str, *, outcome: JobOutcome) -> None:
        """Returns once the end is committed: retried until it is (a full disk, the database away), so a
        job never stays Running with its event claimed while the manager runs on."""

        async def record(tx: Transaction) -> None:
            await tx.jobs.finish(job_id, outcome=outcome)
            if self._complete_events:
                await tx.events.complete_for_job(job_id)

        await self._write_until_done(record, what=f"the end of job {job_id}")
        self._wake()

    async def retry_later(self, job_id: str, *, reason: str) -> None:
        """Back to the queue after a backoff (by the attempts so far), the job Pending meanwhile; never
        failed for good, since the cause is the store and not the script."""

        async def requeue(tx: Transaction) -> None:
            delay = backoff(max(await tx.events.attempts_for_job(job_id), 1))
            await tx.events.retry_for_job(job_id, error=reason, delay=delay)
            await tx.jobs.requeue(job_id)

        await self._write_until_done(requeue, what=f"the retry of job {job_id}")
        self._wake()

    async def _write_until_done(self, work: Callable[[Transaction], Awaitable[None]], *, what: str) -> None:
        delay = 1.0
        while True:
            try:
                await self._database.write(work)
                return
            except Exception as exc:
                logger.warning("%s was not recorded (%s); retrying in %.0f s", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RECORD_DELAY)

    async def ended(self, job_ids: list[str]) -> set[str]:
        async with self._database.reading() as tx:
            return await tx.jobs.ended(job_ids)


async def _jobs_scope(tx: Transaction, *, principal: Principal, service: str) -> str | None:
    """Whose jobs of the service the caller may see and delete: everyone's (None) for its owner and the
    admin; for another user allowed on the service, only those they started (as upstream): by ``/job``, or
    by an upload with their own MinIO keys (``operations.intake``). 404 for no service, 403 for a service
    the caller may not see."""
    found = await services.read(tx, principal=principal, name=service)
    return None if can_change(principal, found) else principal.uid


async def _job(tx: Transaction, *, principal: Principal, service: str, job_id: str) -> JobRecord:
    owner = await _jobs_scope(tx, principal=principal, service=service)
    job = await tx.jobs.get(service, job_id)
    # Someone else's job is "not found" rather than forbidden: its name tells nothing then.
    if job is None or (owner is not None and job.owner != owner):
        raise NotFound(f"job {job_id!r} of service {service!r} not found")
    return job


@dataclass(frozen=True, slots=True)
class JobPage:
    jobs: list[JobRecord]
    next_page: str | None
    remaining: int | None  # None: more than REMAINING_COUNTED, or none (no next page)


def page_token(created_at: datetime, job_id: str) -> str:
    """The ``next_page`` that continues after the job ``job_id`` created at ``created_at``."""
    raw = f"{created_at.isoformat()}|{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(token: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        created, _, job_id = raw.partition("|")
        return datetime.fromisoformat(created), job_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadRequest(f"invalid page token {token!r}") from None


async def page(tx: Transaction, *, principal: Principal, service: str, page: str, limit: int) -> JobPage:
    owner = await _jobs_scope(tx, principal=principal, service=service)
    after = _decode_cursor(page) if page else None
    jobs = await tx.jobs.page(service, limit=limit + 1, after=after, owner=owner)
    has_more = len(jobs) > limit
    jobs = jobs[:limit]
    if not has_more:
        return JobPage(jobs=jobs, next_page=None, remaining=None)
    last = (jobs[-1].created_at, jobs[-1].id)
    counted = await tx.jobs.count(service, after=last, owner=owner, at_most=REMAINING_COUNTED + 1)
    return JobPage(
        jobs=jobs,
        next_page=page_token(*last),
        remaining=counted if counted <= REMAINING_COUNTED else None,
    )


async def log(
    tx: Transaction, *, principal: Principal, service: str, job_id: str, timestamps: bool = False
) -> str:
    """The job's log; with ``timestamps`` each line prefixed by its RFC 3339 time, as Kubernetes does."""
    await _job(tx, principal=principal, service=service, job_id=job_id)
    kept = await tx.jobs.log(service, job_id)
    if kept is None:
        raise NotFound(f"job {job_id!r} of service {service!r} not found")
    if not timestamps:
        return kept.text
    return logtimes.stamped(kept.text, kept.times, fallback=logtimes.stamp_of(kept.fallback))


async def finished_logs(
    tx: Transaction, *, principal: Principal, service: str, enough: Callable[[list[JobLog]], bool]
) -> list[JobLog]:
    """The logs of the service's finished jobs the caller may see, newest first, read a page at a time
    until ``enough`` says so or there are no more."""
    owner = await _jobs_scope(tx, principal=principal, service=service)
    found: list[JobLog] = []
    after: tuple[datetime, str] | None = None
    while not enough(found):
        batch = await tx.jobs.page(service, limit=_LOG_BATCH, after=after, owner=owner)
        for job in batch:
            kept = await tx.jobs.log(service, job.id) if job.status.finished else None
            if kept is not None:
                found.append(kept)
        if len(batch) < _LOG_BATCH:
            break
        after = (batch[-1].created_at, batch[-1].id)
    return found


async def delete(
    tx: Transaction, *, principal: Principal, backend: Backend, service: str, job_id: str
) -> None:
    await _job(tx, principal=principal, service=service, job_id=job_id)
    await backend.cancel(job_id)
    await tx.jobs.delete(service, job_id)
    await tx.events.complete_for_job(job_id)


async def delete_many(
    tx: Transaction, *, principal: Principal, backend: Backend, service: str, everything: bool
) -> list[str]:
    """Delete the service's succeeded jobs (as upstream), or all of them with ``everything``."""
    owner = await _jobs_scope(tx, principal=principal, service=service)
    statuses = None if everything else [JobStatus.SUCCEEDED]
    deleted = await tx.jobs.delete_where(service, statuses=statuses, owner=owner)
    for job_id in deleted:
        await backend.cancel(job_id)
        await tx.events.complete_for_job(job_id)
    return deleted
