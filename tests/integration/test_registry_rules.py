"""The registry's part in the bucket rules (issue 16), on SQLite and PostgreSQL: the lock under which MinIO's
rules are written, the users' locks, the queries the rules read, and the hooks of a transaction that
does not commit."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from oscar_manager.domain.buckets import BucketRecord
from oscar_manager.domain.identities import StorageIdentity
from oscar_manager.operations import Database

pytestmark = pytest.mark.asyncio

NOW = datetime(2026, 12, 6, tzinfo=UTC)


async def test_rollback_hooks_run_when_the_transaction_fails_and_never_after_a_commit(
    database: Database,
) -> None:
    calls: list[str] = []
    async with database.transaction() as tx:
        tx.on_rollback(lambda: calls.append("committed"))
    with pytest.raises(RuntimeError, match="a later step"):
        await fail_after_hooks(database, calls)
    assert calls == ["failed"]


async def fail_after_hooks(database: Database, calls: list[str]) -> None:
    def broken() -> None:
        raise ValueError("a hook that fails hides neither the error nor the next hook")

    async with database.transaction() as tx:
        tx.on_rollback(broken)
        tx.on_rollback(lambda: calls.append("failed"))
        raise RuntimeError("a later step")


# Across replicas, which share PostgreSQL; on SQLite every write transaction is one after the other anyway
# (and a second manager's BEGIN on one file would wait on the loop's own thread).
@pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
async def test_the_rules_lock_makes_the_next_writer_wait_and_then_see_the_change(database: Database) -> None:
    """What the bucket rules rely on across replicas: two managers' transactions (two Database objects on
    one database) writing rules one after the other, the second reading what the first committed."""
    other = Database(database.url)
    try:
        first_has_lock = asyncio.Event()
        release = asyncio.Event()

        async def first() -> None:
            async with database.transaction() as tx:
                await tx.buckets.lock_rules()
                await tx.buckets.put(BucketRecord("shared", owner="alice", visibility="public"), now=NOW)
                first_has_lock.set()
                await release.wait()

        async def second() -> list[str]:
            await first_has_lock.wait()
            async with other.transaction() as tx:
                await tx.buckets.lock_rules()
                return [record.name for record in await tx.buckets.public()]

        writer = asyncio.create_task(first())
        reader = asyncio.create_task(second())
        await first_has_lock.wait()
        await asyncio.sleep(0.3)
        assert not reader.done()  # waiting for the lock
        release.set()
        await writer
        assert await asyncio.wait_for(reader, 10) == ["shared"]
    finally:
        await other.dispose()


async def test_members_public_buckets_and_identities_read_many_at_once(database: Database) -> None:
    async with database.transaction() as tx:
        for record in (
            BucketRecord("mine", owner="alice"),
            BucketRecord("shared", owner="bob", visibility="restricted", allowed_users=("alice", "carol")),
            BucketRecord("listed-only", owner="bob", allowed_users=("alice",)),  # private: not a member
            BucketRecord("open", owner="bob", visibility="public"),
            BucketRecord("admins", visibility="public"),
        ):
            await tx.buckets.put(record, now=NOW)
        for uid in ("alice", "bob"):
            await tx.identities.add_if_absent(StorageIdentity(uid, f"{uid}-key", b"sealed"), now=NOW)
    async with database.reading() as tx:
        assert [r.name for r in await tx.buckets.of_member("alice")] == ["mine", "shared"]
        assert [r.name for r in await tx.buckets.of_member("carol")] == ["shared"]
        assert [r.name for r in await tx.buckets.of_member("bob")] == ["listed-only", "open", "shared"]
        assert [r.name for r in await tx.buckets.public()] == ["admins", "open"]
        found = await tx.identities.many(["alice", "bob", "nobody"])
    assert {uid: identity.access_key for uid, identity in found.items()} == {
        "alice": "alice-key",
        "bob": "bob-key",
    }


async def test_an_identity_is_taken_back_only_if_it_is_still_the_one_recorded(database: Database) -> None:
    mine = StorageIdentity("dave", "dave-key", b"mine")
    async with database.transaction() as tx:
        await tx.identities.lock(["dave"])
        await tx.identities.add_if_absent(mine, now=NOW)
    async with database.transaction() as tx:
        await tx.identities.remove(StorageIdentity("dave", "dave-key", b"another"))
        assert await tx.identities.get("dave") == mine
        await tx.identities.remove(mine)
        assert await tx.identities.get("dave") is None
