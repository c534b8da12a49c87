"""Create, read, update and delete services.

A request's definitions are all validated before anything is written, and everything happens inside the
caller's transaction, so a failure part-way leaves the registry exactly as it was.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from oscar_manager.backends.base import Backend
from oscar_manager.domain.access import can_change, can_view, service_vo
from oscar_manager.domain.definitions import load_document, service_definitions
from oscar_manager.domain.events import InputRoute
from oscar_manager.domain.principal import Principal
from oscar_manager.domain.service import (
    MinioDefault,
    Service,
    check_name_readable,
    normalise_new,
    normalise_update,
    parse_service,
)
from oscar_manager.errors import BadRequest, Conflict, Forbidden, NotFound, OscarError
from oscar_manager.operations import exposed, service_buckets
from oscar_manager.operations.buckets import BucketPolicies, enforce
from oscar_manager.operations.offload import off_loop
from oscar_manager.operations.service_buckets import own_paths
from oscar_manager.registry import Transaction
from oscar_manager.settings import Settings
from oscar_manager.storage.providers import Stores


class QueueInputs(Protocol):
    """Checks that the queues a service's Amazon S3 inputs read can be read (``events.s3_sqs``)."""

    async def check(self, service: Service) -> None: ...


class InputNotifications(Protocol):
    """Tells the storage which input folders to report new objects of (MinIO's webhook rules)."""

    async def apply(self, routes: Iterable[InputRoute], buckets: set[str]) -> None: ...


class InputBrokers(Protocol):
    """Checks that the message brokers of a service's inputs answer (Kafka: ``events.kafka``)."""

    async def check(self, service: Service, *, previous: Service | None = None) -> None: ...


@dataclass(frozen=True, slots=True)
class Provisioning:
    """What a service is set up with besides its row: buckets, the backend's objects, notifications and
    the storage's rules of who may use each bucket."""

    stores: Stores
    backend: Backend
    notifications: InputNotifications | None = None
    policies: BucketPolicies | None = None
    queues: QueueInputs | None = None
    brokers: InputBrokers | None = None


async def _check_queues(provisioning: Provisioning, services: Iterable[Service]) -> None:
    """Before anything is written: a queue that is missing (400) or cannot be read (502) fails the
    request, naming the provider's field."""
    if provisioning.queues is not None:
        for service in services:
            await provisioning.queues.check(service)


def input_buckets(service: Service) -> set[str]:
    return {bucket for bucket, _folder in own_paths(service, "i")}


async def _notify_inputs(
    tx: Transaction, notifications: InputNotifications | None, buckets: set[str]
) -> None:
    """Bring the buckets' notification rules in line with the inputs as this transaction sees them; a
    failure (MinIO down) fails the request, so the registry change is rolled back with it."""
    if notifications is not None and buckets:
        await notifications.apply(await tx.services.input_routes(), buckets)


def minio_default(settings: Settings) -> MinioDefault:
    return MinioDefault(
        endpoint=settings.minio_endpoint, region=settings.minio_region, verify=settings.minio_tls_verify
    )


async def _existing(tx: Transaction, name: str) -> Service:
    check_name_readable(name)
    service = await tx.services.get(name)
    if service is None:
        raise NotFound(f"service {name!r} not found")
    return service


async def prepare_storage(service: Service, *, stores: Stores) -> None:
    """Buckets and folders for every input and output the manager's own storage serves.

    Existing buckets and folders are reused, never an error. Runs inside the caller's transaction: if it
    fails, the service is not recorded.
    """
    folders: dict[str, set[str]] = {}
    for bucket, folder in own_paths(service):
        folders.setdefault(bucket, set()).update([folder] if folder else [])

    async def prepare(bucket: str) -> None:
        if not folders[bucket]:
            await stores.default.ensure_bucket(bucket)
        for folder in sorted(folders[bucket]):
            await stores.default.ensure_folder(bucket, folder)  # makes the bucket too

    # Buckets at once: each is a few S3 round trips, and a create should not pay for them in a row.
    try:
        async with asyncio.TaskGroup() as group:
            for bucket in folders:
                group.create_task(prepare(bucket))
    except ExceptionGroup as failed:
        first = failed.exceptions[0]
        raise first if isinstance(first, OscarError) else failed from None


async def create(
    tx: Transaction,
    *,
    settings: Settings,
    principal: Principal,
    body: bytes,
    provisioning: Provisioning,
) -> list[Service]:
    """Create every service in ``body`` (one service, or each one of an FDL document), or none."""
    definitions = await off_loop(
        lambda: [parse_service(item) for item in service_definitions(load_document(body))], size=len(body)
    )
    names = [definition.name for definition in definitions]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise BadRequest(f"the document defines {', '.join(map(repr, duplicates))} more than once")
    minio = minio_default(settings)
    services = [
        service_buckets.with_user_buckets(
            normalise_new(
                definition.model_copy(
                    update={"vo": service_vo(principal, definition.vo, cluster_groups=settings.oidc_groups)}
                ),
                owner=principal.uid,
                namespace=settings.oscar_services_namespace,
                minio=minio,
            )
        )
        for definition in definitions
    ]
    for service in services:
        provisioning.stores.check_endpoints(service)
    exposed.check(provisioning.backend, services)
    await _check_queues(provisioning, services)
    for service in services:
        if await tx.services.exists(service.name):
            raise Conflict(f"a service named {service.name!r} already exists")
    if provisioning.brokers is not None:
        for service in services:
            await provisioning.brokers.check(service)
    await service_buckets.check_ownership(tx, provisioning.stores.default, principal, services)
    changed: set[str] = set()
    for service in services:
        await tx.services.add(service)
        changed |= await service_buckets.record(tx, service)
    await enforce(tx, provisioning.policies, changed)
    for service in services:
        await prepare_storage(service, stores=provisioning.stores)
        await provisioning.backend.prepare_service(service)
    await _notify_inputs(tx, provisioning.notifications, set().union(*map(input_buckets, services)))
    await exposed.created(tx, provisioning.backend, services)
    return services


async def every_service(tx: Transaction) -> list[Service]:
    """All services, oldest first (start-up work such as pre-pulling their images)."""
    return list(await tx.services.list_by_creation())


async def read(tx: Transaction, *, principal: Principal, name: str) -> Service:
    service = await _existing(tx, name)
    if not can_view(principal, service):
        raise Forbidden(f"you are not allowed to see service {name!r}")
    return service


async def update(
    tx: Transaction,
    *,
    settings: Settings,
    principal: Principal,
    body: bytes,
    provisioning: Provisioning,
) -> Service:
    definition = await off_loop(lambda: _one_definition(body), size=len(body))
    current = await _existing(tx, definition.name)
    if not can_change(principal, current):
        raise Forbidden(f"only the owner may update service {definition.name!r}")
    if not principal.is_admin:
        # A user keeps the service's VO by leaving it out; changing it needs membership of the new one.
        vo = definition.vo.strip() or current.vo
        if vo != current.vo:
            vo = service_vo(principal, vo, cluster_groups=settings.oidc_groups)
        definition = definition.model_copy(update={"vo": vo})
    service = service_buckets.with_user_buckets(
        normalise_update(definition, current=current, minio=minio_default(settings))
    )
    provisioning.stores.check_endpoints(service)
    exposed.check(provisioning.backend, [service])
    await _check_queues(provisioning, [service])
    await service_buckets.check_ownership(tx, provisioning.stores.default, principal, [service])
    if provisioning.brokers is not None:
        await provisioning.brokers.check(service, previous=current)
    await tx.services.replace(service)
    await enforce(tx, provisioning.policies, await service_buckets.record(tx, service, previous=current))
    await prepare_storage(service, stores=provisioning.stores)
    await provisioning.backend.prepare_service(service, previous=current)
    await _notify_inputs(tx, provisioning.notifications, input_buckets(current) | input_buckets(service))
    await exposed.updated(tx, provisioning.backend, service, previous=current)
    return service


def _one_definition(body: bytes) -> Service:
    definitions = service_definitions(load_document(body))
    if len(definitions) != 1:
        raise BadRequest("an update takes exactly one service definition")
    return parse_service(definitions[0])


async def delete(
    tx: Transaction,
    *,
    principal: Principal,
    name: str,
    provisioning: Provisioning,
    purge: bool = False,
) -> Service:
    """Delete the service with its job records and queued events. Its buckets and objects are kept unless
    ``purge`` asks for them to go too (see :func:`purge_storage`)."""
    service = await _existing(tx, name)
    if not can_change(principal, service):
        raise Forbidden(f"only the owner may delete service {name!r}")
    for job in await tx.jobs.unfinished(service=name):
        await provisioning.backend.cancel(job.id)
    await tx.jobs.delete_where(name, statuses=None)
    await tx.events.delete_for_service(name)
    await tx.services.delete(name)
    await enforce(tx, provisioning.policies, await service_buckets.release(tx, service))
    await provisioning.backend.remove_service(service)
    await _notify_inputs(tx, provisioning.notifications, input_buckets(service))
    await exposed.deleted(provisioning.backend, service)
    if purge:
        await purge_storage(tx, service, stores=provisioning.stores)
    return service


async def purge_storage(tx: Transaction, service: Service, *, stores: Stores) -> None:
    """Delete the objects in the service's input and output folders, then each of its buckets that no
    other service uses and that holds nothing else. Runs last in a delete: if it fails the deletion is
    rolled back, and what was already removed stays removed (the service can be deleted again)."""
    store = stores.default
    buckets: set[str] = set()
    for bucket, folder in own_paths(service):
        buckets.add(bucket)
        if not await store.bucket_exists(bucket):
            continue
        for info in await store.list_objects(bucket, f"{folder}/" if folder else ""):
            await store.delete_object(bucket, info.key)
        if folder:
            await store.remove_folder(bucket, folder)
    for bucket in sorted(buckets):
        if await service_buckets.using_bucket(tx, bucket):
            continue
        if await store.bucket_exists(bucket) and not await store.list_objects(bucket):
            await store.delete_bucket(bucket)
