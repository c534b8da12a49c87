"""Find objects that arrived while nobody was listening, and turn them into events.

Every listener (local folders, MinIO) calls this after its subscription is in place, so an object is
either reported by the subscription or found here; the intake's dedup key makes the overlap harmless: an
object found here has the generation (``domain.generations``) its notification carries, so both name the
same upload. A listing shows only the last write of each object: uploads replaced while nobody was
listening are not seen, and an object put several times meanwhile runs once, on its last content.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from oscar_manager.domain.events import InputRoute, ObjectEvent, now_rfc3339, watched
from oscar_manager.storage.base import ObjectInfo, ObjectStore

Routes = Callable[[], Awaitable[list[InputRoute]]]
Enqueue = Callable[[str, ObjectEvent], Awaitable[None]]
# Live events, routed by the intake to every service whose input folder holds the object.
Deliver = Callable[[list[ObjectEvent]], Awaitable[object]]


def object_event(info: ObjectInfo, *, principal: str) -> ObjectEvent:
    """The event of an object found by a listing (or the folder watcher). A listing does not tell who
    uploaded the object, so the event names no uploader (``principal`` is only a label for ``$EVENT``) and
    its job has no owner, unless MinIO's own record of the upload, arriving later by the listen stream
    or the webhook, names a user's key (``operations.intake``)."""
    return ObjectEvent(
        bucket=info.bucket,
        key=info.key,
        etag=info.etag,
        size=info.size,
        event_time=now_rfc3339(),
        principal=principal,
        generation=info.generation,
    )


async def reconcile(
    store: ObjectStore,
    routes: Iterable[InputRoute],
    enqueue: Enqueue,
    *,
    principal: str,
    buckets: set[str] | None = None,
) -> int:
    """Enqueue the objects under the routes' input folders (of ``buckets``, if given) that arrived after
    their service was created; returns how many were offered to the intake (duplicates included)."""
    count = 0
    for route in watched(routes):
        if buckets is not None and route.bucket not in buckets:
            continue
        if not await store.bucket_exists(route.bucket):
            continue
        # S3 reports whole seconds: an object from the service's first second must not be missed.
        since = route.since.replace(microsecond=0)
        prefix = f"{route.folder}/" if route.folder else ""
        for info in await store.list_objects(route.bucket, prefix):
            if info.last_modified >= since:
                await enqueue(route.service, object_event(info, principal=principal))
                count += 1
    return count
