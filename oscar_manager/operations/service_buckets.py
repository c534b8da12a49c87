"""The records of the buckets services read and write (issue 16, ``domain.buckets``).

A service's buckets on the manager's own storage take its owner, visibility and allowed users, as
upstream tags them: when several services use one bucket, the one created or changed last wins. A bucket
no service uses any more stays, its owner's and private (upstream's choice too): data is never deleted
without an explicit request.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from oscar_manager.domain.buckets import ADMIN_OWNER, BucketRecord, StorageUse, allowed_users
from oscar_manager.domain.isolation import user_buckets, user_buckets_of, with_bucket_list
from oscar_manager.domain.principal import Principal
from oscar_manager.domain.providers import ProviderRef
from oscar_manager.domain.service import Service
from oscar_manager.errors import Forbidden
from oscar_manager.registry import Transaction
from oscar_manager.storage.base import ObjectStore
from oscar_manager.storage.keys import validate_bucket
from oscar_manager.storage.providers import DEFAULT_PROVIDER
from oscar_manager.supervisor.stage import split_path


def _default_paths(uses: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [split_path(path) for provider, path in uses if str(ProviderRef(provider)) == DEFAULT_PROVIDER]


def own_paths(service: Service, kinds: str = "io") -> list[tuple[str, str]]:
    """(bucket, folder) of the inputs and/or outputs on the manager's own storage, the users' private
    buckets of USER isolation (``domain.isolation``) included: their input and output folders."""
    return own_paths_of(StorageUse.of(service), kinds)


def own_paths_of(use: StorageUse, kinds: str = "io") -> list[tuple[str, str]]:
    inputs = _default_paths(use.inputs)
    outputs = _default_paths(use.outputs)
    paths = [*(inputs if "i" in kinds else []), *(outputs if "o" in kinds else [])]
    users = user_buckets_of(
        use.inputs, isolation_level=use.isolation_level, allowed_users=use.allowed_users, owner=use.owner
    )
    for bucket in users:
        if "i" in kinds:
            paths += [(bucket.name, folder) for source, folder in inputs if source == bucket.source]
        if "o" in kinds:
            paths += [(bucket.name, folder) for _source, folder in outputs]
    return paths


def own_buckets(service: Service) -> set[str]:
    return own_buckets_of(StorageUse.of(service))


def own_buckets_of(use: StorageUse) -> set[str]:
    return {bucket for bucket, _folder in own_paths_of(use)}


async def _users_of(tx: Transaction, bucket: str) -> list[str]:
    """The services using ``bucket``, the oldest first: found among those whose definition names it (or
    the input bucket it would be a user's private bucket of), from a few fields of theirs."""
    uses = await tx.services.storage_uses(bucket=bucket)
    return [use.name for use in uses if bucket in own_buckets_of(use)]


def with_user_buckets(service: Service) -> Service:
    """``service`` with its ``bucket_list`` (USER isolation), each a valid bucket name, or a 400; its
    ``allowed_users`` must be ids a bucket's members can be (a 400 otherwise, buckets or not)."""
    allowed_users(service.allowed_users, owner=service.owner)
    service = with_bucket_list(service)
    for name in service.bucket_list:
        validate_bucket(name)
    return service


def service_records(service: Service) -> dict[str, BucketRecord]:
    """The records of every bucket ``service`` uses: its own, and each user's private one."""
    records = {bucket: service_bucket(service, bucket) for bucket, _folder in own_paths(service)}
    for bucket in user_buckets(service):
        records[bucket.name] = BucketRecord(
            name=bucket.name, owner=bucket.uid, metadata={"from_service": service.name}, service=service.name
        )
    return records


def service_bucket(service: Service, bucket: str) -> BucketRecord:
    """``bucket`` as ``service`` makes it: upstream's tags (``from_service``, and ``owner_name: oscar``
    for the admin's) as its metadata."""
    admin = service.owner == ADMIN_OWNER
    return BucketRecord(
        name=bucket,
        owner=service.owner,
        visibility=service.visibility or "private",
        allowed_users=allowed_users(service.allowed_users, owner=service.owner),
        metadata={"from_service": service.name, **({"owner_name": "oscar"} if admin else {})},
        service=service.name,
    )


async def check_ownership(
    tx: Transaction, store: ObjectStore, principal: Principal, services: Iterable[Service]
) -> None:
    """A user's service may only use buckets that are theirs or new: reading another owner's inputs, or
    writing into their bucket, would pass by the bucket's visibility. The admin may use any bucket."""
    if principal.is_admin:
        return
    services = list(services)
    names = {service.name for service in services}
    buckets = set().union(*map(own_buckets, services))
    records = await tx.buckets.many(buckets)
    for bucket in sorted(buckets):
        record = records.get(bucket)
        if record is None:
            # Made outside the manager (or before buckets had owners): the admin's.
            if await store.bucket_exists(bucket):
                raise Forbidden(f"bucket {bucket!r} exists and belongs to another owner")
        elif record.owner != principal.uid and record.service not in names:
            # (A user's private bucket of this very service is theirs, and the service's.)
            used = f" (used by service {record.service!r})" if record.service else ""
            raise Forbidden(f"bucket {bucket!r} belongs to another owner{used}")


async def record(tx: Transaction, service: Service, *, previous: Service | None = None) -> set[str]:
    """Record the buckets of ``service`` (just added or replaced in ``tx``) as its own, and release
    those ``previous`` used and it no longer does. Returns the buckets whose records changed."""
    now = datetime.now(UTC)
    records = service_records(service)
    for bucket in sorted(records):
        await tx.buckets.put(records[bucket], now=now)
    buckets = set(records)
    dropped = own_buckets(previous) - buckets if previous is not None else set()
    for bucket in sorted(dropped):
        await _release(tx, bucket, previous_service=service.name, now=now)
    return buckets | dropped


async def release(tx: Transaction, service: Service) -> set[str]:
    """After ``service`` is deleted in ``tx``: its buckets follow the services still using them, or
    become their owner's private buckets. Returns the buckets whose records changed."""
    now = datetime.now(UTC)
    buckets = own_buckets(service)
    for bucket in sorted(buckets):
        await _release(tx, bucket, previous_service=service.name, now=now)
    return buckets


async def _release(tx: Transaction, bucket: str, *, previous_service: str, now: datetime) -> None:
    current = await tx.buckets.get(bucket)
    if current is None or current.service != previous_service:
        return  # another service made it its own since: its record stands
    users = await _users_of(tx, bucket)
    latest = await tx.services.get(users[-1]) if users else None
    if latest is not None:
        await tx.buckets.put(service_records(latest)[bucket], now=now)
    else:
        await tx.buckets.put(BucketRecord(name=bucket, owner=current.owner), now=now)


async def adopt(tx: Transaction) -> set[str]:
    """Record the buckets of services made before buckets had records (once, at start-up): each takes
    the owner of the last service created using it. Returns the buckets recorded."""
    latest: dict[str, str] = {}  # bucket -> the last service created using it
    for use in await tx.services.storage_uses():
        latest.update((bucket, use.name) for bucket in own_buckets_of(use))
    missing = set(latest) - set(await tx.buckets.many(latest))
    makers = {
        service.name: service for service in await tx.services.get_many(sorted({latest[b] for b in missing}))
    }
    now = datetime.now(UTC)
    for bucket in sorted(missing):
        await tx.buckets.put(service_records(makers[latest[bucket]])[bucket], now=now)
    return missing


async def using_bucket(tx: Transaction, bucket: str) -> list[str]:
    """Services whose inputs or outputs are in ``bucket`` of the manager's own storage."""
    return sorted(await _users_of(tx, bucket))
