"""``/system/buckets``: list, inspect and create buckets, move objects in and out, presign URLs.

``/storage/{bucket}/{key}`` serves presigned URLs of the local store: the signature in the query is the
only credential, so a browser or ``curl`` can use them directly.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from oscar_manager.api.deps import (
    BucketPoliciesDep,
    CallerDep,
    PresignerDep,
    SettingsDep,
    StoresDep,
    TransactionDep,
)
from oscar_manager.operations import buckets, service_buckets
from oscar_manager.storage.providers import Stores

router = APIRouter(prefix="/system/buckets", tags=["buckets"])
presigned_router = APIRouter(prefix="/storage", tags=["buckets"])


class BucketCreate(BaseModel):
    bucket_name: str
    visibility: str = "private"
    allowed_users: list[str] = Field(default_factory=list)
    metadata: dict[str, str] = Field(default_factory=dict)


class BucketUpdate(BaseModel):
    bucket_name: str
    visibility: str = "private"
    allowed_users: list[str] = Field(default_factory=list)
    # Left out: the bucket keeps its metadata.
    metadata: dict[str, str] | None = None


def _bucket_request(body: BucketCreate | BucketUpdate) -> buckets.BucketRequest:
    return buckets.BucketRequest(body.bucket_name, body.visibility, tuple(body.allowed_users), body.metadata)


class PresignRequest(BaseModel):
    object_key: str
    operation: str = "download"
    expires_in: int | None = None
    # oscar-python sends ``expires``; both are accepted.
    expires: int | None = None
    content_type: str = ""


async def _receive(stores: Stores, bucket: str, key: str, request: Request) -> dict[str, Any]:
    """Stream the request body into the object (authenticated and presigned uploads alike)."""
    await buckets.writable_bucket(stores.default, bucket=bucket, key=key)
    info = await stores.default.put_stream(bucket, key, request.stream())
    return {"bucket": info.bucket, "key": info.key, "size": info.size, "etag": info.etag}


async def _send(stores: Stores, bucket: str, key: str) -> StreamingResponse:
    """Stream the object out (authenticated and presigned downloads alike)."""
    info = await buckets.existing_object(stores.default, bucket=bucket, key=key)
    return StreamingResponse(
        stores.default.read_stream(bucket, key),
        media_type="application/octet-stream",
        headers={"Content-Length": str(info.size), "ETag": f'"{info.etag}"'},
    )


@router.get("", summary="The buckets the caller may use")
async def list_buckets(caller: CallerDep, stores: StoresDep, tx: TransactionDep) -> list[dict[str, Any]]:
    return await buckets.list_buckets(stores.default, tx, principal=caller)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_class=Response,
    summary="Create a bucket of the caller's, private, restricted to allowed_users, or public",
    responses={409: {"description": "The bucket exists already"}},
)
async def create_bucket(
    body: BucketCreate, caller: CallerDep, stores: StoresDep, tx: TransactionDep, policies: BucketPoliciesDep
) -> Response:
    request = _bucket_request(body)
    await buckets.create_bucket(stores.default, tx, policies, principal=caller, request=request)
    return Response(status_code=status.HTTP_201_CREATED)


@router.put(
    "",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Change a bucket's visibility, allowed users or metadata",
    responses={
        403: {"description": "Another user's bucket, or a service's (change the service instead)"},
        404: {"description": "No such bucket"},
    },
)
async def update_bucket(
    body: BucketUpdate, caller: CallerDep, stores: StoresDep, tx: TransactionDep, policies: BucketPoliciesDep
) -> Response:
    request = _bucket_request(body)
    await buckets.update_bucket(stores.default, tx, policies, principal=caller, request=request)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{bucket}", summary="A bucket and its objects (paged by next_page)")
async def get_bucket(
    bucket: str,
    caller: CallerDep,
    stores: StoresDep,
    settings: SettingsDep,
    tx: TransactionDep,
    page: str = "",
) -> dict[str, Any]:
    return await buckets.get_bucket(
        stores.default, tx, principal=caller, bucket=bucket, page=page, limit=settings.job_listing_limit
    )


@router.delete(
    "/{bucket}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a bucket with all its objects",
    responses={
        403: {"description": "Another user's bucket"},
        404: {"description": "No such bucket"},
        409: {"description": "A service uses the bucket: nothing was deleted"},
    },
)
async def delete_bucket(
    bucket: str, caller: CallerDep, stores: StoresDep, tx: TransactionDep, policies: BucketPoliciesDep
) -> Response:
    used_by = await service_buckets.using_bucket(tx, bucket)
    await buckets.delete_bucket(
        stores.default, tx, policies, principal=caller, bucket=bucket, used_by=used_by
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put(
    "/{bucket}/objects/{key:path}",
    status_code=status.HTTP_201_CREATED,
    summary="Upload an object (streamed; replaces an existing one)",
)
async def upload_object(
    bucket: str, key: str, request: Request, caller: CallerDep, stores: StoresDep, tx: TransactionDep
) -> dict[str, Any]:
    await buckets.check_use(tx, principal=caller, bucket=bucket)
    return await _receive(stores, bucket, key, request)


@router.get("/{bucket}/objects/{key:path}", response_class=StreamingResponse, summary="Download an object")
async def download_object(
    bucket: str, key: str, caller: CallerDep, stores: StoresDep, tx: TransactionDep
) -> StreamingResponse:
    await buckets.check_use(tx, principal=caller, bucket=bucket)
    return await _send(stores, bucket, key)


@router.post("/{bucket}/presign", summary="A short-lived URL to upload or download one object")
async def presign(
    bucket: str,
    body: PresignRequest,
    request: Request,
    caller: CallerDep,
    stores: StoresDep,
    signer: PresignerDep,
    tx: TransactionDep,
) -> dict[str, Any]:
    # The URL is the only credential its holder needs: it is signed only for who may use the bucket.
    await buckets.check_use(tx, principal=caller, bucket=bucket)
    signed = await buckets.presign(
        stores.default,
        signer,
        bucket=bucket,
        key=body.object_key,
        operation=body.operation,
        expires_in=body.expires_in or body.expires,
    )
    url = signed.url
    if url.startswith("/"):
        url = str(request.base_url).rstrip("/") + url
    answer: dict[str, Any] = {
        "object_key": signed.object_key,
        "operation": signed.operation,
        "method": signed.method,
        "url": url,
        "expires_at": datetime.fromtimestamp(signed.expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if body.content_type and signed.method == "PUT":
        answer["headers"] = {"Content-Type": body.content_type}
    return answer


@presigned_router.put("/{bucket}/{key:path}", status_code=status.HTTP_201_CREATED, include_in_schema=False)
async def presigned_upload(
    bucket: str,
    key: str,
    request: Request,
    stores: StoresDep,
    signer: PresignerDep,
    operation: str = "",
    expires: int = 0,
    signature: str = "",
) -> dict[str, Any]:
    del operation  # the signature covers the operation: only an upload signature verifies here
    signer.verify(bucket=bucket, key=key, operation="upload", expires_at=expires, signature=signature)
    return await _receive(stores, bucket, key, request)


@presigned_router.get("/{bucket}/{key:path}", response_class=StreamingResponse, include_in_schema=False)
async def presigned_download(
    bucket: str,
    key: str,
    stores: StoresDep,
    signer: PresignerDep,
    operation: str = "",
    expires: int = 0,
    signature: str = "",
) -> StreamingResponse:
    del operation  # the signature covers the operation: only a download signature verifies here
    signer.verify(bucket=bucket, key=key, operation="download", expires_at=expires, signature=signature)
    return await _send(stores, bucket, key)
