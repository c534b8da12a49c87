"""Every query of the registry, turning rows into domain objects and back.

Repositories flush but never commit: the transaction belongs to the caller (``Database.transaction``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from oscar_manager.domain import logtimes
from oscar_manager.domain.events import InputRoute
from oscar_manager.domain.jobs import JobLog, JobOutcome, JobRecord, JobStatus
from oscar_manager.domain.service import Service
from oscar_manager.errors import Conflict
from oscar_manager.registry.hot_statements import HotStatements, hot_statements
from oscar_manager.registry.tables import EventRow, JobRow, MarkRow, ServiceRow


def _definition(service: Service) -> dict[str, Any]:
    data = service.model_dump(mode="json", by_alias=True)
    data["environment"]["secrets"] = {}
    return data


def _to_service(row: ServiceRow) -> Service:
    data = dict(row.definition)
    environment = dict(data.get("environment") or {})
    environment["secrets"] = dict(row.secrets)
    data["environment"] = environment
    return Service.model_validate(data)


_FINISHED = [status.value for status in JobStatus if status.finished]

# Ids in one IN (...): well under SQLite's 32766 parameters a statement.
_IDS_PER_QUERY = 1000


class ServiceRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session
        self.changed = False  # a service was added, replaced or deleted in this transaction

    async def get(self, name: str) -> Service | None:
        row = await self._session.get(ServiceRow, name)
        return None if row is None else _to_service(row)

    async def exists(self, name: str) -> bool:
        found = await self._session.scalar(select(ServiceRow.name).where(ServiceRow.name == name))
        return found is not None

    async def input_routes(self) -> list[InputRoute]:
        """Every service input as (service, provider, bucket, folder, since): what routes object events."""
        rows = await self._session.execute(
            select(ServiceRow.name, ServiceRow.definition, ServiceRow.created_at)
        )
        routes = []
        for name, definition, created_at in rows:
            for entry in definition.get("input") or []:
                bucket, _, folder = str(entry.get("path", "")).partition("/")
                routes.append(
                    InputRoute(
                        service=name,
                        provider=str(entry.get("storage_provider", "")),
                        bucket=bucket,
                        folder=folder,
                        since=_aware(created_at),
                    )
                )
        return routes

    async def list_by_creation(self) -> list[Service]:
        """Every service, the oldest first."""
        rows = await self._session.scalars(
            select(ServiceRow).order_by(ServiceRow.created_at, ServiceRow.name)
        )
        return [_to_service(row) for row in rows]

    async def list(self) -> list[Service]:
        rows = await self._session.scalars(select(ServiceRow).order_by(ServiceRow.name))
        return [_to_service(row) for row in rows]

    async def add(self, service: Service) -> None:
        self.changed = True
        now = datetime.now(UTC)
        self._session.add(
            ServiceRow(
                name=service.name,
                owner=service.owner,
                visibility=service.visibility,
                token=service.token,
                definition=_definition(service),
                secrets=dict(service.environment.secrets),
                created_at=now,
                updated_at=now,
            )
        )
        try:
            await self._session.flush()
        except IntegrityError:
            raise Conflict(f"a service named {service.name!r} already exists") from None

    async def replace(self, service: Service) -> bool:
        """Store a new definition for an existing service; False when there is no such service."""
        self.changed = True
        row = await self._session.get(ServiceRow, service.name, with_for_update=True)
        if row is None:
            return False
        row.owner = service.owner
        row.visibility = service.visibility
        row.token = service.token
        row.definition = _definition(service)
        row.secrets = dict(service.environment.secrets)
        row.updated_at = datetime.now(UTC)
        await self._session.flush()
        return True

    async def delete(self, name: str) -> bool:
        self.changed = True
        result = await self._session.execute(
            delete(ServiceRow).where(ServiceRow.name == name).returning(ServiceRow.name)
        )
        return result.scalar_one_or_none() is not None


@dataclass(frozen=True, slots=True)
class ClaimedEvent:
    id: int
    service: str
    job_id: str
    payload: bytes
    attempts: int
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class NewEvent:
    dedup_key: str
    service: str
    job_id: str
    payload: bytes
    owner: str | None = None


async def _hot(session: AsyncSession) -> tuple[AsyncConnection, HotStatements]:
    """The session's connection, and the prebuilt statements for its database."""
    connection = await session.connection()
    return connection, hot_statements(connection.dialect.name)


class EventRepository:
    """The intake queue. Claims use ``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite serialises writers."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def enqueue_many(self, events: list[NewEvent]) -> list[bool]:
        """Record events; for each, False when an event with its dedup key is already recorded (before,
        or earlier in ``events``).

        One executemany of ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` (SQLAlchemy batches the rows
        into multi-row statements): a concurrent duplicate simply inserts nothing, and the caller's
        transaction goes on.
        """
        now = datetime.now(UTC)
        first: dict[str, NewEvent] = {}
        for event in events:
            first.setdefault(event.dedup_key, event)
        rows = [
            {
                "dedup_key": event.dedup_key,
                "service": event.service,
                "job_id": event.job_id,
                "payload": event.payload,
                "status": "pending",
                "attempts": 0,
                "available_at": now,
                "created_at": now,
                "owner": event.owner,
            }
            for event in first.values()
        ]
        connection, hot = await _hot(self._session)
        inserted = set((await connection.execute(hot.enqueue, rows)).scalars())
        return [event.dedup_key in inserted and first[event.dedup_key] is event for event in events]

    async def claim(self, *, limit: int) -> list[ClaimedEvent]:
        """The oldest events due, marked claimed, in one ``UPDATE ... RETURNING``."""
        connection, hot = await _hot(self._session)
        rows = await connection.execute(hot.claim, {"now": datetime.now(UTC), "limit": limit})
        claimed = [
            ClaimedEvent(
                id=row.id,
                service=row.service,
                job_id=row.job_id,
                payload=row.payload,
                attempts=row.attempts,
                owner=row.owner,
            )
            for row in rows
        ]
        return sorted(claimed, key=lambda event: event.id)

    async def complete(self, event_ids: list[int]) -> None:
        connection, hot = await _hot(self._session)
        await connection.execute(hot.complete, {"ids": event_ids})

    async def complete_for_job(self, job_id: str) -> None:
        await self._session.execute(
            update(EventRow).where(EventRow.job_id == job_id, EventRow.status != "done").values(status="done")
        )

    async def retry(self, event_id: int, *, error: str, delay: float) -> None:
        available = datetime.now(UTC) + timedelta(seconds=delay)
        await self._session.execute(
            update(EventRow)
            .where(EventRow.id == event_id)
            .values(status="pending", available_at=available, last_error=error)
        )

    async def retry_for_job(self, job_id: str, *, error: str, delay: float) -> None:
        """The job's event back to the queue, due after ``delay`` seconds."""
        available = datetime.now(UTC) + timedelta(seconds=delay)
        await self._session.execute(
            update(EventRow)
            .where(EventRow.job_id == job_id, EventRow.status == "claimed")
            .values(status="pending", available_at=available, last_error=error)
        )

    async def attempts_for_job(self, job_id: str) -> int:
        found = await self._session.scalar(select(EventRow.attempts).where(EventRow.job_id == job_id))
        return int(found or 0)

    async def fail(self, event_id: int, *, error: str) -> None:
        await self._session.execute(
            update(EventRow).where(EventRow.id == event_id).values(status="failed", last_error=error)
        )

    async def release_claimed(self) -> int:
        """Return events a previous run claimed but never completed to the queue (crash recovery)."""
        result = await self._session.execute(
            update(EventRow).where(EventRow.status == "claimed").values(status="pending", claimed_at=None)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def counts(self) -> dict[str, int]:
        rows = await self._session.execute(select(EventRow.status, func.count()).group_by(EventRow.status))
        return {status: int(count) for status, count in rows}

    async def delete_for_service(self, service: str) -> None:
        await self._session.execute(delete(EventRow).where(EventRow.service == service))


# Until when object events were keyed by ETag alone (migration 0006); absent when none ever were.
LEGACY_OBJECT_KEYS = "object_keys_by_etag_until"


class MarkRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def at(self, name: str) -> datetime | None:
        value = await self._session.scalar(select(MarkRow.at).where(MarkRow.name == name))
        return None if value is None else _aware(value)

    async def legacy_object_keys_until(self) -> datetime | None:
        return await self.at(LEGACY_OBJECT_KEYS)


def _job(row: JobRow) -> JobRecord:
    return JobRecord(
        id=row.id,
        service=row.service,
        status=JobStatus(row.status),
        created_at=_aware(row.created_at),
        started_at=_aware(row.started_at) if row.started_at else None,
        finished_at=_aware(row.finished_at) if row.finished_at else None,
        exit_code=row.exit_code,
        attempts=row.attempts,
        owner=row.owner,
    )


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone-aware columns; everything we store is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class PreparedJob:
    job_id: str
    service: str
    event_id: int | None
    owner: str | None = None


class JobRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def prepare(self, jobs: list[PreparedJob]) -> None:
        """The job rows for (re)dispatched events: created, or reset to Pending for another attempt (one
        executemany of an upsert)."""
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
        connection, hot = await _hot(self._session)
        await connection.execute(hot.prepare, rows)

    async def mark_running_many(self, started: dict[str, datetime]) -> None:
        """Pending -> Running, with when each job started (one executemany); a late report never undoes
        a job's end."""
        if not started:
            return
        connection, hot = await _hot(self._session)
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
            fallback=_aware(row.finished_at or row.started_at or row.created_at),
        )

    @staticmethod
    def _listing(service: str, after: tuple[datetime, str] | None, owner: str | None = None) -> Any:
        condition = JobRow.service == service
        if owner is not None:
            condition = and_(condition, JobRow.owner == owner)
        if after is not None:
            created, job_id = after
            older = or_(JobRow.created_at < created, and_(JobRow.created_at == created, JobRow.id < job_id))
            condition = and_(condition, older)
        return condition

    async def page(
        self, service: str, *, limit: int, after: tuple[datetime, str] | None, owner: str | None = None
    ) -> list[JobRecord]:
        """Newest first; ``after`` is the (created_at, id) of the last job of the previous page. With
        ``owner``, only the jobs that user started."""
        query = (
            select(JobRow)
            .where(self._listing(service, after, owner))
            .order_by(JobRow.created_at.desc(), JobRow.id.desc())
            .limit(limit)
        )
        return [_job(row) for row in await self._session.scalars(query)]

    async def count(
        self, service: str, *, after: tuple[datetime, str] | None = None, owner: str | None = None
    ) -> int:
        query = select(func.count()).select_from(JobRow).where(self._listing(service, after, owner))
        return int(await self._session.scalar(query) or 0)

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
