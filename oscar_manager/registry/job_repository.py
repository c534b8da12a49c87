"""The job rows: prepared for each dispatch, started, finished with their copied log, listed and deleted.

Like every repository, it flushes but never commits: the transaction belongs to the caller
(``Database.transaction``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, delete, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from oscar_manager.domain import logtimes
from oscar_manager.domain.jobs import JobLog, JobOutcome, JobRecord, JobStatus
from oscar_manager.registry.hot_statements import on_connection
from oscar_manager.registry.tables import EventRow, JobRow, aware

_FINISHED = [status.value for status in JobStatus if status.finished]

# Ids in one IN (...): well under SQLite's 32766 parameters a statement.
_IDS_PER_QUERY = 1000


# What a job's record is made of: a list reads these alone (not its log, which may be megabytes).
_RECORD = (
    JobRow.id,
    JobRow.service,
    JobRow.status,
    JobRow.created_at,
    JobRow.started_at,
    JobRow.finished_at,
    JobRow.exit_code,
    JobRow.attempts,
    JobRow.owner,
)


def _job(row: Any) -> JobRecord:
    """From a ``JobRow`` or a row of the ``_RECORD`` columns."""
    return JobRecord(
        id=row.id,
        service=row.service,
        status=JobStatus(row.status),
        created_at=aware(row.created_at),
        started_at=aware(row.started_at) if row.started_at else None,
        finished_at=aware(row.finished_at) if row.finished_at else None,
        exit_code=row.exit_code,
        attempts=row.attempts,
        owner=row.owner,
    )


@dataclass(frozen=True, slots=True)
class PreparedJob:
    job_id: str
    service: str
    event_id: int | None
    owner: str | None = None


class JobRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def prepare(self, jobs: list[PreparedJob], *, rerun: bool = True) -> None:
        """The job rows for (re)dispatched events: created, or, for another attempt, reset to Pending when
        it runs the job again from the start (``rerun``: a local job died with its manager); otherwise
        (a Kubernetes Job, created once under its name: the attempt finds it if it was) the row keeps the
        start and end reported for it, which are reported once. One executemany of an upsert."""
        if not jobs:
            return
        now = datetime.now(UTC)
        rows = [
            {
                "id": job.job_id,
                "service": job.service,
                "event_id": job.event_id,
                "status": JobStatus.PENDING.value,
                "attempts": 1,
                "created_at": now,
                "log": "",
                "owner": job.owner,
            }
            for job in jobs
        ]
        connection, hot = await on_connection(self._session)
        await connection.execute(hot.prepare if rerun else hot.prepare_kept, rows)

    async def mark_running_many(self, started: dict[str, datetime]) -> None:
        """Pending -> Running, with when each job started (one executemany); a late report never undoes
        a job's end."""
        if not started:
            return
        connection, hot = await on_connection(self._session)
        await connection.execute(hot.start, [{"job_id": job, "at": at} for job, at in started.items()])

    async def finish(self, job_id: str, *, outcome: JobOutcome) -> None:
        """The first end reported is kept: a Job seen again after a restart must not replace its copied log
        (its pod may be gone by then)."""
        await self._session.execute(
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.status.notin_(_FINISHED))
            .values(
                status=outcome.status.value,
                exit_code=outcome.exit_code,
                log=outcome.log,
                log_times=None if outcome.log_times is None else logtimes.encode(outcome.log_times),
                finished_at=outcome.finished_at,
                # As seen when it started; else the backend's word (a job can end before its start is seen).
                started_at=func.coalesce(JobRow.started_at, outcome.started_at),
            )
        )

    async def fail_unqueued(self, *, log: str, at: datetime) -> int:
        """Jobs left Pending or Running by a previous process whose event is no longer queued (so nothing
        will run or end them): marked Failed with ``log``. Only for a backend whose jobs die with it."""
        queued = select(EventRow.id).where(
            EventRow.job_id == JobRow.id, EventRow.status.in_(("pending", "claimed"))
        )
        result = await self._session.execute(
            update(JobRow)
            .where(JobRow.status.notin_(_FINISHED), ~queued.exists())
            .values(status=JobStatus.FAILED.value, log=JobRow.log + log, finished_at=at)
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def requeue(self, job_id: str) -> None:
        """A job that will run again: Pending until then (never undoing an end)."""
        await self._session.execute(
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.status.notin_(_FINISHED))
            .values(status=JobStatus.PENDING.value)
        )

    async def ended(self, job_ids: list[str]) -> set[str]:
        """Those of ``job_ids`` that have finished."""
        ended: set[str] = set()
        for chunk in range(0, len(job_ids), _IDS_PER_QUERY):
            found = await self._session.scalars(
                select(JobRow.id).where(
                    JobRow.id.in_(job_ids[chunk : chunk + _IDS_PER_QUERY]), JobRow.status.in_(_FINISHED)
                )
            )
            ended.update(found)
        return ended

    async def get(self, service: str, job_id: str) -> JobRecord | None:
        row = await self._session.get(JobRow, job_id)
        return _job(row) if row is not None and row.service == service else None

    async def counts(self) -> dict[str, int]:
        """Jobs of every service by status (``Succeeded``...)."""
        rows = await self._session.execute(select(JobRow.status, func.count()).group_by(JobRow.status))
        return {status: int(count) for status, count in rows}

    async def log(self, service: str, job_id: str) -> JobLog | None:
        row = await self._session.get(JobRow, job_id)
        if row is None or row.service != service:
            return None
        return JobLog(
            text=row.log,
            times=None if row.log_times is None else logtimes.decode(row.log_times),
            fallback=aware(row.finished_at or row.started_at or row.created_at),
        )

    @staticmethod
    def _listing(service: str, after: tuple[datetime, str] | None, owner: str | None = None) -> Any:
        condition = JobRow.service == service
        if owner is not None:
            condition = and_(condition, JobRow.owner == owner)
        if after is not None:
            # A row value: both databases walk ix_jobs_service_created_at_id from the cursor on (with
            # "created_at < c OR (created_at = c AND id < i)" they walked it from the newest job).
            condition = and_(condition, tuple_(JobRow.created_at, JobRow.id) < tuple_(*after))
        return condition

    async def page(
        self, service: str, *, limit: int, after: tuple[datetime, str] | None, owner: str | None = None
    ) -> list[JobRecord]:
        """Newest first; ``after`` is the (created_at, id) of the last job of the previous page. With
        ``owner``, only the jobs that user started."""
        query = (
            select(*_RECORD)
            .where(self._listing(service, after, owner))
            .order_by(JobRow.created_at.desc(), JobRow.id.desc())
            .limit(limit)
        )
        return [_job(row) for row in await self._session.execute(query)]

    async def count(
        self,
        service: str,
        *,
        after: tuple[datetime, str] | None = None,
        owner: str | None = None,
        at_most: int | None = None,
    ) -> int:
        """The jobs :meth:`page` would list from ``after`` on, all of them; with ``at_most``, counted no
        further than that (a count costs a walk over the index entries it counts)."""
        counted = select(JobRow.id).where(self._listing(service, after, owner))
        if at_most is not None:
            counted = counted.limit(at_most)
        query = select(func.count()).select_from(counted.subquery())
        return int(await self._session.scalar(query) or 0)

    async def fill_owner(self, job_id: str, owner: str) -> None:
        """The job becomes ``owner``'s if it has none yet (``EventRepository.fill_owner``)."""
        await self._session.execute(
            update(JobRow).where(JobRow.id == job_id, JobRow.owner.is_(None)).values(owner=owner)
        )

    async def delete(self, service: str, job_id: str) -> bool:
        result = await self._session.execute(
            delete(JobRow).where(JobRow.service == service, JobRow.id == job_id).returning(JobRow.id)
        )
        return result.scalar_one_or_none() is not None

    async def delete_where(
        self, service: str, *, statuses: list[JobStatus] | None, owner: str | None = None
    ) -> list[str]:
        query = delete(JobRow).where(JobRow.service == service)
        if owner is not None:
            query = query.where(JobRow.owner == owner)
        if statuses is not None:
            query = query.where(JobRow.status.in_([status.value for status in statuses]))
        result = await self._session.execute(query.returning(JobRow.id))
        return list(result.scalars())

    async def unfinished(self, *, service: str) -> list[JobRecord]:
        rows = await self._session.scalars(
            select(JobRow).where(
                JobRow.service == service,
                JobRow.status.in_([JobStatus.PENDING.value, JobStatus.RUNNING.value]),
            )
        )
        return [_job(row) for row in rows]
