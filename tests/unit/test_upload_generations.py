"""One job per upload: the dedup key and job name of an object event name the upload (its generation), so
every source of one upload agrees and a new upload of the same content differs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from oscar_manager.domain import generations
from oscar_manager.domain.events import DEDUP_KEY_MAX, ObjectEvent, notification, object_events
from oscar_manager.domain.jobs import job_name
from oscar_manager.events.reconcile import object_event
from oscar_manager.storage import s3_answers

# 2026-09-21T14:13:20.123456789Z, in ns: what MinIO puts (%X) in the sequencer of a PUT made then.
WRITTEN_NS = 1_790_000_000_123_456_789
LISTED = datetime(2026, 9, 21, 14, 13, 20, 123000, tzinfo=UTC)  # the listing: milliseconds only


def minio_record(
    *, sequencer: int = WRITTEN_NS, event_time: str = "2026-09-21T14:13:20.130Z"
) -> dict[str, Any]:
    return {
        "eventSource": "minio:s3",
        "eventTime": event_time,
        "eventName": "s3:ObjectCreated:Put",
        "s3": {
            "bucket": {"name": "photos"},
            "object": {"key": "in/a.jpg", "size": 3, "eTag": "abc", "sequencer": f"{sequencer:X}"},
        },
    }


def parsed(record: dict[str, Any], *, encoded_keys: bool = True) -> ObjectEvent:
    [event] = object_events({"Records": [record]}, encoded_keys=encoded_keys) or []
    return event


def test_the_webhook_and_the_listen_record_of_one_put_are_one_event() -> None:
    # Each source stamps its own eventTime; the sequencer (the object's modification time) is the PUT's.
    webhook = parsed(minio_record(event_time="2026-09-21T14:13:20.130Z"))
    listen = parsed(minio_record(event_time="2026-09-21T14:13:20.131Z"), encoded_keys=False)
    assert webhook.dedup_key("svc") == listen.dedup_key("svc")
    assert job_name("svc", webhook.dedup_key("svc")) == job_name("svc", listen.dedup_key("svc"))


def test_a_new_put_of_the_same_content_is_a_new_event_and_a_new_job_name() -> None:
    first = parsed(minio_record())
    again = parsed(minio_record(sequencer=WRITTEN_NS + 5_000_000))  # 5 ms later, same ETag
    assert first.etag == again.etag
    assert first.dedup_key("svc") != again.dedup_key("svc")
    assert job_name("svc", first.dedup_key("svc")) != job_name("svc", again.dedup_key("svc"))


def test_the_scan_finds_the_upload_its_notification_named() -> None:
    """A listing shows LastModified to the millisecond: the scanned object has the notification's key."""
    info = s3_answers.listed(
        "photos", {"Key": "in/a.jpg", "Size": 3, "ETag": '"abc"', "LastModified": LISTED}, where="s3"
    )
    scanned = object_event(info, principal="reconciler")
    assert scanned.dedup_key("svc") == parsed(minio_record()).dedup_key("svc")
    assert info.last_modified == LISTED.replace(microsecond=0)  # what the API shows stays in seconds


def test_the_managers_own_notification_reads_back_as_the_same_upload() -> None:
    """What the local watcher and the reconciler record is what a job sees in $EVENT; posted again (a
    redelivery by hand), it is the same event."""
    event = ObjectEvent(
        bucket="photos", key="in/a b.jpg", etag="e", size=3, event_time="t", generation="1790000000123"
    )
    document = json.loads(json.dumps(notification(event)))
    [again] = object_events(document) or []
    assert again.dedup_key("svc") == event.dedup_key("svc")


def test_records_that_are_not_minios_are_told_apart_by_what_they_carry() -> None:
    aws = minio_record() | {"eventSource": "aws:s3"}
    aws["s3"]["object"]["sequencer"] = "0055AED6DCD90281E5"  # an opaque counter, not a time
    assert generations.written(parsed(aws).generation) is None
    assert parsed(aws).dedup_key("svc") == parsed(aws).dedup_key("svc")

    without_sequencer = minio_record()
    del without_sequencer["s3"]["object"]["sequencer"]
    later = minio_record(event_time="2026-09-21T14:14:00.000Z")
    del later["s3"]["object"]["sequencer"]
    assert parsed(without_sequencer).dedup_key("svc") != parsed(later).dedup_key("svc")

    # Whatever a record carries, the key stays short.
    huge = minio_record(event_time="t" * 100_000)
    del huge["s3"]["object"]["sequencer"]
    assert len(parsed(huge).dedup_key("svc")) < 100


def test_uploads_from_before_the_change_keep_their_etag_key() -> None:
    """An upgraded registry recorded object events by ETag alone until ``legacy_until``: an object
    written before then keeps that key (not run again); one written after gets its upload's key."""
    until = datetime(2026, 9, 21, 14, 13, 21, tzinfo=UTC)
    before = parsed(minio_record())
    after = parsed(minio_record(sequencer=WRITTEN_NS + 2_000_000_000))
    legacy = "object:svc:photos/in/a.jpg@abc"
    assert before.dedup_key("svc", legacy_until=until) == legacy
    assert after.dedup_key("svc", legacy_until=until) == after.dedup_key("svc") != legacy
    assert before.dedup_key("svc") != legacy
    assert generations.written(before.generation) == LISTED
    assert generations.written(after.generation) == LISTED + timedelta(seconds=2)


def test_a_key_too_long_for_the_registry_is_bounded_the_same_way_every_time() -> None:
    """The longest legal names (39-character service, 63-character bucket, 1,024-byte key) with a
    webhook's arbitrary ETag: the key fits the column, stays readable at its start, is the same for each
    delivery and differs for a different object or upload; keys that fit keep their old form."""
    long_key = "in/" + "k" * 1021

    def event(key: str, etag: str = "e" * 300, generation: str = "1764950400000") -> ObjectEvent:
        return ObjectEvent(bucket="b" * 63, key=key, etag=etag, size=1, event_time="", generation=generation)

    key = event(long_key).dedup_key("s" * 39)
    assert len(key) <= DEDUP_KEY_MAX
    assert key.startswith(f"object:{'s' * 39}:{'b' * 63}/in/kkk")
    assert key == event(long_key).dedup_key("s" * 39)
    assert key != event(long_key[:-1] + "x").dedup_key("s" * 39)
    assert key != event(long_key, generation="1764950400001").dedup_key("s" * 39)
    assert len(job_name("s" * 39, key)) <= 56
    short = event("in/a.txt", etag="abc")
    assert short.dedup_key("svc") == "object:svc:" + "b" * 63 + "/in/a.txt@abc#1764950400000"
