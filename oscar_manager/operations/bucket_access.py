"""MinIO's groups and policies kept as the bucket records say (issue 16): ``BucketPolicies`` on MinIO.

:meth:`MinioBucketPolicies.apply` runs inside the transaction that changes records, before it commits. It
takes the bucket rules' lock (``tx.buckets.lock_rules``: rules are written one change after the other,
across replicas, and each reads every change committed before it), makes each bucket's group exactly what
``domain.bucket_policies`` derives from the record as that transaction sees it, then rewrites the
all-users group's policy from every public record. A MinIO that cannot be told raises
:class:`MinioAdminUnavailable` (503), and the change is rolled back.

MinIO may then hold rules of a change that never committed (apply failed half-way, or the transaction
failed after it): those buckets are marked, and :meth:`repair` (a background worker) sets their rules back
from the committed records, retried until MinIO answers. At start-up :meth:`reconcile` rewrites every
bucket's rules from the registry and removes the ``oscar-bucket-*`` groups and policies no record needs,
so nothing done behind the manager's back outlives a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from oscar_manager.domain.bucket_policies import (
    BUCKET_GROUP_PREFIX,
    all_users_policy,
    bucket_group,
    bucket_group_for,
)
from oscar_manager.domain.buckets import BucketRecord, unrecorded
from oscar_manager.domain.identities import ALL_USERS_GROUP
from oscar_manager.operations.identities import StorageIdentities
from oscar_manager.registry import Database, Transaction
from oscar_manager.storage.minio_errors import NoSuchMinioUser

if TYPE_CHECKING:  # the adapter loads miniopy-async: imported by the runtime only when MinIO is on
    from oscar_manager.storage.minio_users import MinioUsers

log = logging.getLogger(__name__)

# The all-users group's canned policy is named after it, as upstream names it.
ALL_USERS_POLICY = ALL_USERS_GROUP


class MinioBucketPolicies:
    def __init__(self, database: Database, users: MinioUsers, identities: StorageIdentities) -> None:
        self._database = database
        self._users = users
        self._identities = identities
        # Buckets whose rules in MinIO may not be what the committed records say, for :meth:`repair`.
        self._unsure: set[str] = set()
        self._unsure_public = False
        # Wakes the worker running :meth:`repair` (set by the runtime).
        self.wake_repair: Callable[[], None] = lambda: None
        # Set once :meth:`reconcile` has succeeded.
        self.reconciled = asyncio.Event()

    async def apply(self, tx: Transaction, names: Iterable[str]) -> None:
        """Make MinIO's rules for buckets ``names`` and the public ones what the records in ``tx`` say."""
        wanted = sorted(set(names))
        tx.on_rollback(lambda: self._mark_unsure(wanted))
        try:
            await tx.buckets.lock_rules()
            records = await tx.buckets.many(wanted)
            for name in wanted:
                await self._set_bucket(tx, records.get(name) or unrecorded(name))
            await self._set_public(tx)
        except BaseException:
            # Whatever was done is undone by the repair, also if the caller commits despite the error.
            self._mark_unsure(wanted)
            raise

    async def reconcile(self) -> None:
        """Every bucket's rules rewritten from the registry, and the groups and policies named as
        ours that no record needs removed (at start-up)."""
        async with self._database.reading() as tx:
            recorded = {record.name for record in await tx.buckets.all()}
        found = [*await self._users.groups(), *await self._users.policies()]
        ours = {
            name.removeprefix(BUCKET_GROUP_PREFIX) for name in found if name.startswith(BUCKET_GROUP_PREFIX)
        }
        await self._rewrite(recorded | ours)
        self.reconciled.set()
        log.info(
            "MinIO's bucket groups and policies follow the registry (%d bucket(s), %d stale removed)",
            len(recorded),
            len(ours - recorded),
        )

    async def repair(self) -> int:
        """Set the rules of the buckets marked unsure back to what the committed records say; raises
        (to be retried) while MinIO cannot be told. Returns 0: nothing more to do at once."""
        if not self._unsure and not self._unsure_public:
            return 0
        names, self._unsure, self._unsure_public = self._unsure, set(), False
        try:
            await self._rewrite(names)
        except BaseException:
            self._unsure |= names
            self._unsure_public = True
            raise
        log.info("MinIO's rules of bucket(s) %s set back to what the registry says", ", ".join(sorted(names)))
        return 0

    async def all_users_ready(self) -> None:
        """The all-users group's policy, written now unless :meth:`reconcile` has (a user may come
        while MinIO's admin API is still unreachable for it, and would find no public bucket)."""
        if self.reconciled.is_set():
            return
        async with self._database.transaction() as tx:
            await tx.buckets.lock_rules()
            await self._set_public(tx)

    async def rejoin(self, uid: str, access_key: str) -> None:
        """After user ``uid``'s MinIO user was made again: the groups of their buckets, which MinIO took
        them out of when it was deleted."""
        async with self._database.transaction() as tx:
            await tx.buckets.lock_rules()
            for record in await tx.buckets.of_member(uid):
                await self._set_bucket(tx, record)
        log.info("MinIO user %r of %r is back in the groups of its buckets", access_key, uid)

    def _mark_unsure(self, names: list[str]) -> None:
        self._unsure.update(names)
        self._unsure_public = True
        self.wake_repair()

    async def _rewrite(self, names: Iterable[str]) -> None:
        """Each bucket's rules in a transaction of its own, so the lock is held only for that bucket's
        few calls, then the all-users policy."""
        for name in sorted(names):
            async with self._database.transaction() as tx:
                await tx.buckets.lock_rules()
                await self._set_bucket(tx, await tx.buckets.get(name) or unrecorded(name))
        async with self._database.transaction() as tx:
            await tx.buckets.lock_rules()
            await self._set_public(tx)

    async def _set_bucket(self, tx: Transaction, record: BucketRecord, *, remake: bool = True) -> None:
        """The bucket's group exactly as derived: its members (no more, no fewer) and its policy; or
        neither group nor policy when it has no members."""
        keys = await self._identities.access_keys(tx, record.members())
        group = bucket_group_for(record, keys)
        if group is None:
            name = bucket_group(record.name)
            await self._users.remove_group(name)
            if await self._users.policy(name) is not None:
                await self._users.remove_policy(name)
            return
        current = await self._users.group_members(group.name)
        # Revoke first: should a later call fail, no one has more than either the old or the new rules.
        await self._users.remove_members(group.name, (current or frozenset()) - group.members)
        missing = group.members - (current or frozenset())
        if missing:
            try:
                await self._users.add_members(group.name, missing)
            except NoSuchMinioUser:
                if not remake:
                    raise
                await self._remake_members(tx, record, keys, missing)
        await self._users.set_group_policy(group.name, group.name, group.policy)

    async def _remake_members(
        self, tx: Transaction, record: BucketRecord, keys: dict[str, str], missing: frozenset[str]
    ) -> None:
        """Members whose MinIO user was deleted behind the manager's back: made again (with their
        recorded secrets), added, and put back in their other buckets' groups."""
        remade = await self._identities.remake_missing(
            tx, [uid for uid, key in keys.items() if key in missing]
        )
        await self._users.add_members(bucket_group(record.name), missing)
        for uid in remade:
            for other in await tx.buckets.of_member(uid):
                if other.name != record.name:
                    await self._set_bucket(tx, other, remake=False)

    async def _set_public(self, tx: Transaction) -> None:
        document = all_users_policy(await tx.buckets.public())
        await self._users.set_group_policy(ALL_USERS_GROUP, ALL_USERS_POLICY, document)
