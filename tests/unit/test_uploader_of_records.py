"""Who uploaded an object, as a storage event tells it (issue 16): MinIO's principal, and only MinIO's."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from oscar_manager.domain.events import ObjectEvent, notification, object_events
from oscar_manager.events.reconcile import object_event
from oscar_manager.storage.base import ObjectInfo


def record(principal: str | None, *, source: str = "minio:s3") -> dict[str, Any]:
    item: dict[str, Any] = {
        "eventSource": source,
        "eventTime": "2026-09-21T14:13:20.130Z",
        "eventName": "s3:ObjectCreated:Put",
        "s3": {
            "bucket": {"name": "photos"},
            "object": {"key": "in/a.jpg", "size": 3, "eTag": "abc", "sequencer": "18D5A1F3C0A8B2C5"},
        },
    }
    if principal is not None:
        item["userIdentity"] = {"principalId": principal}
    return item


def parsed(item: dict[str, Any], *, encoded_keys: bool = True) -> ObjectEvent:
    [event] = object_events({"Records": [item]}, encoded_keys=encoded_keys) or []
    return event


def test_minios_principal_is_the_uploader_by_webhook_and_by_listen_stream() -> None:
    assert parsed(record("bob@egi.eu")).uploader == "bob@egi.eu"
    assert parsed(record("bob@egi.eu"), encoded_keys=False).uploader == "bob@egi.eu"


def test_a_record_naming_no_one_or_not_minios_names_no_uploader() -> None:
    assert parsed(record(None)).uploader == ""
    assert parsed(record({"not": "a key"})).uploader == ""  # type: ignore[arg-type]
    # AWS names its own accounts: no access key of the manager's storage.
    aws = parsed(record("AWS:AIDAEXAMPLE", source="aws:s3"))
    assert (aws.principal, aws.uploader) == ("AWS:AIDAEXAMPLE", "")


def test_an_object_found_by_a_listing_names_no_uploader() -> None:
    info = ObjectInfo("photos", "in/a.jpg", 3, datetime.now(UTC), "abc", generation="1")
    event = object_event(info, principal="minio")
    assert event.uploader == ""
    # The label stays what ``$EVENT`` shows.
    assert notification(event)["Records"][0]["userIdentity"] == {"principalId": "minio"}


def test_who_uploaded_is_no_part_of_the_dedup_key() -> None:
    """Every delivery of one upload is one event, whoever it names (the listing names no one)."""
    keys = {parsed(record(who)).dedup_key("svc") for who in ("bob@egi.eu", "carol@egi.eu", None)}
    assert len(keys) == 1
