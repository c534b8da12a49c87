"""Streaming an object into S3: one ``PutObject`` if it fits in a part, else a multipart upload.

Memory is bounded by one part plus one incoming chunk, whatever the stream's length. A multipart upload
that fails (or is cancelled) is aborted, so no object and no pending upload remain.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from oscar_manager.storage import s3_answers as answers
from oscar_manager.storage.base import StorageError
from oscar_manager.storage.s3_errors import TRANSPORT_ERRORS, S3Errors

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger(__name__)

# Multipart part size: the memory one upload holds. S3 allows 10,000 parts, so the size doubles every
# 1,000 parts (8 MiB parts up to 8 GiB, 16 MiB up to 24 GiB, ...) to stay within the limit.
PART_SIZE = 8 * 1024 * 1024
PARTS_PER_DOUBLING = 1000
MAX_PARTS = 10_000


async def upload_stream(
    client: S3Client, errors: S3Errors, *, where: str, bucket: str, key: str, chunks: AsyncIterator[bytes]
) -> tuple[int, str]:
    """Store ``chunks`` as ``bucket/key``; the number of bytes stored and the object's ETag."""
    action = f"store {bucket}/{key}"
    buffer = bytearray()
    upload_id: str | None = None
    parts: list[CompletedPartTypeDef] = []
    size = 0

    async def upload_part(data: bytes) -> None:
        nonlocal upload_id
        if upload_id is None:
            created = await errors.call(
                action, client.create_multipart_upload(Bucket=bucket, Key=key), bucket
            )
            upload_id = answers.required(created, "UploadId", what=f"a request to {action}", where=where)
        if len(parts) >= MAX_PARTS:
            raise StorageError(f"S3 storage at {where}: cannot {action}: more than {MAX_PARTS} parts")
        number = len(parts) + 1
        uploaded = await errors.call(
            action,
            client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data),
            bucket,
        )
        part_etag = answers.required(uploaded, "ETag", what=f"a request to {action}", where=where)
        parts.append({"PartNumber": number, "ETag": part_etag})

    try:
        async for chunk in chunks:
            size += len(chunk)
            buffer += chunk
            part_size = PART_SIZE << (len(parts) // PARTS_PER_DOUBLING)
            if len(buffer) < part_size:
                continue
            offset = 0
            with memoryview(buffer) as view:
                while len(buffer) - offset >= part_size:
                    await upload_part(bytes(view[offset : offset + part_size]))
                    offset += part_size
                    part_size = PART_SIZE << (len(parts) // PARTS_PER_DOUBLING)
            del buffer[:offset]
        if upload_id is None:
            put = await errors.call(
                action, client.put_object(Bucket=bucket, Key=key, Body=bytes(buffer)), bucket
            )
            etag = answers.etag(answers.required(put, "ETag", what=f"a request to {action}", where=where))
        else:
            if buffer:
                await upload_part(bytes(buffer))
            buffer.clear()
            completed = await errors.call(
                action,
                client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                ),
                bucket,
            )
            etag = answers.etag(
                answers.required(completed, "ETag", what=f"a request to {action}", where=where)
            )
    except BaseException:
        if upload_id is not None:
            await asyncio.shield(_abort(client, where=where, bucket=bucket, key=key, upload_id=upload_id))
        raise
    return size, etag


async def _abort(client: S3Client, *, where: str, bucket: str, key: str, upload_id: str) -> None:
    try:
        await client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except (ClientError, BotoCoreError, *TRANSPORT_ERRORS) as exc:
        # The server's lifecycle rules (or a later abort) must clean it up.
        log.warning("S3 storage at %s: cannot abort the upload of %s/%s: %s", where, bucket, key, exc)
