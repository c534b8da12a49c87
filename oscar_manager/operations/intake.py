"""The durable intake: every event is recorded, with its dedup key, before it is acknowledged."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from oscar_manager.domain.events import (
    ObjectEvent,
    decode_payload,
    notification,
    object_records,
    parse_json,
    payload_dedup_key,
    watched,
)
from oscar_manager.domain.jobs import job_name
from oscar_manager.domain.service import Service
from oscar_manager.operations.offload import off_loop
from oscar_manager.registry import Database, NewEvent, Transaction, WriteBatch
from oscar_manager.supervisor.reads import storage_reads


@dataclass(frozen=True, slots=True)
class Accepted:
    job_ids: list[str]
    new: int


@dataclass(frozen=True, slots=True)
class Routed:
    """What became of a batch of storage events."""

    new: int  # (service, object) events recorded for the first time
    duplicates: int  # already recorded: a redelivery, or found by two listeners
    ignored: int  # under no service's input folder (unknown bucket or prefix, folder markers)


def _single_record(document: dict[str, Any], record: Any) -> bytes:
    return json.dumps({**document, "Records": [record]}).encode()


def _items(
    service: Service, body: bytes, idempotency_key: str | None, legacy_until: datetime | None
) -> list[tuple[str, bytes]]:
    """(dedup key, job payload) for each job a body asks for; raises 400 (or 403 for a storage event the
    job may not read) before anything is written."""
    document = parse_json(body)
    found = object_records(document)
    if found:
        assert isinstance(document, dict)
        # Folder markers (``in/sub/``, made by MinIO's console) are no one's input, as on /events/minio:
        # MinIO posting one here gets its 201 and no job, not a 400 it would retry.
        pairs = [(e, r) for e, r in found if not e.key.endswith("/")]
        # A job runs later, unattended and with no record of who asked for it: whoever sends it, its
        # storage events name objects under the service's inputs (the admin reads elsewhere with /run).
        storage_reads(service, [event for event, _ in pairs], any_bucket=False)
        if len(pairs) == 1 and len(found) == 1:
            return [(found[0][0].dedup_key(service.name, legacy_until=legacy_until), body)]
        return [
            (event.dedup_key(service.name, legacy_until=legacy_until), _single_record(document, record))
            for event, record in pairs
        ]
    decode_payload(body)  # a plain invocation must be JSON or base64, as the supervisor will read it
    return [(payload_dedup_key(service.name, idempotency_key), body)]


def _new_events(service: str, items: list[tuple[str, bytes]], *, owner: str | None = None) -> list[NewEvent]:
    return [
        NewEvent(
            dedup_key=dedup_key,
            service=service,
            job_id=job_name(service, dedup_key),
            payload=payload,
            owner=owner,
        )
        for dedup_key, payload in items
    ]


def _accepted(events: list[NewEvent], recorded: list[bool]) -> Accepted:
    return Accepted(job_ids=[event.job_id for event in events], new=sum(recorded))


async def _record(
    tx: Transaction, service: str, items: list[tuple[str, bytes]], *, owner: str | None = None
) -> Accepted:
    events = _new_events(service, items, owner=owner)
    return _accepted(events, await tx.events.enqueue_many(events))


class Intake:
    """Records events and wakes the dispatcher once they are committed. Events arriving at the same time
    are written by one statement and committed together (group commit): each caller is answered once its
    own events are committed.
    """

    def __init__(self, database: Database, *, wake: Callable[[], None]) -> None:
        self._database = database
        self._wake = wake
        # Events of requests arriving together: one INSERT, one commit.
        self._batch: WriteBatch[NewEvent, bool] = WriteBatch(
            database, lambda tx, events: tx.events.enqueue_many(events)
        )
        # Storage events since start: new, duplicates, ignored (shown by /system/info).
        self.counters: Counter[str] = Counter()
        self._legacy_until: datetime | None = None
        self._legacy_read = False

    async def _legacy_object_keys_until(self) -> datetime | None:
        """Until when object events were keyed by ETag alone (``ObjectEvent.dedup_key``); read once, as
        only a migration sets it."""
        if not self._legacy_read:
            async with self._database.reading() as tx:
                self._legacy_until = await tx.marks.legacy_object_keys_until()
            self._legacy_read = True
        return self._legacy_until

    async def invocation(
        self, *, service: Service, body: bytes, idempotency_key: str | None, owner: str | None = None
    ) -> Accepted:
        """``owner``: the OIDC user invoking, recorded on the jobs so they can list them."""
        if owner and idempotency_key:
            # A user's Idempotency-Key names their own request, never the job of someone else.
            idempotency_key = f"{owner}\n{idempotency_key}"
        legacy_until = await self._legacy_object_keys_until()
        items = await off_loop(lambda: _items(service, body, idempotency_key, legacy_until), size=len(body))
        events = _new_events(service.name, items, owner=owner)
        if not events:  # folder markers only
            return Accepted(job_ids=[], new=0)
        accepted = _accepted(events, await self._batch.add(events))
        if accepted.new:
            self._wake()
        return accepted

    async def object_event(self, *, service: str, event: ObjectEvent) -> Accepted:
        payload = json.dumps(notification(event)).encode()
        legacy_until = await self._legacy_object_keys_until()
        events = _new_events(service, [(event.dedup_key(service, legacy_until=legacy_until), payload)])
        accepted = _accepted(events, await self._batch.add(events))
        if accepted.new:
            self._wake()
        return accepted

    async def storage_events(self, events: list[ObjectEvent]) -> Routed:
        """Record each object event for every service whose input folder holds the object.

        Routes are read in the same transaction as the events are written, so a service created a moment
        ago gets its events, and a deleted one none.
        """

        legacy_until = await self._legacy_object_keys_until()

        async def route(tx: Transaction) -> Routed:
            new = duplicates = ignored = 0
            routes = watched(await tx.services.input_routes())
            for event in events:
                targets = [route for route in routes if route.matches(event.bucket, event.key)]
                if not targets or event.key.endswith("/"):
                    ignored += 1
                    continue
                payload = json.dumps(notification(event)).encode()
                for route in targets:
                    key = event.dedup_key(route.service, legacy_until=legacy_until)
                    accepted = await _record(tx, route.service, [(key, payload)])
                    new += accepted.new
                    duplicates += 1 - accepted.new
            return Routed(new=new, duplicates=duplicates, ignored=ignored)

        routed = await self._database.write(route)
        self.counters.update(new=routed.new, duplicates=routed.duplicates, ignored=routed.ignored)
        if routed.new:
            self._wake()
        return routed
