"""Buckets and objects over HTTP: listing, upload, download and presigned URLs.

On the embedded default the store is local folders and presigned URLs point back at this manager (signed
with a key kept in the data directory); with MinIO they will be MinIO's own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from oscar_manager.domain.service import DEFAULT_OWNER
from oscar_manager.errors import BadRequest, Conflict
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


def _bucket_view(name: str, *, owner: str, metadata: dict[str, str]) -> dict[str, Any]:
    return {
        "bucket_name": name,
        "visibility": "private",
        "allowed_users": [],
        "owner": owner,
        "metadata": metadata,
    }


async def list_buckets(store: ObjectStore, *, tags: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """As upstream's listing: ``owner`` from the bucket's tags (empty for the admin's, which the dashboard
    shows as ``oscar``) and the other tags as ``metadata`` (the dashboard's Service column). ``tags``: what
    upstream would have tagged each bucket with (``services.bucket_tags``)."""
    views = []
    for name in await store.list_buckets():
        found = tags.get(name, {})
        metadata = {key: value for key, value in found.items() if key != "owner"}
        views.append(_bucket_view(name, owner=found.get("owner", ""), metadata=metadata))
    return views


async def get_bucket(
    store: ObjectStore, *, bucket: str, page: str, limit: int, tags: dict[str, str]
) -> dict[str, Any]:
    """A bucket and its objects, folder markers included (upstream lists every key, ``in/`` too). As
    upstream, ``owner`` is the ``owner`` tag or ``cluster_admin``, and ``metadata`` every tag."""
    validate_bucket(bucket)
    if not await store.bucket_exists(bucket):
        raise BucketNotFound(f"bucket {bucket!r} not found")
    objects = [info for info in await store.list_objects(bucket, markers=True) if info.key > page]
    shown = objects[:limit]
    truncated = len(objects) > limit
    return {
        **_bucket_view(bucket, owner=tags.get("owner") or DEFAULT_OWNER, metadata=dict(tags)),
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


async def create_bucket(store: ObjectStore, *, bucket: str) -> None:
    await store.ensure_bucket(validate_bucket(bucket))


async def delete_bucket(store: ObjectStore, *, bucket: str, used_by: list[str]) -> int:
    """Delete a bucket and everything in it, unless a service reads or writes it (``used_by``)."""
    validate_bucket(bucket)
    if used_by:
        names = ", ".join(sorted(used_by))
        raise Conflict(f"bucket {bucket!r} is used by service(s) {names}: delete or change them first")
    if not await store.bucket_exists(bucket):
        raise BucketNotFound(f"bucket {bucket!r} not found")
    return await store.delete_bucket(bucket)


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
