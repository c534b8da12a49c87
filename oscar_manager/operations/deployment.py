"""A service's deployment as upstream shows it (``types.ServiceDeploymentStatus``, ``DeploymentLogStream``).

Upstream has deployment figures only for exposed, Knative and KServe services. An exposed service's
(``expose.api_port``) come from the backend's ``Exposer``, and only it can be stopped, started and
restarted. A service's warm pods (Kubernetes, ``backends.warm_kube``) are upstream's Knative service of a
sync service: their state is shown as ``knative_service``. For any other service the state is
"unavailable" and its "deployment logs" are, upstream, the
logs of its finished job pods (the last ``tailLines`` lines of them all, by time); here the job logs the
registry keeps, which outlive the pods.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from oscar_manager.backends.base import Backend, WarmScaling
from oscar_manager.backends.exposed import DeploymentState, ExposedUnavailable
from oscar_manager.domain import logtimes
from oscar_manager.domain.access import can_change
from oscar_manager.domain.exposure import is_exposed
from oscar_manager.domain.jobs import JobLog
from oscar_manager.domain.principal import Principal
from oscar_manager.domain.service import Service
from oscar_manager.errors import BadRequest, Forbidden
from oscar_manager.operations import exposed, jobs, services
from oscar_manager.registry import Transaction
from oscar_manager.settings import Settings

UNAVAILABLE_REASON = "Current deployment visibility is unavailable for this service runtime."
NO_LOGS = "Deployment logs are unavailable for this service."
NOT_YET = "Deployment logs are not yet available."
LAST_ATTEMPT = (
    "Returning recent logs from the last runtime attempt while deployment status remains unavailable."
)
ACTIONS = ("stop", "start", "restart")
EXPOSED_KIND = "exposed_service"
WARM_KIND = "knative_service"
_UNAVAILABLE: dict[str, Any] = {
    "state": "unavailable",
    "reason": UNAVAILABLE_REASON,
    "active_instances": 0,
    "affected_instances": 0,
    "resource_kind": "unavailable",
}
# Services whose state is read from the cluster at once, for a list with ``?include=deployment``.
_AT_ONCE = 16


async def status(
    tx: Transaction, *, principal: Principal, settings: Settings, backend: Backend, name: str
) -> dict[str, Any]:
    """Upstream's ``ServiceDeploymentStatus``: the summary with the service's name and namespace."""
    service = await services.read(tx, principal=principal, name=name)
    namespace = service.namespace or settings.oscar_services_namespace
    return {"service_name": service.name, "namespace": namespace, **await summary(tx, backend, service)}


async def summary(tx: Transaction, backend: Backend, service: Service) -> dict[str, Any]:
    """Upstream's ``ServiceDeploymentSummary`` (``deployment`` of a service listed or read with
    ``?include=deployment``): an exposed service's instances, a service's warm pods
    (``backends.warm_kube``: upstream's Knative service for sync runs, so ``knative_service``), else
    "unavailable" as upstream words it."""
    if is_exposed(service) and backend.exposed is not None:
        return _shown(await exposed.state(tx, backend, service), EXPOSED_KIND)
    if isinstance(backend, WarmScaling):
        warm = await backend.warm_state(service)
        if warm is not None:
            return _shown(warm, WARM_KIND)
    return dict(_UNAVAILABLE)


async def summaries(tx: Transaction, backend: Backend, views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``views`` (services as listed) each with its ``deployment``, read a few at a time."""
    found = {service.name: service for service in await tx.services.get_many([v["name"] for v in views])}
    limit = asyncio.Semaphore(_AT_ONCE)

    async def one(view: dict[str, Any]) -> dict[str, Any]:
        service = found.get(view["name"])
        if service is None:  # deleted since it was listed
            return {**view, "deployment": dict(_UNAVAILABLE)}
        async with limit:
            try:
                return {**view, "deployment": await summary(tx, backend, service)}
            except ExposedUnavailable as exc:  # its objects are missing: the list still answers
                return {**view, "deployment": {**_UNAVAILABLE, "reason": exc.message}}

    return list(await asyncio.gather(*map(one, views)))


def includes_deployment(include: str) -> bool:
    """Whether ``?include=`` asks for it: a comma-separated list, case-insensitive, as upstream reads it."""
    return any(part.strip().lower() == "deployment" for part in include.split(","))


def _shown(state: DeploymentState, kind: str) -> dict[str, Any]:
    """Empty ``reason`` and no transition time left out (Go's ``omitempty``)."""
    answer: dict[str, Any] = {"state": state.state}
    if state.reason:
        answer["reason"] = state.reason
    if state.last_transition_time is not None:
        answer["last_transition_time"] = _rfc3339(state.last_transition_time)
    return {
        **answer,
        "active_instances": state.active_instances,
        "affected_instances": state.affected_instances,
        "resource_kind": kind,
    }


def _rfc3339(moment: datetime) -> str:
    """As Go's ``metav1.Time`` renders: UTC, seconds."""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


async def logs(
    tx: Transaction,
    *,
    principal: Principal,
    backend: Backend,
    name: str,
    timestamps: bool,
    tail_lines: int,
) -> dict[str, Any]:
    """An exposed service's: the last ``tail_lines`` lines of its instances. Any other's: the last
    ``tail_lines`` non-blank lines of the service's finished jobs (those the caller may see). In time
    order, as upstream's ``DeploymentLogStream``: each line trimmed, its time in RFC 3339 seconds only
    with ``timestamps``."""
    service = await services.read(tx, principal=principal, name=name)
    if is_exposed(service) and backend.exposed is not None:
        return await _instance_logs(tx, backend, service, timestamps=timestamps, tail_lines=tail_lines)
    entries: list[tuple[str, str]] = []

    def enough(found: list[JobLog]) -> bool:
        entries[:] = [entry for kept in found for entry in _entries(kept)]
        return len(entries) >= tail_lines

    found = await jobs.finished_logs(tx, principal=principal, service=service.name, enough=enough)
    enough(found)
    answer: dict[str, Any] = {"service_name": service.name, "available": False, "entries": []}
    if not found:
        return {**answer, "message": NO_LOGS}
    if not entries:
        return {**answer, "message": NOT_YET}
    # Stamps are UTC with nine fraction digits: their text sorts as their time (a stable sort keeps lines
    # of one time in order).
    entries.sort(key=lambda entry: entry[0])
    shown = [
        {"timestamp": stamp[:19] + "Z", "message": message} if timestamps else {"message": message}
        for stamp, message in entries[-tail_lines:]
    ]
    return {**answer, "available": True, "message": LAST_ATTEMPT, "entries": shown}


async def _instance_logs(
    tx: Transaction, backend: Backend, service: Service, *, timestamps: bool, tail_lines: int
) -> dict[str, Any]:
    answer: dict[str, Any] = {"service_name": service.name, "available": False, "entries": []}
    lines = await exposed.exposer_of(backend, service).logs(service, tail_lines=tail_lines)
    kept = [(stamp, line.strip()) for stamp, line in lines if line.strip()][-tail_lines:]
    if not kept:
        # Upstream: no pod to read (stopped), or pods with nothing to show yet.
        stopped = await tx.services.is_stopped(service.name)
        return {**answer, "message": NO_LOGS if stopped else NOT_YET}
    shown = [
        {"timestamp": stamp, "message": message} if timestamps and stamp else {"message": message}
        for stamp, message in ((_seconds(stamp), message) for stamp, message in kept)
    ]
    return {**answer, "available": True, "entries": shown}


def _seconds(stamp: str) -> str:
    """An RFC 3339 time (up to nanoseconds) as upstream shows it: UTC, seconds; "" if unreadable."""
    text = stamp.strip().replace("Z", "+00:00").replace("z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # Python reads at most six fraction digits: drop them all (seconds are shown)
        zone = next((i for i, char in enumerate(rest) if char in "+-"), len(rest))
        text = head + rest[zone:]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return ""
    return _rfc3339(moment)


def _entries(kept: JobLog) -> list[tuple[str, str]]:
    fallback = logtimes.stamp_of(kept.fallback)
    timed = logtimes.timed_lines(kept.text, kept.times, fallback=fallback)
    return [(stamp, line.strip()) for stamp, line in timed if line.strip()]


def tail_lines(value: str) -> int:
    """As upstream reads ``tailLines``: 200 unless a number from 1, at most 1000."""
    try:
        lines = int(value)
    except ValueError:
        return 200
    return 200 if lines < 1 else min(lines, 1000)


def go_bool(value: str) -> bool:
    """As Go's ``strconv.ParseBool``, an unreadable value being false (as upstream ignores the error)."""
    return value in ("1", "t", "T", "TRUE", "true", "True")


_ACTIONS: dict[str, Callable[[Transaction, Backend, Service], Awaitable[None]]] = {
    "stop": exposed.stop,
    "start": exposed.start,
    "restart": exposed.restart,
}


async def lifecycle(
    tx: Transaction, *, principal: Principal, settings: Settings, backend: Backend, name: str, action: str
) -> dict[str, Any]:
    """Stop, start or restart an exposed service (its owner or the admin); upstream's answer, its status.
    Any other service: 400, as upstream."""
    service = await services.read(tx, principal=principal, name=name)
    if not can_change(principal, service):
        raise Forbidden(f"User {principal.uid} doesn't have permission to manage this service")
    if not is_exposed(service):
        raise BadRequest(f'service "{service.name}" is not exposed')
    await _ACTIONS[action](tx, backend, service)
    namespace = service.namespace or settings.oscar_services_namespace
    state = _shown(await exposed.state(tx, backend, service), EXPOSED_KIND)
    return {"service_name": service.name, "namespace": namespace, **state}
