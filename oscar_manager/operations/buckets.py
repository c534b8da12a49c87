"""Buckets and objects over HTTP: listing, upload, download and presigned URLs, each for whom the
bucket's record lets use it (``domain.buckets``; issue 16).

On the embedded default the store is local folders and presigned URLs point back at this manager (signed
with a key kept in the data directory); with MinIO they are MinIO's own, and MinIO itself enforces the
records through :class:`BucketPolicies` for the users' own keys.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote, urlencode

from oscar_manager.domain.buckets import (
    BucketRecord,
    allowed_users,
    can_use,
    owner_of,
    require_manage,
    require_use,
    unrecorded,
    visibility,
)
from oscar_manager.domain.buckets import metadata as bucket_metadata
from oscar_manager.domain.principal import Principal
from oscar_manager.errors import BadRequest, Conflict, Forbidden
from oscar_manager.registry import Transaction
from oscar_manager.storage.base import BucketNotFound, ObjectInfo, ObjectNotFound, ObjectStore
from oscar_manager.storage.keys import validate_bucket, validate_key
from oscar_manager.storage.presign import PresignSigner, expiry

OPERATIONS = {"upload": "PUT", "download": "GET"}


@dataclass(frozen=True, slots=True)
class Presigned:
    object_key: str
    operation: str
    method: str
    url: str  # the store's own URL, or an absolute path (and query) on this manager
    expires_at: int


class BucketPolicies(Protocol):
    """Makes the storage itself enforce the bucket records (``domain.bucket_policies``: MinIO's groups
    and policies). None on the local store, whose only door is the manager's own checks."""

    async def apply(self, tx: Transaction, names: Iterable[str]) -> None:
        """Make the storage's rules for buckets ``names`` (and the public ones) what the records in
        ``tx`` say, before it commits: a storage that cannot be told fails the change (503)."""


async def enforce(tx: Transaction, policies: BucketPolicies | None, names: Iterable[str]) -> None:
    """The storage's rules of buckets whose records changed in ``tx``; a storage that cannot be told
    fails the request, and the registry change is rolled back with it."""
    names = set(names)
    if policies is not None and names:
        await policies.apply(tx, names)


async def record_of(tx: Transaction, bucket: str) -> BucketRecord:
    return await tx.buckets.get(bucket) or unrecorded(bucket)


def _shown_owner(record: BucketRecord) -> str:
    # As upstream's tags: the admin's buckets carry no user as owner.
    return "" if record.admins else record.owner


def _bucket_view(record: BucketRecord, *, owner: str, metadata: dict[str, str]) -> dict[str, Any]:
    return {
        "bucket_name": record.name,
        "visibility": record.visibility,
        "allowed_users": list(record.allowed_users) if record.visibility == "restricted" else [],
        "owner": owner,
        "metadata": metadata,
    }


async def list_buckets(store: ObjectStore, tx: Transaction, *, principal: Principal) -> list[dict[str, Any]]:
    """The buckets the caller may use, as upstream lists them: ``owner`` empty for the admin's (which
    the dashboard shows as ``oscar``), upstream's other tags (a service's ``from_service``...) or the
    bucket's own metadata as ``metadata``."""
    names = await store.list_buckets()
    records = await tx.buckets.many(names)
    views = []
    for name in names:
        record = records.get(name) or unrecorded(name)
        if can_use(principal, record):
            views.append(_bucket_view(record, owner=_shown_owner(record), metadata=dict(record.metadata)))
    return views


async def get_bucket(
    store: ObjectStore, tx: Transaction, *, principal: Principal, bucket: str, page: str, limit: int
) -> dict[str, Any]:
    """A bucket and its objects, folder markers included (upstream lists every key, ``in/`` too). As
    upstream, ``owner`` is the owner's id or ``cluster_admin``, and ``metadata`` every tag."""
    validate_bucket(bucket)
    if not await store.bucket_exists(bucket):
        raise BucketNotFound(f"bucket {bucket!r} not found")
    record = await record_of(tx, bucket)
    require_use(principal, record)
    tags = dict(record.metadata)
    if record.service is not None or not record.admins:
        tags = {"owner": _shown_owner(record), **tags}
    return {
        **_bucket_view(record, owner=record.owner, metadata=tags),
        **await object_page(store, bucket=bucket, page=page, limit=limit),
    }


async def object_page(store: ObjectStore, *, bucket: str, page: str, limit: int) -> dict[str, Any]:
    """Up to ``limit`` objects of ``bucket`` after key ``page``, as upstream pages them."""
    objects = [info for info in await store.list_objects(bucket, markers=True) if info.key > page]
    shown = objects[:limit]
    truncated = len(objects) > limit
    return {
        "objects": [
            {
                "object_name": info.key,
                "size_bytes": info.size,
                # isoformat, not strftime: "%Y" drops the zeros of year 1 (UNKNOWN_TIME).
                "last_modified": info.last_modified.replace(tzinfo=None).isoformat(timespec="seconds") + "Z",
            }
            for info in shown
        ],
        "next_page": shown[-1].key if truncated else "",
        "is_truncated": truncated,
        "returned_items": len(shown),
    }


@dataclass(frozen=True, slots=True)
class BucketRequest:
    """A bucket as ``POST`` and ``PUT /system/buckets`` give it; ``metadata`` None keeps what is there."""

    name: str
    visibility: str = "private"
    allowed_users: tuple[str, ...] = ()
    metadata: dict[str, str] | None = None


def _requested(request: BucketRequest, *, owner: str, service: str | None = None) -> BucketRecord:
    return BucketRecord(
        name=request.name,
        owner=owner,
        visibility=visibility(request.visibility),
        allowed_users=allowed_users(request.allowed_users, owner=owner),
        metadata=bucket_metadata(request.metadata or {}),
        service=service,
    )


async def create_bucket(
    store: ObjectStore,
    tx: Transaction,
    policies: BucketPolicies | None,
    *,
    principal: Principal,
    request: BucketRequest,
) -> None:
    """A new bucket of the caller's, with its visibility. The record and the storage's rules come first,
    the bucket last: if any step fails nothing is recorded, and a bucket never exists without its rules."""
    validate_bucket(request.name)
    record = _requested(request, owner=owner_of(principal))
    if await store.bucket_exists(request.name) or not await tx.buckets.add(record, now=datetime.now(UTC)):
        raise Conflict(f"bucket {request.name!r} already exists")
    await enforce(tx, policies, [request.name])
    await store.ensure_bucket(request.name)


async def update_bucket(
    store: ObjectStore,
    tx: Transaction,
    policies: BucketPolicies | None,
    *,
    principal: Principal,
    request: BucketRequest,
) -> None:
    """Change a bucket's visibility, members or metadata: its owner or the admin, and not a service's
    bucket (the service's definition decides it, as upstream)."""
    validate_bucket(request.name)
    if not await store.bucket_exists(request.name):
        raise BucketNotFound(f"bucket {request.name!r} not found")
    current = await tx.buckets.lock(request.name) or unrecorded(request.name)
    require_manage(principal, current)
    if current.service is not None:
        raise Forbidden(
            f"bucket {request.name!r} belongs to service {current.service!r}: change the service instead"
        )
    changed = _requested(request, owner=current.owner)
    if request.metadata is None:
        changed = replace(changed, metadata=current.metadata)
    await tx.buckets.put(changed, now=datetime.now(UTC))
    await enforce(tx, policies, [request.name])


async def delete_bucket(
    store: ObjectStore,
    tx: Transaction,
    policies: BucketPolicies | None,
    *,
    principal: Principal,
    bucket: str,
    used_by: list[str],
) -> int:
    """Delete a bucket and everything in it: its owner or the admin, and not while a service reads or
    writes it (``used_by``)."""
    validate_bucket(bucket)
    if not await store.bucket_exists(bucket):
        raise BucketNotFound(f"bucket {bucket!r} not found")
    require_manage(principal, await record_of(tx, bucket))
    if used_by:
        names = ", ".join(sorted(used_by))
        raise Conflict(f"bucket {bucket!r} is used by service(s) {names}: delete or change them first")
    await tx.buckets.remove(bucket)
    await enforce(tx, policies, [bucket])
    return await store.delete_bucket(bucket)


async def check_use(tx: Transaction, *, principal: Principal, bucket: str) -> None:
    """The caller may list, read and write the objects of ``bucket`` (a valid name)."""
    validate_bucket(bucket)
    require_use(principal, await record_of(tx, bucket))


async def existing_object(store: ObjectStore, *, bucket: str, key: str) -> ObjectInfo:
    validate_bucket(bucket)
    validate_key(key)
    info = await store.stat(bucket, key)
    if info is None:
        raise ObjectNotFound(f"object {key!r} not found in bucket {bucket!r}")
    return info


async def writable_bucket(store: ObjectStore, *, bucket: str, key: str) -> None:
    validate_bucket(bucket)
    validate_key(key)
    if not await store.bucket_exists(bucket):
        raise BucketNotFound(f"bucket {bucket!r} not found")


async def presign(
    store: ObjectStore,
    signer: PresignSigner,
    *,
    bucket: str,
    key: str,
    operation: str,
    expires_in: int | None,
) -> Presigned:
    method = OPERATIONS.get(operation)
    if method is None:
        raise BadRequest(f"invalid operation {operation!r}: use 'upload' or 'download'")
    if operation == "download":
        await existing_object(store, bucket=bucket, key=key)
    else:
        await writable_bucket(store, bucket=bucket, key=key)
    now = time.time()
    expires_at = expiry(expires_in, now)
    url = await store.presigned_url(bucket, key, method=method, expires_in=expires_at - int(now))
    if url is None:
        query = signer.query(bucket=bucket, key=key, operation=operation, expires_at=expires_at)
        url = presigned_path(bucket, key, query)
    return Presigned(object_key=key, operation=operation, method=method, url=url, expires_at=expires_at)


def presigned_path(bucket: str, key: str, query: dict[str, str]) -> str:
    return f"/storage/{bucket}/{quote(key, safe='/')}?{urlencode(query)}"
