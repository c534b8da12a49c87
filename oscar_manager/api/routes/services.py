"""``/system/services``: the upstream CRUD with its status codes (201, 200, 204) and JSON shapes."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response, status

from oscar_manager.api.deps import (
    BackendDep,
    BodyDep,
    CallerDep,
    ProvisioningDep,
    ReadingDep,
    RenderedServicesDep,
    SettingsDep,
    TransactionDep,
    after_services_change,
)
from oscar_manager.api.streaming import json_array
from oscar_manager.domain.access import can_change
from oscar_manager.domain.service_views import public_view
from oscar_manager.operations import deployment, services

router = APIRouter(prefix="/system/services", tags=["services"])

_SERVICE_REF = {"$ref": "#/components/schemas/Service"}
# The body is read raw (JSON or YAML, one service or an FDL document), so describe it by hand.
_DEFINITION_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _SERVICE_REF},
            "application/yaml": {
                "schema": {"type": "string", "description": "A service, or an FDL document (functions.oscar)"}
            },
        },
    }
}
_CHANGES = [Depends(after_services_change)]
_INCLUDE = "Optional expansions, comma-separated: deployment (each service's deployment summary)"
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed or invalid definition"},
    401: {"description": "Missing or wrong credentials"},
    413: {"description": "Body larger than OSCAR_MAX_BODY_BYTES"},
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_class=Response,
    summary="Create a service, or every service of an FDL document",
    openapi_extra=_DEFINITION_BODY,
    responses={
        **_ERRORS,
        409: {"description": "A service with that name exists"},
        502: {"description": "The storage (MinIO) refused or is unreachable: nothing was created"},
    },
    dependencies=_CHANGES,
)
async def create_service(
    settings: SettingsDep,
    caller: CallerDep,
    tx: TransactionDep,
    body: BodyDep,
    provisioning: ProvisioningDep,
) -> Response:
    await services.create(
        tx,
        settings=settings,
        principal=caller,
        body=body,
        provisioning=provisioning,
    )
    return Response(status_code=status.HTTP_201_CREATED)


@router.get(
    "",
    summary="List the services the caller may see",
    responses={200: {"content": {"application/json": {"schema": {"type": "array", "items": _SERVICE_REF}}}}},
)
async def list_services(
    caller: CallerDep,
    tx: ReadingDep,
    rendered: RenderedServicesDep,
    backend: BackendDep,
    include: Annotated[str, Query(description=_INCLUDE)] = "",
) -> Response:
    listed = await rendered.visible(tx, principal=caller)
    if not deployment.includes_deployment(include):
        return json_array(listed)
    views = await deployment.summaries(tx, backend, [json.loads(view) for view in listed])
    return json_array([json.dumps(view, separators=(",", ":")).encode() for view in views])


@router.get(
    "/{name}",
    summary="Read one service",
    responses={
        200: {"content": {"application/json": {"schema": _SERVICE_REF}}},
        400: {"description": "Not a valid service name"},
        403: {"description": "Not visible to the caller"},
        404: {"description": "No such service"},
    },
)
async def read_service(
    name: str,
    caller: CallerDep,
    tx: TransactionDep,
    backend: BackendDep,
    include: Annotated[str, Query(description=_INCLUDE)] = "",
) -> dict[str, Any]:
    service = await services.read(tx, principal=caller, name=name)
    view = public_view(service, reveal_credentials=can_change(caller, service))
    if deployment.includes_deployment(include):
        view["deployment"] = await deployment.summary(tx, backend, service)
    return view


@router.put(
    "",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Replace a service's definition (the body's name selects it); its token is kept",
    openapi_extra=_DEFINITION_BODY,
    responses={**_ERRORS, 403: {"description": "Not the owner"}, 404: {"description": "No such service"}},
    dependencies=_CHANGES,
)
async def update_service(
    settings: SettingsDep,
    caller: CallerDep,
    tx: TransactionDep,
    body: BodyDep,
    provisioning: ProvisioningDep,
) -> Response:
    await services.update(
        tx,
        settings=settings,
        principal=caller,
        body=body,
        provisioning=provisioning,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a service; its buckets and objects are kept unless purge=true",
    responses={403: {"description": "Not the owner"}, 404: {"description": "No such service"}},
    dependencies=_CHANGES,
)
async def delete_service(
    name: str,
    caller: CallerDep,
    tx: TransactionDep,
    provisioning: ProvisioningDep,
    purge: bool = False,
) -> Response:
    """With ``purge=true`` the objects in the service's input and output folders are deleted too, and
    each of its buckets that no other service uses and that is then empty."""
    await services.delete(
        tx,
        principal=caller,
        name=name,
        provisioning=provisioning,
        purge=purge,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
