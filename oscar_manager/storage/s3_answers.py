"""Reading S3 answers (listings, ``HEAD``, ``GET``) into ``ObjectInfo``: what ``storage.s3`` gets back."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from oscar_manager.storage.base import ObjectInfo


def etag(value: str) -> str:
    return value.strip('"')


def seconds(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(microsecond=0)


def now() -> datetime:
    return seconds(datetime.now(UTC))


def listed(bucket: str, item: Mapping[str, Any]) -> ObjectInfo:
    """One entry of a ``ListObjectsV2`` page."""
    return ObjectInfo(
        bucket=bucket,
        key=item["Key"],
        size=item["Size"],
        last_modified=seconds(item["LastModified"]),
        etag=etag(item["ETag"]),
    )


def answered(bucket: str, key: str, answer: Mapping[str, Any]) -> ObjectInfo:
    """The object described by a ``HEAD`` or ``GET`` answer."""
    return ObjectInfo(
        bucket=bucket,
        key=key,
        size=answer["ContentLength"],
        last_modified=seconds(answer["LastModified"]),
        etag=etag(answer["ETag"]),
    )
