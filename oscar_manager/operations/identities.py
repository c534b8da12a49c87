"""Each OIDC user's own MinIO user (issue 16): made on their first request, or when a bucket they are
allowed into first names them; its keys handed out by ``/system/config``.

The registry holds one row per user (access key, secret sealed by ``auth.sealing``); MinIO holds the user
itself, a member of the all-users group and of the groups of the buckets the user may use
(``operations.bucket_access``, which also writes the all-users group's policy).

A user is recorded first, in a write transaction that takes that user's lock (``tx.identities.lock``):
the transaction that then finds no row records one with a new secret; the others (concurrent first
requests, other replicas, a bucket change naming the user) wait for it and find that row. The MinIO user
is made right after with the recorded secret, and whoever finds it missing (a request made before it was
there, or after it was deleted behind the manager's back) makes it with that same secret: every replica
hands out the same keys, and they work. A MinIO that cannot be reached takes the record back (503, and the
next request starts over). Made for a bucket change, the user is recorded in the change's transaction and
goes with it should it roll back.

Locks, taken in this order only, so nothing waits in a circle: a request's per-user lock in this process
(:meth:`StorageIdentities.keys`) before any transaction, never inside one; inside a transaction the bucket
rules' lock before users' locks.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from oscar_manager.domain.identities import ALL_USERS_GROUP, StorageIdentity, minio_access_key
from oscar_manager.registry import Database, Transaction
from oscar_manager.storage.minio_errors import MinioAdminUnavailable

if TYPE_CHECKING:  # miniopy-async and cryptography: imported by the runtime only when users get identities
    from oscar_manager.auth.sealing import Sealer
    from oscar_manager.storage.minio_users import MinioUsers

log = logging.getLogger(__name__)

# 24 random bytes: 32 url-safe characters, within MinIO's 8 to 40 for a secret key.
SECRET_BYTES = 24
# Locks users' requests wait on, chosen by a hash of the uid: bounded however many users come.
LOCK_STRIPES = 64
RETRY_AFTER = "5"


class GroupRules(Protocol):
    """The rules of the groups users' MinIO identities are in (``operations.bucket_access``)."""

    async def all_users_ready(self) -> None:
        """The all-users group holds its policy (before the first keys are handed out)."""

    async def rejoin(self, uid: str, access_key: str) -> None:
        """``uid``'s MinIO user, made again after it was deleted behind the manager's back, is back in
        the groups of its buckets (MinIO dropped it from them)."""


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
        # Set by the runtime; None: users join the all-users group only.
        self.rules: GroupRules | None = None
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
                if not self._group_ready and self.rules is not None:
                    await self.rules.all_users_ready()
                    self._group_ready = True
            except MinioAdminUnavailable as exc:
                self._checked.pop(uid, None)
                raise MinioAdminUnavailable(
                    f"the storage identity of user {uid!r} cannot be set up now, try again later: {exc}",
                    headers={"Retry-After": RETRY_AFTER},
                ) from None
            self._checked[uid] = self._clock()
            return access_key, secret

    async def access_keys(self, tx: Transaction, uids: Iterable[str]) -> dict[str, str]:
        """uid -> MinIO access key of each of ``uids``, in ``tx``. A user without an identity yet (an
        allowed user who never logged in) gets one now, as upstream does, recorded in ``tx`` (and gone with
        it should it roll back: their next request makes it again)."""
        wanted = set(uids)
        keys = {uid: identity.access_key for uid, identity in (await tx.identities.many(wanted)).items()}
        missing = sorted(wanted - keys.keys())
        if missing:
            await tx.identities.lock(missing)  # all at once, in the order every transaction takes them
            for uid in missing:
                keys[uid] = await self._made(tx, uid)
        return keys

    async def remake_missing(self, tx: Transaction, uids: Iterable[str]) -> dict[str, str]:
        """Make again, with their recorded secrets, those users of ``uids`` whose MinIO user is gone
        (deleted behind the manager's back); uid -> access key of the ones made."""
        remade: dict[str, str] = {}
        for uid, identity in sorted((await tx.identities.many(uids)).items()):
            if await self._users.user(identity.access_key) is None:
                log.warning("MinIO user of %r is gone (deleted in MinIO?): making it again", uid)
                await self._users.put_user(identity.access_key, self._sealer.unseal(identity.sealed_secret))
                await self._users.add_to_group(ALL_USERS_GROUP, identity.access_key)
                remade[uid] = identity.access_key
        return remade

    async def _keys(self, uid: str) -> tuple[str, str]:
        async with self._database.reading() as tx:
            identity = await tx.identities.get(uid)
        if identity is None:
            return await self._create(uid)
        return await self._verified(uid, identity)

    async def _create(self, uid: str) -> tuple[str, str]:
        """Recorded first, in a short transaction (the users' lock is held only for that), then made in
        MinIO; should MinIO fail, the record is taken back, so the next request starts over."""
        async with self._database.transaction() as tx:
            identity, secret = await self._record(tx, uid)
        if secret is None:  # recorded meanwhile by another request or replica
            return await self._verified(uid, identity)
        try:
            await self._make_user(uid, identity.access_key, secret)
        except MinioAdminUnavailable:
            async with self._database.transaction() as tx:
                await tx.identities.remove(identity)
            raise
        return identity.access_key, secret

    async def _made(self, tx: Transaction, uid: str) -> str:
        """The user's access key in ``tx``: recorded already, or recorded and made in MinIO now."""
        identity, secret = await self._record(tx, uid)
        if secret is not None:
            await self._make_user(uid, identity.access_key, secret)
        return identity.access_key

    async def _record(self, tx: Transaction, uid: str) -> tuple[StorageIdentity, str | None]:
        """The user's identity in ``tx``, and its secret if it is recorded by this call (None if it was
        there, or a replica of an older version, without the users' lock, recorded it first)."""
        await tx.identities.lock([uid])
        identity = await tx.identities.get(uid)
        if identity is not None:
            return identity, None
        secret = secrets.token_urlsafe(SECRET_BYTES)
        sealed = self._sealer.seal(secret)
        access_key = minio_access_key(uid, reserved=self._root_access_key)
        recorded = await tx.identities.add_if_absent(
            StorageIdentity(uid, access_key, sealed), now=datetime.now(UTC)
        )
        return recorded, (secret if recorded.sealed_secret == sealed else None)

    async def _make_user(self, uid: str, access_key: str, secret: str) -> None:
        await self._users.put_user(access_key, secret)
        await self._users.add_to_group(ALL_USERS_GROUP, access_key)
        log.info("made MinIO user %r for OIDC user %r", access_key, uid)

    async def _verified(self, uid: str, identity: StorageIdentity) -> tuple[str, str]:
        """The recorded keys, the MinIO user made again (with the recorded secret) if it is gone."""
        secret = self._sealer.unseal(identity.sealed_secret)
        info = await self._users.user(identity.access_key)
        if info is None:
            log.warning("MinIO user of %r is gone (deleted in MinIO?): making it again", uid)
            await self._users.put_user(identity.access_key, secret)
        # A disabled user is left so: disabling is MinIO's administrator's decision, not a fault.
        if info is None or ALL_USERS_GROUP not in (info.get("memberOf") or []):
            await self._users.add_to_group(ALL_USERS_GROUP, identity.access_key)
        if info is None and self.rules is not None:
            await self.rules.rejoin(uid, identity.access_key)
        return identity.access_key, secret
