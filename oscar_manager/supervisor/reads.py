"""What a storage event sent to ``/run`` or ``/job`` may make the manager read.

Such an event names a bucket and a key, and whoever stages the job in downloads that object with the
manager's (or the provider's) credentials for the script. So an event may only name an object under one
of the service's own inputs, read from that input's provider; only a principal who may read every bucket
(the admin) may name another object of ``minio.default``. The same check runs at intake, before anything
is recorded or run, and again in stage-in (on Kubernetes, in the job's own supervisor).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from oscar_manager.domain.events import ObjectEvent, decode_payload, input_holding, object_events, parse_json
from oscar_manager.domain.service import Service
from oscar_manager.errors import Forbidden
from oscar_manager.storage.keys import validate_bucket, validate_key
from oscar_manager.storage.providers import DEFAULT_PROVIDER

# Set by the manager on every Kubernetes Job ("true" only for the admin's sync runs): whether the job's
# supervisor may read a storage event's object outside the service's inputs.
READ_ANY_BUCKET_ENV = "OSCAR_READ_ANY_BUCKET"


@dataclass(frozen=True, slots=True)
class StorageRead:
    """One object a storage event asks for, and the provider it is read from."""

    event: ObjectEvent
    provider: str


def storage_reads(service: Service, events: Iterable[ObjectEvent], *, any_bucket: bool) -> list[StorageRead]:
    """Where each event's object is read from. Every event must pass: a malformed bucket or key is a 400
    (``InvalidKey``), an object under none of the service's inputs a 403 unless ``any_bucket``."""
    reads = []
    for event in events:
        validate_bucket(event.bucket)
        validate_key(event.key)
        folder = input_holding(service, event)
        if folder is not None:
            reads.append(StorageRead(event=event, provider=folder.provider))
        elif any_bucket:
            reads.append(StorageRead(event=event, provider=DEFAULT_PROVIDER))
        else:
            raise Forbidden(
                f"the storage event names '{event.bucket}/{event.key}', which is under none of the inputs "
                f"of service {service.name!r}: an invocation may only read its service's input folders"
            )
    return reads


def check_invocation(body: bytes, *, service: Service, any_bucket: bool) -> None:
    """Refuse a body before anything runs, whichever backend runs it: a malformed notification or a plain
    invocation that is neither JSON nor base64 (400), or a storage event the caller may not read (400,
    403: see :func:`storage_reads`)."""
    events = object_events(parse_json(body))
    if events:
        storage_reads(service, events, any_bucket=any_bucket)
    else:
        decode_payload(body)
