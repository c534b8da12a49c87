"""Which write of an object an event is about: one job per upload, once, from every source.

The same content put twice is two uploads (two jobs), while one upload reported twice (a redelivered
notification, the webhook and the listen record of one PUT, the scan that finds it again) is one. What
every source agrees on is the object's modification time:

- MinIO's records carry it as ``s3.object.sequencer``: ``%X`` of the time in nanoseconds, the same in the
  webhook and the listen record of one PUT (their ``eventTime``\\ s are each source's own clock);
- S3 listings show it as ``LastModified``, to the millisecond (``HEAD`` only to the second);
- a local file has its ``mtime`` (stamped by the local store when it writes).

So a generation is that time in whole milliseconds since the epoch, as a decimal string. Records from
elsewhere (an AWS sequencer is an opaque counter, not a time) are told apart by what they carry, hashed to
a bounded length; they cannot agree with a listing, and need not: only MinIO notifies the manager.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
# MinIO's sequencer: %X of a UnixNano (16 hex digits until the year 2554).
_MINIO_SEQUENCER = re.compile(r"[0-9A-Fa-f]{1,16}")
# Generations that are not times: a prefix no decimal time has, and a bounded length.
_OPAQUE = "x"


def from_time(modified: datetime) -> str:
    """The generation of the write that left an object last modified at ``modified``."""
    return str((modified - EPOCH) // _MS)


def from_nanoseconds(nanoseconds: int) -> str:
    return str(nanoseconds // 1_000_000)


def from_record(source: str, sequencer: object, event_time: object) -> str:
    """The generation a notification record names: MinIO's sequencer as a time, else whatever the record
    carries to tell deliveries apart (an opaque sequencer, its ``eventTime``), else ``""``."""
    if isinstance(sequencer, str) and source == "minio:s3" and _MINIO_SEQUENCER.fullmatch(sequencer):
        return from_nanoseconds(int(sequencer, 16))
    for value in (sequencer, event_time):
        if isinstance(value, str) and value:
            return _OPAQUE + hashlib.sha256(value.encode()).hexdigest()[:24]
    return ""


def written(generation: str) -> datetime | None:
    """When the write happened, for a generation that is a time (else None)."""
    if not generation.isdecimal():
        return None
    try:
        return EPOCH + int(generation) * _MS
    except OverflowError:
        return None


def sequencer(generation: str) -> str | None:
    """A MinIO-style sequencer for a generation that is a time, which :func:`from_record` reads back as
    the same generation (None for other generations)."""
    return f"{int(generation) * 1_000_000:X}" if generation.isdecimal() else None
