"""Volumes, quotas and metrics: features this manager does not have, answered as upstream answers with them
off. Upstream registers no route for volumes without ``VOLUME_ENABLE`` nor for quotas without Kueue or
volumes, so those paths are 404; ``/system/config`` says ``volume_enable: false``, ``kueue_enable: false``.
The dashboard shows its Metrics page as "unavailable" on a 404, as for a manager without the metrics routes.
"""

from __future__ import annotations

from typing import Any, NoReturn

from fastapi import APIRouter

from oscar_manager.api.deps import CallerDep
from oscar_manager.errors import NotFound

router = APIRouter(prefix="/system", tags=["system"])

_OFF: dict[int | str, dict[str, Any]] = {404: {"description": "The feature is not enabled on this cluster"}}
FEATURES = {
    "volumes": ("/volumes", "/volumes/{name}"),
    "quotas": ("/quotas/user", "/quotas/user/{user_id}"),
    "metrics": ("/metrics", "/metrics/breakdown", "/metrics/{service}"),
}


def _off(feature: str, path: str) -> None:
    async def answer(_caller: CallerDep) -> NoReturn:
        raise NotFound(f"{feature} are not enabled on this cluster")

    methods = ["GET"]
    if feature == "volumes":
        methods += ["POST"] if "{" not in path else ["DELETE"]
    if feature == "quotas" and "{" in path:
        methods += ["PUT"]
    router.add_api_route(
        path,
        answer,
        methods=methods,
        name=f"{feature}{path.replace('/', '_').replace('{', '').replace('}', '')}",
        summary=f"Not enabled: {feature} (404, as upstream with the feature off)",
        responses=_OFF,
    )


for _feature, _paths in FEATURES.items():
    for _path in _paths:
        _off(_feature, _path)
