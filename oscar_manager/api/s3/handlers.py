"""The S3 operations of the face, each on the local store: every write goes through ``LocalObjectStore``
(staged, then renamed into place), so the folder watcher sees an S3 upload as any other new file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from email.utils import format_datetime
from urllib.parse import unquote

from starlette.responses import Response, StreamingResponse

from oscar_manager.api.s3.context import S3Face, S3Request
from oscar_manager.domain.principal import Principal
from oscar_manager.errors import OscarError, PayloadTooLarge
from oscar_manager.operations import buckets, service_buckets
from oscar_manager.storage import folder_marks
from oscar_manager.storage.base import ObjectInfo, ObjectNotFound
from oscar_manager.storage.keys import validate_bucket, validate_key
from oscar_manager.storage.s3face import s3xml
from oscar_manager.storage.s3face.chunked import payload
from oscar_manager.storage.s3face.errors import S3Error, not_implemented
from oscar_manager.storage.s3face.listing import max_keys, page, read_token
from oscar_manager.storage.s3face.multipart import concatenated

# Sub-resources of buckets and objects this face does not keep (ACLs, policies, versions...).
_UNSUPPORTED = {
    "acl", "policy", "cors", "lifecycle", "versioning", "versions", "tagging", "website", "logging",
    "notification", "replication", "encryption", "object-lock", "retention", "legal-hold", "torrent",
    "accelerate", "requestPayment", "analytics", "inventory", "metrics", "intelligent-tiering",
    "ownershipControls", "publicAccessBlock", "restore", "select", "attributes",
}  # fmt: skip

# Who the face acts as: it takes only the admin's keys.
FACE_USER = Principal.admin("s3-face")


def _xml(body: bytes, status: int = 200) -> Response:
    return Response(body, status, media_type=s3xml.CONTENT_TYPE)


def _body(request: S3Request) -> AsyncIterator[bytes]:
    return payload(request.http.stream(), request.signed.headers, request.verified)


async def _small_body(request: S3Request, limit: int) -> bytes:
    """An XML request body, checked and bounded like every body the manager parses."""
    chunks, size = [], 0
    async for chunk in _body(request):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _drain(request: S3Request) -> int:
    """Read and check a body that must be empty (or is ignored); its size."""
    size = 0
    async for chunk in _body(request):
        size += len(chunk)
    return size


def _object_headers(info: ObjectInfo) -> dict[str, str]:
    return {
        "ETag": s3xml.quoted_etag(info.etag),
        "Last-Modified": format_datetime(info.last_modified, usegmt=True),
        "Accept-Ranges": "bytes",
    }


async def handle(face: S3Face, request: S3Request) -> Response:
    unsupported = _UNSUPPORTED & request.params.keys()
    if unsupported:
        raise not_implemented(f"the {sorted(unsupported)[0]!r} sub-resource")
    method = request.signed.method
    if not request.bucket:
        if method == "GET":
            return await _list_buckets(face)
        raise S3Error("MethodNotAllowed", "only GET (ListBuckets) is allowed here", status=405)
    validate_bucket(request.bucket)
    if not request.key:
        return await _bucket_operation(face, request, method)
    return await _object_operation(face, request, method)


# --- buckets --------------------------------------------------------------------------------------


async def _list_buckets(face: S3Face) -> Response:
    listed = await face.store.bucket_times()
    return _xml(s3xml.list_buckets(listed, owner=face.access_key))


async def _existing_bucket(face: S3Face, bucket: str) -> None:
    if not await face.store.bucket_exists(bucket):
        raise S3Error("NoSuchBucket", f"bucket {bucket!r} does not exist", status=404)


async def _bucket_operation(face: S3Face, request: S3Request, method: str) -> Response:
    params = request.params
    if method == "HEAD":
        await _existing_bucket(face, request.bucket)
        return Response(status_code=200)
    if method == "GET" and "location" in params:
        await _existing_bucket(face, request.bucket)
        return _xml(s3xml.location())
    if method == "GET" and "uploads" in params:
        raise not_implemented("ListMultipartUploads")
    if method == "GET":
        return await _list_objects(face, request)
    if method == "PUT":
        await _small_body(request, face.max_body_bytes)  # a CreateBucketConfiguration says nothing we keep
        # The face's only user is the admin, whose buckets need no record (``domain.buckets``).
        await face.store.ensure_bucket(validate_bucket(request.bucket))
        return Response(status_code=200, headers={"Location": f"/{request.bucket}"})
    if method == "DELETE":
        return await _delete_bucket(face, request.bucket)
    if method == "POST" and "delete" in params:
        return await _delete_objects(face, request)
    raise S3Error("MethodNotAllowed", f"{method} is not allowed on a bucket", status=405)


async def _delete_bucket(face: S3Face, bucket: str) -> Response:
    await _existing_bucket(face, bucket)
    async with face.database.transaction() as tx:
        used_by = await service_buckets.using_bucket(tx, bucket)
        if not used_by and await face.store.list_objects(bucket):
            raise S3Error("BucketNotEmpty", f"bucket {bucket!r} is not empty", status=409)
        # The face is local storage's: no storage rules to tell (``BucketPolicies`` is MinIO's).
        await buckets.delete_bucket(face.store, tx, None, principal=FACE_USER, bucket=bucket, used_by=used_by)
    return Response(status_code=204)


async def _list_objects(face: S3Face, request: S3Request) -> Response:
    params = request.params
    v2 = params.get("list-type") == "2"
    prefix, delimiter = params.get("prefix", ""), params.get("delimiter", "")
    token = params.get("continuation-token", "") if v2 else ""
    marker = params.get("start-after" if v2 else "marker", "")
    if token:
        after, after_prefix = read_token(token)
    else:
        after, after_prefix = marker, bool(not v2 and delimiter and marker.endswith(delimiter))
    listing = s3xml.ListRequest(
        bucket=request.bucket,
        prefix=prefix,
        delimiter=delimiter,
        max_keys=max_keys(params.get("max-keys")),
        url_encoded=params.get("encoding-type") == "url",
        v2=v2,
        marker=marker,
        token=token,
        fetch_owner=params.get("fetch-owner") == "true",
    )
    entries = await face.store.list_objects(request.bucket, prefix, markers=True)
    result = page(
        entries,
        prefix=prefix,
        delimiter=delimiter,
        after=after,
        after_prefix=after_prefix,
        limit=listing.max_keys,
    )
    return _xml(s3xml.list_objects(listing, result, owner=face.access_key))


async def _delete_objects(face: S3Face, request: S3Request) -> Response:
    keys, quiet = s3xml.delete_request(await _small_body(request, face.max_body_bytes))
    await _existing_bucket(face, request.bucket)
    deleted: list[str] = []
    errors: list[tuple[str, str, str]] = []
    for key in keys:
        try:
            await _delete_key(face, request.bucket, key)
        except OscarError as exc:
            errors.append(
                (key, type(exc).__name__ if not isinstance(exc, S3Error) else exc.code, exc.message)
            )
        else:
            deleted.append(key)
    return _xml(s3xml.delete_result(deleted, errors, quiet=quiet))


# --- objects --------------------------------------------------------------------------------------


async def _delete_key(face: S3Face, bucket: str, key: str) -> None:
    if key.endswith("/"):
        await face.store.remove_folder(bucket, validate_key(key, folder=True))
    else:
        await face.store.delete_object(bucket, key)  # a key that is not there is no error, as in S3


async def _object_operation(face: S3Face, request: S3Request, method: str) -> Response:
    params, bucket, key = request.params, request.bucket, request.key
    upload_id = params.get("uploadId")
    if method in ("GET", "HEAD"):
        if upload_id is not None:
            raise not_implemented("ListParts")
        return await _get_object(face, request, head=method == "HEAD")
    if method == "PUT" and upload_id is not None:
        return await _upload_part(face, request, upload_id)
    if method == "PUT":
        if "x-amz-copy-source" in request.signed.headers:
            return await _copy_object(face, request)
        return await _put_object(face, request)
    if method == "DELETE":
        if upload_id is not None:
            await face.uploads.abort(upload_id, bucket, key)
        else:
            await _existing_bucket(face, bucket)
            await _delete_key(face, bucket, key)
        return Response(status_code=204)
    if method == "POST" and "uploads" in params:
        validate_key(key)
        await _existing_bucket(face, bucket)
        return _xml(s3xml.multipart_started(bucket, key, await face.uploads.create(bucket, key)))
    if method == "POST" and upload_id is not None:
        return await _complete_upload(face, request, upload_id)
    raise S3Error("MethodNotAllowed", f"{method} is not allowed on an object", status=405)


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive range a ``Range`` header asks for; None for the whole object."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None  # as S3: a header it cannot use is ignored, several ranges are not served
    first, _, last = header.removeprefix("bytes=").strip().partition("-")
    try:
        if not first:
            start, end = max(size - int(last), 0), size - 1
        else:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
    except ValueError:
        return None
    if start > end or start >= size:
        raise S3Error("InvalidRange", "the requested range is not satisfiable", status=416)
    return start, end


async def _get_object(face: S3Face, request: S3Request, *, head: bool) -> Response:
    info = await face.store.stat(request.bucket, validate_key(request.key))
    if info is None:
        await _existing_bucket(face, request.bucket)
        raise ObjectNotFound(f"object {request.key!r} not found in bucket {request.bucket!r}")
    headers = _object_headers(info)
    wanted = _byte_range(request.signed.headers.get("range"), info.size)
    start, end, status = 0, info.size - 1, 200
    if wanted is not None:
        (start, end), status = wanted, 206
        headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
    headers["Content-Length"] = str(end + 1 - start)
    if head:
        return Response(status_code=status, headers=headers, media_type="binary/octet-stream")
    stream = face.store.read_stream(
        request.bucket, request.key, start=start, end=end if wanted else None, etag=info.etag
    )
    return StreamingResponse(stream, status, headers=headers, media_type="binary/octet-stream")


async def _put_object(face: S3Face, request: S3Request) -> Response:
    bucket, key = request.bucket, request.key
    await _existing_bucket(face, bucket)
    if key.endswith("/"):
        # A folder marker (the dashboard's "new folder"): a folder of the local store.
        validate_key(key, folder=True)
        if await _drain(request):
            raise S3Error("InvalidArgument", "an object whose key ends with '/' must be empty")
        await face.store.ensure_folder(bucket, key)
        return Response(status_code=200, headers={"ETag": s3xml.quoted_etag(folder_marks.EMPTY_ETAG)})
    validate_key(key)
    info = await face.store.put_stream(bucket, key, _body(request))
    return Response(status_code=200, headers={"ETag": s3xml.quoted_etag(info.etag)})


def _copy_source(header: str) -> tuple[str, str]:
    source = unquote(header.partition("?")[0]).lstrip("/")
    bucket, _, key = source.partition("/")
    if not bucket or not key:
        raise S3Error("InvalidArgument", "x-amz-copy-source must be /bucket/key")
    return validate_bucket(bucket), validate_key(key)


async def _copy_object(face: S3Face, request: S3Request) -> Response:
    source_bucket, source_key = _copy_source(request.signed.headers["x-amz-copy-source"])
    await _drain(request)
    await _existing_bucket(face, request.bucket)
    validate_key(request.key)
    source = await buckets.existing_object(face.store, bucket=source_bucket, key=source_key)
    stream = face.store.read_stream(source_bucket, source_key, etag=source.etag)
    info = await face.store.put_stream(request.bucket, request.key, stream)
    return _xml(s3xml.copy_result(info))


async def _upload_part(face: S3Face, request: S3Request, upload_id: str) -> Response:
    if "x-amz-copy-source" in request.signed.headers:
        raise not_implemented("UploadPartCopy")
    try:
        number = int(request.params.get("partNumber", ""))
    except ValueError:
        raise S3Error("InvalidArgument", "partNumber must be an integer") from None
    etag = await face.uploads.put_part(upload_id, request.bucket, request.key, number, _body(request))
    return Response(status_code=200, headers={"ETag": s3xml.quoted_etag(etag)})


async def _complete_upload(face: S3Face, request: S3Request, upload_id: str) -> Response:
    wanted = s3xml.complete_request(await _small_body(request, face.max_body_bytes))
    bucket, key = request.bucket, request.key
    files = await face.uploads.parts(upload_id, bucket, key, wanted)
    info = await face.store.put_stream(bucket, key, concatenated(files))
    # Gone only once the object is in place: a failed completion can be retried.
    await asyncio.shield(face.uploads.abort(upload_id, bucket, key))
    location = f"/{bucket}/{key}"
    return _xml(s3xml.multipart_completed(bucket, key, info.etag, location=location))
