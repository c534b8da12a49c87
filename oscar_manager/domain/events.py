"""Bucket notifications (MinIO / S3 ``Records``) and the invocation bodies jobs receive.

MinIO posts its S3-style notification to ``/job/{service}``; the local folder watcher and, later, the
MinIO listener produce the same shape, so jobs and the supervisor see one kind of storage event.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote_plus

from oscar_manager.domain import generations
from oscar_manager.domain.documents import parse_json as parse_document
from oscar_manager.domain.isolation import user_buckets_of
from oscar_manager.domain.providers import DEFAULT_PROVIDER_ID, ProviderRef
from oscar_manager.domain.service import Service
from oscar_manager.errors import BadRequest

# Whitespace, then an opening brace: matched in place, without copying a body of megabytes.
_STARTS_AS_OBJECT = re.compile(rb"\s*\{")
MINIO_EVENT_SOURCE = "minio:s3"
STORAGE_EVENT_SOURCES = frozenset({"aws:s3", MINIO_EVENT_SOURCE})
# The manager's own storage: the only provider whose input folders it watches for new objects.
WATCHED_PROVIDER = "minio.default"
# The longest dedup key the registry holds (``events.dedup_key``, in characters as PostgreSQL counts).
DEDUP_KEY_MAX = 1100
# What a longer key keeps readable before the digest of the whole key.
_DEDUP_KEY_READABLE = DEDUP_KEY_MAX - 80


@dataclass(frozen=True, slots=True)
class ObjectEvent:
    """One object-created notification: which object, which write (upload) of it."""

    bucket: str
    key: str  # decoded: the real object key
    etag: str
    size: int
    event_time: str
    event_name: str = "s3:ObjectCreated:Put"
    principal: str = ""
    # Which write of the object (``domain.generations``): "" when the source does not tell.
    generation: str = ""
    # The access key that wrote the object, as MinIO's own record names it (its ``principalId``): "" for
    # events the manager makes itself (a listing, the folder watcher), whose ``principal`` is only a
    # label. Neither is part of the dedup key: every delivery of one upload is the same event.
    uploader: str = ""

    def dedup_key(self, service: str, *, legacy_until: datetime | None = None) -> str:
        """Same object, same write, same service: the same event, however often and by however many
        sources it is delivered; a new upload of the same content is a new event.

        ``legacy_until``: events were keyed by ETag alone until then (``Intake``), so a write from before
        keeps the key it was recorded under and is not run again.
        """
        base = f"object:{service}:{self.bucket}/{self.key}@{self.etag}"
        written = generations.written(self.generation)
        if not self.generation or (legacy_until and written is not None and written <= legacy_until):
            return bounded_key(base)
        return bounded_key(f"{base}#{self.generation}")


def bounded_key(key: str) -> str:
    """``key`` as the registry can hold it: itself when it fits, else a readable start and the SHA-256 of
    the whole. Deterministic, so every delivery of one upload still names one event (and one job: job
    names derive from this key); keys that fit keep the form older registries recorded them under.

    A key of 1,024 bytes with the longest service and bucket names (and an ETag and generation) does not
    fit; events from webhooks may carry ETags of any length."""
    if len(key) <= DEDUP_KEY_MAX:
        return key
    return (
        f"{key[:_DEDUP_KEY_READABLE]}~sha256:{hashlib.sha256(key.encode(errors='surrogatepass')).hexdigest()}"
    )


@dataclass(frozen=True, slots=True)
class InputFolder:
    """Where one input of a service takes its objects from: under ``bucket/folder/`` on ``provider``."""

    provider: str
    bucket: str
    folder: str

    def matches(self, bucket: str, key: str) -> bool:
        return bucket == self.bucket and (not self.folder or key.startswith(self.folder + "/"))


@dataclass(frozen=True, slots=True)
class InputRoute(InputFolder):
    """One service input: events for objects under ``bucket/folder/`` go to ``service``."""

    service: str
    # Objects older than the service are not its events (used when reconciling after a restart).
    since: datetime


def input_folders(service: Service) -> list[InputFolder]:
    """The service's inputs as the folders they read, providers normalised (``minio``: ``minio.default``),
    with the users' private buckets of USER isolation."""
    return [
        InputFolder(provider=provider, bucket=bucket, folder=folder)
        for provider, bucket, folder in isolated_inputs(
            ((io.storage_provider, io.path) for io in service.input),
            isolation_level=service.isolation_level,
            allowed_users=service.allowed_users,
            owner=service.owner,
        )
    ]


def isolated_inputs(
    inputs: Iterable[tuple[str, str]], *, isolation_level: str, allowed_users: Sequence[str], owner: str
) -> list[tuple[str, str, str]]:
    """(provider, bucket, folder) of each (provider, path) input, then of each user's private bucket
    (``domain.isolation``) for the inputs it is made from. Plain values: the registry reads them so."""
    inputs = list(inputs)
    folders = []
    for provider, path in inputs:
        bucket, _, folder = path.strip().strip("/").partition("/")
        folders.append((str(ProviderRef(provider or "minio")), bucket, folder.strip("/")))
    users = user_buckets_of(inputs, isolation_level=isolation_level, allowed_users=allowed_users, owner=owner)
    for user_bucket in users:
        folders += [
            (provider, user_bucket.name, folder)
            for provider, bucket, folder in folders[: len(inputs)]
            if bucket == user_bucket.source and provider == f"minio.{DEFAULT_PROVIDER_ID}"
        ]
    return folders


def input_holding(service: Service, event: ObjectEvent) -> InputFolder | None:
    """The first of the service's inputs whose folder holds the event's object, if any."""
    return next((f for f in input_folders(service) if f.matches(event.bucket, event.key)), None)


def watched(routes: Iterable[InputRoute]) -> list[InputRoute]:
    return [route for route in routes if route.provider == WATCHED_PROVIDER]


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def notification(event: ObjectEvent) -> dict[str, Any]:
    """A MinIO-style notification body for ``event`` (what scripts find in ``$EVENT``)."""
    object_fields: dict[str, Any] = {"key": quote(event.key, safe=""), "size": event.size, "eTag": event.etag}
    if (sequencer := generations.sequencer(event.generation)) is not None:
        object_fields["sequencer"] = sequencer
    return {
        "EventName": event.event_name,
        "Key": f"{event.bucket}/{event.key}",
        "Records": [
            {
                "eventVersion": "2.0",
                "eventSource": "minio:s3",
                "awsRegion": "",
                "eventTime": event.event_time,
                "eventName": event.event_name,
                "userIdentity": {"principalId": event.principal},
                "requestParameters": {"principalId": event.principal, "region": "", "sourceIPAddress": ""},
                "responseElements": {},
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "Config",
                    "bucket": {
                        "name": event.bucket,
                        "ownerIdentity": {"principalId": event.principal},
                        "arn": f"arn:aws:s3:::{event.bucket}",
                    },
                    "object": object_fields,
                },
            }
        ],
    }


def _record_event(record: Any, *, encoded_keys: bool = True) -> ObjectEvent | None:
    if not isinstance(record, dict):
        return None
    source = record.get("eventSource")
    if not isinstance(source, str) or source not in STORAGE_EVENT_SOURCES:
        return None
    s3 = record.get("s3")
    if not isinstance(s3, dict):
        raise BadRequest("malformed notification record: 's3' must be an object")
    bucket = (s3.get("bucket") or {}).get("name") if isinstance(s3.get("bucket"), dict) else None
    obj = s3.get("object")
    if not isinstance(bucket, str) or not bucket or not isinstance(obj, dict):
        raise BadRequest("malformed notification record: missing s3.bucket.name or s3.object")
    raw_key = obj.get("key")
    if not isinstance(raw_key, str) or not raw_key:
        raise BadRequest("malformed notification record: missing s3.object.key")
    identity = record.get("userIdentity")
    principal = identity.get("principalId", "") if isinstance(identity, dict) else ""
    size = obj.get("size", 0)
    return ObjectEvent(
        bucket=bucket,
        # Webhook bodies carry keys URL-encoded (``input%2Fmy+file.txt``, as faas-supervisor decodes
        # them); MinIO's listen stream sends them as they are.
        key=unquote_plus(raw_key) if encoded_keys else raw_key,
        etag=str(obj.get("eTag") or obj.get("versionId") or obj.get("sequencer") or ""),
        size=size if isinstance(size, int) else 0,
        event_time=str(record.get("eventTime") or ""),
        event_name=str(record.get("eventName") or ""),
        principal=principal if isinstance(principal, str) else "",
        generation=generations.from_record(source, obj.get("sequencer"), record.get("eventTime")),
        # Only MinIO's principal is an access key of the manager's storage (AWS names its own accounts).
        uploader=principal if source == MINIO_EVENT_SOURCE and isinstance(principal, str) else "",
    )


def object_records(document: Any, *, encoded_keys: bool = True) -> list[tuple[ObjectEvent, Any]] | None:
    """Each object event in a parsed body with the record it came from, or None when the body is not a
    storage notification at all."""
    if not isinstance(document, dict) or "Records" not in document:
        return None
    records = document["Records"]
    if not isinstance(records, list):
        raise BadRequest("malformed notification: 'Records' must be a list")
    found = [
        (event, record)
        for record in records
        if (event := _record_event(record, encoded_keys=encoded_keys)) is not None
    ]
    return found if found or not records else None


def object_events(document: Any, *, encoded_keys: bool = True) -> list[ObjectEvent] | None:
    """The object events in a parsed body, or None when it is not a storage notification at all."""
    found = object_records(document, encoded_keys=encoded_keys)
    return None if found is None else [event for event, _record in found]


def parse_json(body: bytes) -> Any:
    """The JSON object a body holds, or None when it holds no JSON object (base64, say).

    Only a body that starts as an object is parsed (invocations and notifications are objects, and
    ``1234`` is base64 as well as JSON); one that is an object beyond the limits of ``domain.documents``
    (too deep, too long an integer) is a 400 saying so.
    """
    if not _STARTS_AS_OBJECT.match(body):
        return None
    try:
        return parse_document(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def decode_payload(body: bytes) -> bytes:
    """The input file of a non-storage invocation: a JSON object as JSON text, anything else base64-decoded.

    That is what the OSCAR supervisor does, so clients send files base64-encoded. Whitespace (line breaks
    from ``base64`` tools) is ignored; anything else that is not base64 is a 400.
    """
    document = parse_json(body)
    # Only a JSON object counts as JSON: "1234" is valid base64 as well as a JSON number.
    if isinstance(document, dict):
        return json.dumps(document).encode()
    compact = b"".join(body.split())
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("the request body must be base64-encoded (or a JSON document)") from None


def payload_dedup_key(service: str, idempotency_key: str | None) -> str:
    """Plain invocations are distinct unless the client names them with an Idempotency-Key."""
    if idempotency_key:
        digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
        return f"request:{service}:{digest}"
    return f"request:{service}:{uuid.uuid4().hex}"
