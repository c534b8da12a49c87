"""Service inputs on Amazon S3 (``s3.<id>`` providers with a ``queue``), grouped by the queue they read.

S3 does not stream notifications to whoever asks, as MinIO does: it sends them to an SQS queue. So each
distinct queue (with the credentials that read it) is consumed once per manager, and every record is routed
to the services whose input folders on that bucket hold the object: two services sharing one queue both
get their events, though SQS gives each message to one consumer only.

Which write of an object an event is about (its *generation*, ``domain.generations``) must be the same
whether the object is reported by a queue record or found by the reconcile scan's listing. An S3 record's
``sequencer`` cannot be had from a listing, so both take the object's ``LastModified`` as S3 itself
reports it, in whole seconds (HEAD gives no more): the record is checked with a HEAD of its object, the scan
reads the listing. Two uploads of one object within the same second with the same content are one event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from oscar_manager.domain import generations
from oscar_manager.domain.events import InputRoute
from oscar_manager.domain.providers import ProviderRef
from oscar_manager.domain.service import Service

S3_INPUT_TYPE = "s3"


@dataclass(frozen=True, slots=True)
class QueueSource:
    """One queue and how to reach it and the buckets it reports on: the provider entry's fields."""

    queue: str  # URL or name
    endpoint: str  # the S3 endpoint ("" for AWS); also where a queue given by name is looked up
    access_key: str
    secret_key: str
    region: str
    verify: bool = True

    @classmethod
    def of(cls, entry: Mapping[str, Any]) -> QueueSource:
        verify = entry.get("verify", True)
        return cls(
            queue=str(entry.get("queue") or ""),
            endpoint=str(entry.get("endpoint") or ""),
            access_key=str(entry.get("access_key") or ""),
            secret_key=str(entry.get("secret_key") or ""),
            region=str(entry.get("region") or "us-east-1"),
            verify=verify if isinstance(verify, bool) else str(verify).lower() != "false",
        )

    @property
    def label(self) -> str:
        """The queue as logs and the readiness answer name it (never the credentials)."""
        return self.queue


def queue_of(service: Service, provider: str) -> QueueSource | None:
    """The queue an input on ``provider`` reads, if it is an S3 provider with one."""
    reference = ProviderRef(provider)
    if reference.type != S3_INPUT_TYPE:
        return None
    entry = service.storage_providers.get(S3_INPUT_TYPE, {}).get(reference.id)
    if not entry or not entry.get("queue"):
        return None
    return QueueSource.of(entry)


def routes_by_queue(
    services: Iterable[Service], routes: Iterable[InputRoute]
) -> dict[QueueSource, list[InputRoute]]:
    """The S3 input routes of ``routes``, grouped by the queue their provider names."""
    by_name = {service.name: service for service in services}
    grouped: dict[QueueSource, list[InputRoute]] = {}
    for route in routes:
        service = by_name.get(route.service)
        source = queue_of(service, route.provider) if service is not None else None
        if source is not None:
            grouped.setdefault(source, []).append(route)
    return grouped


def s3_generation(last_modified: datetime) -> str:
    """The generation of an S3 object as both a record (checked by HEAD) and a listing name it."""
    return generations.from_time(last_modified.replace(microsecond=0))
