"""Named points in time the registry keeps (``marks``), such as where an upgrade changed how events are keyed.

Like every repository, it reads and flushes but never commits: the transaction belongs to the caller.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from oscar_manager.registry.tables import MarkRow, aware

# Until when object events were keyed by ETag alone (migration 0006); absent when none ever were.
LEGACY_OBJECT_KEYS = "object_keys_by_etag_until"


class MarkRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def at(self, name: str) -> datetime | None:
        value = await self._session.scalar(select(MarkRow.at).where(MarkRow.name == name))
        return None if value is None else aware(value)

    async def legacy_object_keys_until(self) -> datetime | None:
        return await self.at(LEGACY_OBJECT_KEYS)
