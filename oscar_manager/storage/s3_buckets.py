"""The S3 adapter's requests on whole buckets: creating, checking, listing, emptying and deleting them.

Each function takes the open client and the endpoint's ``S3Errors``; the name of the bucket asked about is
validated by the caller (``S3ObjectStore``). Creating a bucket that exists is fine when it is ours, which
S3 says by an error code (some servers only by letting us reach it); a bucket is deleted only once emptied,
a page of keys at a time.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, cast

from botocore.exceptions import BotoCoreError, ClientError

from oscar_manager.errors import Conflict
from oscar_manager.storage import s3_answers as answers
from oscar_manager.storage.base import InvalidKey, StorageError
from oscar_manager.storage.keys import validate_bucket
from oscar_manager.storage.s3_errors import TRANSPORT_ERRORS, S3Errors, code, status

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client
    from types_aiobotocore_s3.literals import BucketLocationConstraintType
    from types_aiobotocore_s3.type_defs import ObjectIdentifierTypeDef


async def create_bucket(client: S3Client, errors: S3Errors, bucket: str, *, region: str) -> None:
    """Create ``bucket`` in ``region``: if it exists and is ours, fine; if someone else's, a ``Conflict``."""
    action = f"create bucket {bucket!r}"
    try:
        if region and region != "us-east-1":
            await client.create_bucket(
                Bucket=bucket,
                CreateBucketConfiguration={
                    "LocationConstraint": cast("BucketLocationConstraintType", region)
                },
            )
        else:
            await client.create_bucket(Bucket=bucket)
    except ClientError as exc:
        answered = code(exc)
        if answered == "BucketAlreadyOwnedByYou":
            return
        # Some S3-compatible servers answer this for the caller's own buckets too.
        if answered == "BucketAlreadyExists":
            if await _accessible(client, errors, bucket):
                return
            raise Conflict(f"bucket name {bucket!r} is already taken by another account") from None
        errors.fail(action, exc, None, None)
    except (BotoCoreError, *TRANSPORT_ERRORS) as exc:
        errors.fail(action, exc, None, None)


async def _accessible(client: S3Client, errors: S3Errors, bucket: str) -> bool:
    try:
        await errors.call(f"check bucket {bucket!r}", client.head_bucket(Bucket=bucket))
    except StorageError:
        return False
    return True


async def bucket_exists(client: S3Client, errors: S3Errors, bucket: str) -> bool:
    """Whether ``bucket`` exists; one we may not access is a ``StorageError`` (access denied)."""
    try:
        await client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if status(exc) == 404 or code(exc) in {"404", "NoSuchBucket", "NotFound"}:
            return False
        errors.fail(f"check bucket {bucket!r}", exc, None, None)
    except (BotoCoreError, *TRANSPORT_ERRORS) as exc:
        errors.fail(f"check bucket {bucket!r}", exc, None, None)
    return True


async def bucket_names(client: S3Client, errors: S3Errors) -> list[str]:
    """The names of the buckets this API can address, sorted."""
    names: list[str] = []
    with errors.translate("list buckets"):
        async for page in client.get_paginator("list_buckets").paginate():
            names.extend(bucket["Name"] for bucket in page.get("Buckets", []))
    valid = []
    for name in names:
        with contextlib.suppress(InvalidKey):  # legacy names we could not address
            valid.append(validate_bucket(name))
    return sorted(valid)


async def empty_and_delete(client: S3Client, errors: S3Errors, bucket: str, *, where: str) -> int:
    """Delete every object of ``bucket``, then the bucket; how many objects (not folder markers) went."""
    count = 0
    with errors.translate(f"delete bucket {bucket!r}", bucket):
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        async for page in pages:
            keys: list[ObjectIdentifierTypeDef] = [
                {"Key": answers.required(item, "Key", what=f"a listing of {bucket!r}", where=where)}
                for item in page.get("Contents", [])
            ]
            if not keys:
                continue
            # A page holds at most 1,000 keys: exactly what one DeleteObjects takes.
            answer = await client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise StorageError(
                    f"S3 storage at {where}: cannot delete {bucket}/{first.get('Key')}: "
                    f"{first.get('Code')}: {first.get('Message')}"
                )
            count += sum(1 for item in keys if not item["Key"].endswith("/"))
        await client.delete_bucket(Bucket=bucket)
    return count
