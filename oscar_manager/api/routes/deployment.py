"""``/system/services/{name}/deployment[/logs]`` and ``/{stop|start|restart}``, as upstream answers them for
a service that is not exposed (the dashboard asks for every service)."""

from __future__ import annotations

from typing import Any, NoReturn

from fastapi import APIRouter

from oscar_manager.api.deps import CallerDep, SettingsDep, TransactionDep
from oscar_manager.operations import deployment

router = APIRouter(prefix="/system/services", tags=["services"])

_SEEN: dict[int | str, dict[str, Any]] = {
    403: {"description": "Not visible to the caller"},
    404: {"description": "No such service"},
}


@router.get("/{name}/deployment", summary="The service's deployment state", responses=_SEEN)
async def deployment_status(
    name: str, caller: CallerDep, tx: TransactionDep, settings: SettingsDep
) -> dict[str, Any]:
    return await deployment.status(tx, principal=caller, settings=settings, name=name)


@router.get(
    "/{name}/deployment/logs",
    summary="The last tailLines lines (1-1000, default 200) of the service's finished jobs' logs",
    responses=_SEEN,
)
async def deployment_logs(
    name: str, caller: CallerDep, tx: TransactionDep, timestamps: str = "false", tailLines: str = "200"
) -> dict[str, Any]:
    # Read as upstream reads them (Go's ParseBool and ParseInt, falling back to the defaults).
    return await deployment.logs(
        tx,
        principal=caller,
        name=name,
        timestamps=deployment.go_bool(timestamps),
        tail_lines=deployment.tail_lines(tailLines),
    )


def _lifecycle_route(action: str) -> None:
    async def change(name: str, caller: CallerDep, tx: TransactionDep) -> NoReturn:
        await deployment.lifecycle(tx, principal=caller, name=name)

    router.add_api_route(
        f"/{{name}}/{action}",
        change,
        methods=["POST"],
        response_model=None,
        name=f"{action}_service",
        summary=f"{action.capitalize()} an exposed service (none is: 400)",
        responses={400: {"description": "The service is not exposed"}, **_SEEN},
    )


for _action in deployment.ACTIONS:
    _lifecycle_route(_action)
