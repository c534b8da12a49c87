"""Volumes, quotas and metrics: features this manager does not have, answered as upstream answers with them
off. Upstream registers no route for volumes without ``VOLUME_ENABLE`` nor for quotas without Kueue or
volumes, so those paths are 404; ``/system/config`` says ``volume_enable: false``, ``kueue_enable: false``.
The dashboard shows its Metrics page as "unavailable" on a 404, as for a manager without the metrics routes.

One deliberate difference: ``GET /system/volumes`` answers an empty list. The dashboard's Volumes page has
no "unavailable" state (any refusal shows "Failed to load volumes"), and with the feature off there are no
volumes; creating one is still refused with 404.
"""

from __future__ import annotations

from typing import Any, NoReturn

from fastapi import APIRouter

from oscar_manager.api.deps import CallerDep
from oscar_manager.errors import NotFound

router = APIRouter(prefix="/system", tags=["system"])

_OFF: dict[int | str, dict[str, Any]] = {404: {"description": "The feature is not enabled on this cluster"}}
# The routes upstream has for each feature, with their methods.
FEATURES = {
    "volumes": (("/volumes", ("POST",)), ("/volumes/{name}", ("GET", "DELETE"))),
    "quotas": (("/quotas/user", ("GET",)), ("/quotas/user/{user_id}", ("GET", "PUT"))),
    "metrics": (("/metrics", ("GET",)), ("/metrics/breakdown", ("GET",)), ("/metrics/{service}", ("GET",))),
}


def _off(feature: str, path: str, method: str) -> None:
    async def answer(_caller: CallerDep) -> NoReturn:
        raise NotFound(f"{feature} are not enabled on this cluster")

    router.add_api_route(
        path,
        answer,
        methods=[method],
        response_model=None,
        name=f"{method.lower()}{path.replace('/', '_').replace('{', '').replace('}', '')}",
        summary=f"Not enabled: {feature} (404, as upstream with the feature off)",
        responses=_OFF,
    )


@router.get("/volumes", summary="Volumes (none: the feature is not enabled on this cluster)")
async def list_volumes(_caller: CallerDep) -> list[dict[str, Any]]:
    return []


for _feature, _routes in FEATURES.items():
    for _path, _methods in _routes:
        for _method in _methods:
            _off(_feature, _path, _method)
