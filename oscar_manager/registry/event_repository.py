"""The intake queue: events recorded once by their dedup key, claimed, completed, retried or failed.

Like every repository, it flushes but never commits: the transaction belongs to the caller
(``Database.transaction``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, delete, func, select, update
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
    # Set for an event recorded as failed at once (a poison message: no job could ever run it).
    error: str | None = None


class EventRepository:
    """The intake queue. Claims use ``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite serialises writers.

    A claim is held by a replica (its ``claimed_by``) under a lease that replica renews while it lives
    (``renew_leases``); claims of a replica that died lapse (``release_lapsed``) and are claimed again."""

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
                "status": "pending" if event.error is None else "failed",
                "last_error": event.error,
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

    async def claim(self, *, limit: int, replica: str = "", lease: float = 0.0) -> list[ClaimedEvent]:
        """The oldest events due, marked claimed by ``replica`` for ``lease`` seconds (renewed by
        :meth:`renew_leases` while it lives), in one ``UPDATE ... RETURNING``."""
        now = datetime.now(UTC)
        connection, hot = await on_connection(self._session)
        parameters = {
            "now": now,
            "limit": limit,
            "replica": replica or None,
            "lease_until": now + timedelta(seconds=lease),
        }
        rows = await connection.execute(hot.claim, parameters)
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

    async def fail_recorded(self, dedup_keys: list[str], *, error: str) -> None:
        """Events just recorded that can never run: failed at once, with why."""
        if dedup_keys:
            await self._session.execute(
                update(EventRow)
                .where(EventRow.dedup_key.in_(dedup_keys), EventRow.status == "pending")
                .values(status="failed", last_error=error)
            )

    async def release_claimed(self) -> int:
        """Return every claimed event to the queue: for a manager alone on its database (SQLite), whose
        claims at start-up were all left by a previous run of its own."""
        return await self._unclaim(EventRow.status == "claimed")

    async def renew_leases(self, replica: str, *, lease: float) -> int:
        """``replica``'s claims held ``lease`` seconds more from now; how many it holds."""
        result = await self._session.execute(
            update(EventRow)
            .where(EventRow.status == "claimed", EventRow.claimed_by == replica)
            .values(lease_until=datetime.now(UTC) + timedelta(seconds=lease))
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def release_lapsed(self) -> int:
        """Claims whose lease lapsed (their replica died, or stalled longer than a lease) back to the
        queue, due at once; a claim with no lease (left by a manager of before leases) counts as lapsed."""
        lapsed = (EventRow.lease_until.is_(None)) | (EventRow.lease_until < datetime.now(UTC))
        return await self._unclaim((EventRow.status == "claimed") & lapsed)

    async def hand_back(self, replica: str) -> int:
        """``replica``'s claims back to the queue (it is stopping): another replica takes them at once."""
        return await self._unclaim((EventRow.status == "claimed") & (EventRow.claimed_by == replica))

    async def _unclaim(self, which: ColumnElement[bool]) -> int:
        result = await self._session.execute(
            update(EventRow)
            .where(which)
            .values(status="pending", claimed_at=None, claimed_by=None, lease_until=None)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def holders(self) -> dict[str, str | None]:
        """The claimed events' jobs, each with the replica holding its claim."""
        rows = await self._session.execute(
            select(EventRow.job_id, EventRow.claimed_by).where(EventRow.status == "claimed")
        )
        return {job_id: replica for job_id, replica in rows}

    async def failures(self, service: str) -> dict[str, str]:
        """dedup key -> why, for the service's events that failed."""
        rows = await self._session.execute(
            select(EventRow.dedup_key, EventRow.last_error).where(
                EventRow.service == service, EventRow.status == "failed"
            )
        )
        return {key: error or "" for key, error in rows}

    async def counts(self) -> dict[str, int]:
        rows = await self._session.execute(select(EventRow.status, func.count()).group_by(EventRow.status))
        return {status: int(count) for status, count in rows}

    async def delete_for_service(self, service: str) -> None:
        await self._session.execute(delete(EventRow).where(EventRow.service == service))
