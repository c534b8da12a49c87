"""Named locks a transaction holds until it ends, for work that must not interleave across replicas.

PostgreSQL: transaction-level advisory locks, keyed by a hash of the name (two names sharing a key only
wait for one another), taken in key order so that transactions taking several never deadlock. SQLite
needs none: every write transaction holds the database's one write lock from its start (``BEGIN
IMMEDIATE``), so such work is one after the other already.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession


def lock_key(name: str) -> int:
    """A signed 64-bit key, as ``pg_advisory_xact_lock`` takes."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


async def hold(session: AsyncSession, names: list[str]) -> None:
    """Hold the locks ``names`` until the session's transaction ends (waiting for their holders)."""
    if (await session.connection()).dialect.name != "postgresql":
        return
    for key in sorted({lock_key(name) for name in names}):
        await session.execute(select(func.pg_advisory_xact_lock(key)))
