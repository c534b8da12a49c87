"""Which of the managers sharing one database leads: does the work only one of them may do.

PostgreSQL: a session-level advisory lock held on a connection of its own, outside the pool. The server
lets it go the moment that connection closes, as when the process dies (``kill -9`` included: the kernel
closes its sockets), so another replica takes it on its next try, within a second or two. The leader
checks its connection as often; should a check fail or hang, it stops leading at once rather than risk
two leaders (the server may still hold the lock for a while: then no one leads until it lets go).
SQLite: the serving process is alone on its file (``serve`` locks it), so it leads from the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from oscar_manager.registry.locks import lock_key

log = logging.getLogger(__name__)

LEADER_LOCK = lock_key("oscar-manager: leader")

# A check that takes longer than this is a connection that cannot be trusted to hold the lock.
CHECK_TIMEOUT = 5.0


class Leadership:
    def __init__(self, url: str) -> None:
        self._alone = make_url(url).get_backend_name() != "postgresql"
        # Its own engine without a pool: the connection holding the lock is never lent to a request.
        self._engine = None if self._alone else create_async_engine(url, poolclass=NullPool)
        self._connection: AsyncConnection | None = None
        self.leading = False

    async def try_lead(self) -> bool:
        """Lead if no one does (True), or tell that another replica does (False)."""
        if self.leading:
            return True
        if self._engine is None:
            self.leading = True
            return True
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                if self._connection is None:
                    connection = await self._engine.connect()
                    # No transaction left open between checks: an idle one would hold back vacuum.
                    self._connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
                self.leading = bool(
                    await self._connection.scalar(select(func.pg_try_advisory_lock(LEADER_LOCK)))
                )
        except Exception:
            await self._drop_connection()
            raise
        return self.leading

    async def still_leading(self) -> bool:
        """Whether the lock is still ours: its connection answers. False (and no longer leading) if not."""
        if not self.leading or self._connection is None:
            return self.leading
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                await self._connection.scalar(select(1))
        except Exception as exc:
            log.warning("the connection holding the leadership failed (%s): no longer leading", exc)
            self.leading = False
            await self._drop_connection()
        return self.leading

    async def resign(self) -> None:
        """Let another replica lead now (stopping): unlock, and close the connection."""
        if self._connection is not None and self.leading:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CHECK_TIMEOUT):
                    await self._connection.scalar(select(func.pg_advisory_unlock(LEADER_LOCK)))
        self.leading = False
        await self._drop_connection()

    async def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            # Closing a dead connection may fail or hang too; it is gone either way.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CHECK_TIMEOUT):
                    await connection.invalidate()
                    await connection.close()
