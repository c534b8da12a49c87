"""Users' own MinIO identities (``storage_identities``): one row per OIDC user, the secret sealed.

Like every repository, it reads and flushes but never commits: the transaction belongs to the caller.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime
from typing import cast

from sqlalchemy import Table, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from oscar_manager.domain.identities import StorageIdentity
from oscar_manager.registry import locks
from oscar_manager.registry.hot_statements import dialect_insert
from oscar_manager.registry.tables import StorageIdentityRow

IDENTITIES = cast("Table", StorageIdentityRow.__table__)


class IdentityRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def get(self, uid: str) -> StorageIdentity | None:
        row = (
            await self._session.execute(
                select(IDENTITIES.c.access_key, IDENTITIES.c.sealed_secret).where(IDENTITIES.c.uid == uid)
            )
        ).first()
        return None if row is None else StorageIdentity(uid, row.access_key, row.sealed_secret)

    async def uids_by_access_key(self, access_keys: Collection[str]) -> dict[str, str]:
        """The uid of each user whose MinIO identity has one of ``access_keys`` (unique, as the column
        is), by access key; keys of no user are left out."""
        if not access_keys:
            return {}
        rows = await self._session.execute(
            select(IDENTITIES.c.access_key, IDENTITIES.c.uid).where(IDENTITIES.c.access_key.in_(access_keys))
        )
        return {row.access_key: row.uid for row in rows}

    async def many(self, uids: Iterable[str]) -> dict[str, StorageIdentity]:
        wanted = sorted(set(uids))
        if not wanted:
            return {}
        rows = await self._session.execute(
            select(IDENTITIES.c.uid, IDENTITIES.c.access_key, IDENTITIES.c.sealed_secret).where(
                IDENTITIES.c.uid.in_(wanted)
            )
        )
        return {row.uid: StorageIdentity(row.uid, row.access_key, row.sealed_secret) for row in rows}

    async def lock(self, uids: Iterable[str]) -> None:
        """Until the transaction ends, no other transaction makes an identity for these users: the one
        that reads none after taking the lock makes it, the others then find it."""
        await locks.hold(self._session, [f"storage-identity:{uid}" for uid in uids])

    async def add_if_absent(self, identity: StorageIdentity, *, now: datetime) -> StorageIdentity:
        """Record ``identity`` unless the user has one already (another request or replica was first),
        and return the one recorded: the first one wins, so every replica hands out the same keys."""
        dialect = (await self._session.connection()).dialect.name
        await self._session.execute(
            dialect_insert(dialect, IDENTITIES)
            .values(
                uid=identity.uid,
                access_key=identity.access_key,
                sealed_secret=identity.sealed_secret,
                created_at=now,
            )
            .on_conflict_do_nothing(index_elements=[IDENTITIES.c.uid])
        )
        recorded = await self.get(identity.uid)
        if recorded is None:  # cannot be: the row was there or has just been written
            raise RuntimeError(f"no storage identity recorded for {identity.uid!r}")
        return recorded

    async def remove(self, identity: StorageIdentity) -> None:
        """Take back ``identity`` (its MinIO user could not be made), unless the row is another one by now."""
        await self._session.execute(
            delete(IDENTITIES).where(
                IDENTITIES.c.uid == identity.uid, IDENTITIES.c.sealed_secret == identity.sealed_secret
            )
        )
