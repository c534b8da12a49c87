"""Buckets' owners, visibility and members (``buckets``, ``domain.buckets``).

Like every repository, it reads and flushes but never commits: the transaction belongs to the caller.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from oscar_manager.domain.buckets import BucketRecord
from oscar_manager.registry import locks
from oscar_manager.registry.hot_statements import dialect_insert
from oscar_manager.registry.tables import BucketRow

BUCKETS = cast("Table", BucketRow.__table__)
_COLUMNS = (
    BUCKETS.c.name,
    BUCKETS.c.owner,
    BUCKETS.c.visibility,
    BUCKETS.c.allowed_users,
    BUCKETS.c.metadata,
    BUCKETS.c.service,
)


def _record(row: Any) -> BucketRecord:
    return BucketRecord(
        name=row.name,
        owner=row.owner,
        visibility=row.visibility,
        allowed_users=tuple(row.allowed_users),
        metadata=dict(row.metadata),
        service=row.service,
    )


def _values(record: BucketRecord) -> dict[str, Any]:
    return {
        "owner": record.owner,
        "visibility": record.visibility,
        "allowed_users": list(record.allowed_users),
        "metadata": dict(record.metadata),
        "service": record.service,
    }


class BucketRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def get(self, name: str) -> BucketRecord | None:
        row = (await self._session.execute(select(*_COLUMNS).where(BUCKETS.c.name == name))).first()
        return None if row is None else _record(row)

    async def many(self, names: Iterable[str]) -> dict[str, BucketRecord]:
        wanted = sorted(set(names))
        if not wanted:
            return {}
        rows = await self._session.execute(select(*_COLUMNS).where(BUCKETS.c.name.in_(wanted)))
        return {row.name: _record(row) for row in rows}

    async def all(self) -> list[BucketRecord]:
        rows = await self._session.execute(select(*_COLUMNS).order_by(BUCKETS.c.name))
        return [_record(row) for row in rows]

    async def public(self) -> list[BucketRecord]:
        rows = await self._session.execute(
            select(*_COLUMNS).where(BUCKETS.c.visibility == "public").order_by(BUCKETS.c.name)
        )
        return [_record(row) for row in rows]

    async def of_member(self, uid: str) -> list[BucketRecord]:
        """The buckets ``uid`` is a member of (``BucketRecord.members``)."""
        rows = await self._session.execute(
            select(*_COLUMNS)
            .where(or_(BUCKETS.c.owner == uid, BUCKETS.c.visibility == "restricted"))
            .order_by(BUCKETS.c.name)
        )
        # Allowed users are a JSON list, searched here rather than in each dialect's JSON syntax.
        return [record for row in rows if uid in (record := _record(row)).members()]

    async def lock_rules(self) -> None:
        """Until the transaction ends, no other transaction writes the storage's rules of who may use
        the buckets (``operations.bucket_access``); what it reads afterwards includes every change whose
        rules were written before."""
        await locks.hold(self._session, ["bucket-rules"])

    async def lock(self, name: str) -> BucketRecord | None:
        """The record, locked until the transaction ends (PostgreSQL; SQLite has one writer anyway), so
        concurrent changes of one bucket's visibility or members apply one after the other."""
        row = (
            await self._session.execute(select(*_COLUMNS).where(BUCKETS.c.name == name).with_for_update())
        ).first()
        return None if row is None else _record(row)

    async def add(self, record: BucketRecord, *, now: datetime) -> bool:
        """Record a new bucket; False (nothing written) if it has a record already, so that of two
        users creating one bucket at once only one gets it."""
        dialect = (await self._session.connection()).dialect.name
        result = await self._session.execute(
            dialect_insert(dialect, BUCKETS)
            .values(name=record.name, updated_at=now, **_values(record))
            .on_conflict_do_nothing(index_elements=[BUCKETS.c.name])
        )
        return bool(getattr(result, "rowcount", 0))

    async def put(self, record: BucketRecord, *, now: datetime) -> None:
        """Record ``record``, replacing what was recorded of its bucket."""
        dialect = (await self._session.connection()).dialect.name
        values = {**_values(record), "updated_at": now}
        statement = dialect_insert(dialect, BUCKETS).values(name=record.name, **values)
        await self._session.execute(
            statement.on_conflict_do_update(index_elements=[BUCKETS.c.name], set_=values)
        )

    async def remove(self, name: str) -> None:
        await self._session.execute(delete(BUCKETS).where(BUCKETS.c.name == name))
