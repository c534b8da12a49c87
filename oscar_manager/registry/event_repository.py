"""The intake queue: events recorded once by their dedup key, claimed, completed, retried or failed.

Like every repository, it flushes but never commits: the transaction belongs to the caller
(``Database.transaction``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from oscar_manager.registry.hot_statements import on_connection
from oscar_manager.registry.tables import EventRow


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
        connection, hot = await on_connection(self._session)
        inserted = set((await connection.execute(hot.enqueue, rows)).scalars())
        return [event.dedup_key in inserted and first[event.dedup_key] is event for event in events]

    async def fill_owner(self, dedup_key: str, owner: str) -> bool:
        """The recorded event of ``dedup_key`` becomes ``owner``'s if it has no owner yet (it was found by
        a listing, which cannot tell who uploaded): an owner once recorded is never replaced. True if
        it had none."""
        result = await self._session.execute(
            update(EventRow)
            .where(EventRow.dedup_key == dedup_key, EventRow.owner.is_(None))
            .values(owner=owner)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def claim(self, *, limit: int) -> list[ClaimedEvent]:
        """The oldest events due, marked claimed, in one ``UPDATE ... RETURNING``."""
        connection, hot = await on_connection(self._session)
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
        connection, hot = await on_connection(self._session)
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
