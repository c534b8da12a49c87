"""``/system/services/{name}/deployment[/logs]`` and ``/{stop|start|restart}``, as upstream answers them
(the dashboard asks for every service, exposed or not)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from oscar_manager.api.deps import BackendDep, CallerDep, SettingsDep, TransactionDep
from oscar_manager.operations import deployment

router = APIRouter(prefix="/system/services", tags=["services"])

_SEEN: dict[int | str, dict[str, Any]] = {
    403: {"description": "Not visible to the caller"},
    404: {"description": "No such service"},
}


@router.get("/{name}/deployment", summary="The service's deployment state", responses=_SEEN)
async def deployment_status(
    name: str, caller: CallerDep, tx: TransactionDep, settings: SettingsDep, backend: BackendDep
) -> dict[str, Any]:
    return await deployment.status(tx, principal=caller, settings=settings, backend=backend, name=name)


@router.get(
    "/{name}/deployment/logs",
    summary="The last tailLines lines (1-1000, default 200) of an exposed service's instances, or of "
    "another service's finished jobs",
    responses=_SEEN,
)
async def deployment_logs(
    name: str,
    caller: CallerDep,
    tx: TransactionDep,
    backend: BackendDep,
    timestamps: str = "false",
    tailLines: str = "200",
) -> dict[str, Any]:
    # Read as upstream reads them (Go's ParseBool and ParseInt, falling back to the defaults).
    return await deployment.logs(
        tx,
        principal=caller,
        backend=backend,
        name=name,
        timestamps=deployment.go_bool(timestamps),
        tail_lines=deployment.tail_lines(tailLines),
    )


def _lifecycle_route(action: str) -> None:
    async def change(
        name: str, caller: CallerDep, tx: TransactionDep, settings: SettingsDep, backend: BackendDep
    ) -> dict[str, Any]:
        return await deployment.lifecycle(
            tx, principal=caller, settings=settings, backend=backend, name=name, action=action
        )

    router.add_api_route(
        f"/{{name}}/{action}",
        change,
        methods=["POST"],
        name=f"{action}_service",
        summary=f"{action.capitalize()} an exposed service; its deployment state after",
        responses={
            400: {"description": "The service is not exposed"},
            403: {"description": "Not visible to the caller, or not theirs to manage"},
            404: {"description": "No such service"},
            503: {"description": "This backend runs no exposed services"},
        },
    )


for _action in deployment.ACTIONS:
    _lifecycle_route(_action)
