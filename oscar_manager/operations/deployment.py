"""A service's deployment as upstream shows it (``types.ServiceDeploymentStatus``, ``DeploymentLogStream``).

Upstream has deployment figures only for exposed, Knative and KServe services; for a service whose jobs
are plain pods it answers "unavailable", and for one that is not exposed it refuses stop/start/restart.
Exposed services are not implemented here, so every service is of that kind. Its "deployment logs" are
then, upstream, the logs of its finished job pods (the last ``tailLines`` lines of them all, by time);
here the job logs the registry keeps, which outlive the pods.
"""

from __future__ import annotations

from typing import Any, NoReturn

from oscar_manager.domain import logtimes
from oscar_manager.domain.access import can_change
from oscar_manager.domain.jobs import JobLog
from oscar_manager.domain.principal import Principal
from oscar_manager.errors import BadRequest, Forbidden
from oscar_manager.operations import jobs, services
from oscar_manager.registry import Transaction
from oscar_manager.settings import Settings

UNAVAILABLE_REASON = "Current deployment visibility is unavailable for this service runtime."
NO_LOGS = "Deployment logs are unavailable for this service."
NOT_YET = "Deployment logs are not yet available."
LAST_ATTEMPT = (
    "Returning recent logs from the last runtime attempt while deployment status remains unavailable."
)
ACTIONS = ("stop", "start", "restart")


async def status(tx: Transaction, *, principal: Principal, settings: Settings, name: str) -> dict[str, Any]:
    service = await services.read(tx, principal=principal, name=name)
    return {
        "service_name": service.name,
        "namespace": settings.oscar_services_namespace,
        "state": "unavailable",
        "reason": UNAVAILABLE_REASON,
        "active_instances": 0,
        "affected_instances": 0,
        "resource_kind": "unavailable",
    }


async def logs(
    tx: Transaction, *, principal: Principal, name: str, timestamps: bool, tail_lines: int
) -> dict[str, Any]:
    """The last ``tail_lines`` non-blank lines of the service's finished jobs (those the caller may see),
    in time order, as upstream's ``DeploymentLogStream``: each line trimmed, its time in RFC 3339 seconds
    only with ``timestamps``."""
    service = await services.read(tx, principal=principal, name=name)
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


async def lifecycle(tx: Transaction, *, principal: Principal, name: str) -> NoReturn:
    """Stop, start or restart: only for exposed services, which none is (upstream: 400)."""
    service = await services.read(tx, principal=principal, name=name)
    if not can_change(principal, service):
        raise Forbidden(f"User {principal.uid} doesn't have permission to manage this service")
    raise BadRequest(f'service "{service.name}" is not exposed')
