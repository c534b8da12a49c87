"""Exposed services (issue 18) as services change: their instances made with the service, replaced by an
update, removed with it; stopped and started by their owner (the stopped flag is the registry's); and
exposed again when the manager starts.

Every call to the backend's ``Exposer`` comes last in its create, update or delete, after everything else
that can fail, so a refused request leaves no instance running for a service that does not exist.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence

from oscar_manager.backends.base import Backend
from oscar_manager.backends.exposed import DeploymentState, Endpoint, ExposedUnavailable, Exposer
from oscar_manager.domain.exposure import check_expose, check_synchronous, is_exposed
from oscar_manager.domain.service import Service, check_name_readable
from oscar_manager.errors import BadRequest, NotFound
from oscar_manager.registry import Database, Transaction

log = logging.getLogger(__name__)

STOPPED_REASON = "Deployment is stopped."  # upstream's words for a Deployment scaled to 0 by ``/stop``

# Undo work of transactions that did not commit (run after the rollback, which cannot await): kept here
# so that the tasks are not collected before they finish.
_UNDOING: set[asyncio.Task[None]] = set()


def check(backend: Backend, services: Sequence[Service]) -> None:
    """400 before anything is written: an ``expose`` block (or ``synchronous`` scales) that is invalid,
    or that this backend cannot run."""
    for service in services:
        check_expose(service)
        check_synchronous(service)
        if is_exposed(service) and backend.exposed is None:
            raise BadRequest(
                f"service {service.name!r} sets expose.api_port, but this manager's backend "
                "runs no exposed services"
            )


def exposer_of(backend: Backend, service: Service) -> Exposer:
    exposer = backend.exposed
    if exposer is None:
        raise ExposedUnavailable(
            f"this manager's backend runs no exposed services (service {service.name!r})"
        )
    return exposer


def _undo_on_rollback(tx: Transaction, undo: Callable[[], Awaitable[None]], what: str) -> None:
    def schedule() -> None:
        async def run() -> None:
            try:
                await undo()
            except Exception:
                log.exception("could not %s after the change was rolled back", what)

        task = asyncio.get_running_loop().create_task(run())
        _UNDOING.add(task)
        task.add_done_callback(_UNDOING.discard)

    tx.on_rollback(schedule)


async def created(tx: Transaction, backend: Backend, services: Sequence[Service]) -> None:
    """Expose each new exposed service; if one fails, those already exposed are removed again (and if
    the transaction does not commit after all, all of them)."""
    done: list[Service] = []
    try:
        for service in filter(is_exposed, services):
            await exposer_of(backend, service).expose(service)
            done.append(service)
    except BaseException:
        for service in done:
            try:
                await exposer_of(backend, service).unexpose(service)
            except Exception:
                log.exception("could not remove the instances of %s after a failed create", service.name)
        raise
    for service in done:
        exposer = exposer_of(backend, service)
        _undo_on_rollback(tx, functools.partial(exposer.unexpose, service), f"unexpose {service.name}")


async def updated(tx: Transaction, backend: Backend, service: Service, *, previous: Service) -> None:
    """Bring the instances in line with the new definition. A stopped service stays stopped: its instances
    are made from the definition current when it starts again."""
    if is_exposed(service):
        stopped = await tx.services.is_stopped(service.name)
        if not stopped:
            await exposer_of(backend, service).expose(
                service, previous=previous if is_exposed(previous) else None
            )
    elif is_exposed(previous):
        await tx.services.set_stopped(service.name, False)
        if backend.exposed is not None:
            await backend.exposed.unexpose(previous)


async def deleted(backend: Backend, service: Service) -> None:
    if is_exposed(service) and backend.exposed is not None:
        await backend.exposed.unexpose(service)


async def stop(tx: Transaction, backend: Backend, service: Service) -> None:
    exposer = exposer_of(backend, service)
    await tx.services.set_stopped(service.name, True)
    await exposer.stop(service)


async def start(tx: Transaction, backend: Backend, service: Service) -> None:
    """Run it again: a service stopped is exposed anew from its current definition (it may have changed
    meanwhile, and a manager started since has none of its instances), then started."""
    exposer = exposer_of(backend, service)
    if await tx.services.set_stopped(service.name, False):
        await exposer.expose(service)
    await exposer.start(service)


async def restart(tx: Transaction, backend: Backend, service: Service) -> None:
    """New instances for a running service; a stopped one stays stopped (upstream restarts the pods of a
    Deployment scaled to 0: none)."""
    exposer = exposer_of(backend, service)
    if not await tx.services.is_stopped(service.name):
        await exposer.restart(service)


async def state(tx: Transaction, backend: Backend, service: Service) -> DeploymentState:
    if await tx.services.is_stopped(service.name):
        return DeploymentState(
            state="stopped", reason=STOPPED_REASON, active_instances=0, affected_instances=0
        )
    return await exposer_of(backend, service).state(service)


async def is_stopped(database: Database, name: str) -> bool:
    async with database.reading() as tx:
        return await tx.services.is_stopped(name)


async def expose_all(database: Database, backend: Backend) -> int:
    """Expose every exposed service that is not stopped (at start-up); how many failed. Each is read with
    its row locked while it is exposed, so an update committed meanwhile elsewhere is exposed after it,
    never overwritten by the older definition."""
    exposer = backend.exposed
    async with database.reading() as tx:
        names = await tx.services.exposed_names()
    failed = 0
    for name in names:
        async with database.transaction() as tx:
            found = await tx.services.get_for_change(name)
            if found is None:
                continue
            service, stopped = found
            if not is_exposed(service) or stopped:
                continue
            if exposer is None:
                log.warning("service %s is exposed, but this backend runs no exposed services", name)
                continue
            try:
                await exposer.expose(service)
            except Exception:
                failed += 1
                log.exception("could not expose service %s at start-up", name)
    return failed


async def target(database: Database, backend: Backend, name: str) -> tuple[Service, Exposer]:
    """The exposed service ``name`` and its backend's exposer, for the proxy: 404 when there is no such
    exposed service, 503 when this backend runs none."""
    service = await named(database, name)
    if not is_exposed(service):
        raise NotFound(f"service {name!r} is not exposed (it has no expose.api_port)")
    return service, exposer_of(backend, service)


async def endpoint(database: Database, exposer: Exposer, service: Service) -> Endpoint:
    """An instance to send a request to; a stopped service's 503 says so."""
    try:
        return await exposer.endpoint(service)
    except ExposedUnavailable:
        if await is_stopped(database, service.name):
            raise ExposedUnavailable(
                f"service {service.name!r} is stopped: POST /system/services/{service.name}/start "
                "runs it again"
            ) from None
        raise


async def named(database: Database, name: str) -> Service:
    check_name_readable(name)
    service = await database.service(name)
    if service is None:
        raise NotFound(f"service {name!r} not found")
    return service
