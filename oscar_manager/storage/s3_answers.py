"""Reading S3 answers (listings, ``HEAD``, ``GET``, uploads) into what ``storage.s3`` returns.

S3-compatible servers differ in what they send. An answer without ``Last-Modified`` describes an object
of unknown age (``UNKNOWN_TIME``, Go's zero time as upstream's client would show it); an answer without
a field the manager cannot do without (the key, size or ETag of an object, an upload's id) is a
``StorageError`` naming the server and the field, never a ``KeyError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from oscar_manager.domain import generations
from oscar_manager.storage.base import UNKNOWN_TIME, ObjectInfo, StorageError


def etag(value: str) -> str:
    return value.strip('"')


def seconds(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(microsecond=0)


def now() -> datetime:
    return seconds(datetime.now(UTC))


def required(answer: Mapping[str, Any], field: str, *, what: str, where: str) -> Any:
    """``answer[field]``, or a ``StorageError`` saying that the server at ``where`` left it out."""
    value = answer.get(field)
    if value is None:
        raise StorageError(f"S3 storage at {where} answered {what} without {field}")
    return value


def _modified(answer: Mapping[str, Any]) -> datetime:
    value = answer.get("LastModified")
    return seconds(value) if isinstance(value, datetime) else UNKNOWN_TIME


def listed(bucket: str, item: Mapping[str, Any], *, where: str) -> ObjectInfo:
    """One entry of a ``ListObjectsV2`` page, its generation from the milliseconds only listings show."""
    what = f"a listing of bucket {bucket!r}"
    modified = item.get("LastModified")
    return ObjectInfo(
        bucket=bucket,
        key=required(item, "Key", what=what, where=where),
        size=required(item, "Size", what=what, where=where),
        last_modified=_modified(item),
        etag=etag(required(item, "ETag", what=what, where=where)),
        generation=generations.from_time(modified) if isinstance(modified, datetime) else "",
    )


def answered(bucket: str, key: str, answer: Mapping[str, Any], *, where: str) -> ObjectInfo:
    """The object described by a ``HEAD`` or ``GET`` answer."""
    what = f"a request for {bucket}/{key}"
    return ObjectInfo(
        bucket=bucket,
        key=key,
        size=required(answer, "ContentLength", what=what, where=where),
        last_modified=_modified(answer),
        etag=etag(required(answer, "ETag", what=what, where=where)),
        generation="",  # HEAD and GET tell the time to the second only
    )
