"""A service's deployment as upstream shows it (``types.ServiceDeploymentStatus``, ``DeploymentLogStream``).

Upstream has deployment figures only for exposed, Knative and KServe services; for a service whose jobs
are plain pods it answers "unavailable", and for one that is not exposed it refuses stop/start/restart.
Exposed services are not implemented here, so every service is of that kind.
"""

from __future__ import annotations

from typing import Any, NoReturn

from oscar_manager.domain.access import can_change
from oscar_manager.domain.principal import Principal
from oscar_manager.errors import BadRequest, Forbidden
from oscar_manager.operations import services
from oscar_manager.registry import Transaction
from oscar_manager.settings import Settings

UNAVAILABLE_REASON = "Current deployment visibility is unavailable for this service runtime."
NO_LOGS = "Deployment logs are unavailable for this service."
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


async def logs(tx: Transaction, *, principal: Principal, name: str) -> dict[str, Any]:
    service = await services.read(tx, principal=principal, name=name)
    return {"service_name": service.name, "available": False, "message": NO_LOGS, "entries": []}


async def lifecycle(tx: Transaction, *, principal: Principal, name: str) -> NoReturn:
    """Stop, start or restart: only for exposed services, which none is (upstream: 400)."""
    service = await services.read(tx, principal=principal, name=name)
    if not can_change(principal, service):
        raise Forbidden(f"User {principal.uid} doesn't have permission to manage this service")
    raise BadRequest(f'service "{service.name}" is not exposed')
