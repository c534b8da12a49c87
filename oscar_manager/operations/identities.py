"""Each OIDC user's own MinIO user (issue 16, first part): made on their first request, its keys handed out
by ``/system/config``.

The registry holds one row per user (access key, secret sealed by ``auth.sealing``); MinIO holds the user
itself, a member of the all-users group. The user is made in MinIO first and recorded after, so a MinIO
that cannot be reached leaves no row (503, and the next request tries again). Concurrent first requests of
one user in this process wait for one another (a lock per user); on several replicas each makes the user
with its own secret and the first row recorded wins (``add_if_absent``): a replica that lost sets MinIO's
secret back to the recorded one, so all hand out the same keys.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime

from oscar_manager.auth.sealing import Sealer
from oscar_manager.domain.identities import (
    ALL_USERS_GROUP,
    ALL_USERS_POLICY,
    StorageIdentity,
    minio_access_key,
)
from oscar_manager.registry import Database
from oscar_manager.storage.minio_users import MinioAdminUnavailable, MinioUsers

log = logging.getLogger(__name__)

# 24 random bytes: 32 url-safe characters, within MinIO's 8 to 40 for a secret key.
SECRET_BYTES = 24
# Locks users' first requests wait on, chosen by a hash of the uid: bounded however many users come.
LOCK_STRIPES = 64
RETRY_AFTER = "5"


class StorageIdentities:
    def __init__(
        self,
        database: Database,
        users: MinioUsers,
        sealer: Sealer,
        *,
        root_access_key: str,
        check_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._database = database
        self._users = users
        self._sealer = sealer
        self._root_access_key = root_access_key
        self._check_interval = check_interval
        self._clock = clock
        self._locks = [asyncio.Lock() for _ in range(LOCK_STRIPES)]
        # uid -> when its MinIO user was last found (or made) in order.
        self._checked: dict[str, float] = {}
        self._group_ready = False

    async def ensure(self, uid: str) -> None:
        """On each request of an OIDC user: their MinIO user exists (checked again after the interval)."""
        checked = self._checked.get(uid)
        if checked is not None and self._clock() - checked < self._check_interval:
            return
        await self.keys(uid)

    async def keys(self, uid: str) -> tuple[str, str]:
        """The user's access and secret keys, their MinIO user checked (re-created if it was deleted)."""
        lock = self._locks[int.from_bytes(hashlib.sha256(uid.encode()).digest()[:4]) % LOCK_STRIPES]
        async with lock:
            try:
                access_key, secret = await self._keys(uid)
            except MinioAdminUnavailable as exc:
                self._checked.pop(uid, None)
                raise MinioAdminUnavailable(
                    f"the storage identity of user {uid!r} cannot be set up now, try again later: {exc}",
                    headers={"Retry-After": RETRY_AFTER},
                ) from None
            self._checked[uid] = self._clock()
            return access_key, secret

    async def _keys(self, uid: str) -> tuple[str, str]:
        async with self._database.reading() as tx:
            identity = await tx.identities.get(uid)
        if identity is None:
            return await self._create(uid)
        secret = self._sealer.unseal(identity.sealed_secret)
        info = await self._users.user(identity.access_key)
        if info is None:
            log.warning("MinIO user of %r is gone (deleted in MinIO?): making it again", uid)
            await self._users.put_user(identity.access_key, secret)
        # A disabled user is left so: disabling is MinIO's administrator's decision, not a fault.
        if info is None or ALL_USERS_GROUP not in (info.get("memberOf") or []):
            await self._users.add_to_group(ALL_USERS_GROUP, identity.access_key)
        await self._ready_group()
        return identity.access_key, secret

    async def _create(self, uid: str) -> tuple[str, str]:
        access_key = minio_access_key(uid, reserved=self._root_access_key)
        secret = secrets.token_urlsafe(SECRET_BYTES)
        await self._users.put_user(access_key, secret)
        await self._users.add_to_group(ALL_USERS_GROUP, access_key)
        await self._ready_group()
        sealed = self._sealer.seal(secret)
        async with self._database.transaction() as tx:
            recorded = await tx.identities.add_if_absent(
                StorageIdentity(uid, access_key, sealed), now=datetime.now(UTC)
            )
        if recorded.sealed_secret != sealed:
            # Another replica recorded this user first: MinIO must hold its secret, not the one just set.
            secret = self._sealer.unseal(recorded.sealed_secret)
            await self._users.put_user(recorded.access_key, secret)
        log.info("made MinIO user %r for OIDC user %r", recorded.access_key, uid)
        return recorded.access_key, secret

    async def _ready_group(self) -> None:
        """The all-users group's policy, written once per process (again after a failure)."""
        if self._group_ready:
            return
        await self._users.set_group_policy(ALL_USERS_GROUP, ALL_USERS_GROUP, ALL_USERS_POLICY)
        self._group_ready = True
