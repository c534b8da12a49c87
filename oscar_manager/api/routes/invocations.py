"""``POST /job/{service}`` (async, also the MinIO webhook target) and ``POST /run/{service}`` (sync)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from oscar_manager.api.deps import (
    AuthenticatorDep,
    BackendDep,
    DatabaseDep,
    IdentitiesDep,
    SettingsDep,
    get_authenticator,
    get_database,
    get_identities,
    get_intake,
    get_settings,
    read_limited,
)
from oscar_manager.api.lean_route import LeanRoute
from oscar_manager.auth.authenticator import Authenticator
from oscar_manager.operations import Database, invocations
from oscar_manager.operations.identities import StorageIdentities

router = APIRouter(tags=["invocations"])

_BODY = {
    "requestBody": {
        "content": {
            "application/json": {
                "schema": {"type": "object", "description": "A MinIO/S3 event, or any JSON"}
            },
            "text/plain": {"schema": {"type": "string", "description": "base64 of the input file"}},
        }
    }
}

_NO_MINIO_USER = (
    "An OIDC user's own MinIO user could not be made or checked (MinIO's admin API unreachable): "
    "nothing was recorded, try again after Retry-After"
)


async def _authorized_call(
    request: Request,
    name: str,
    database: Database,
    authenticator: Authenticator,
    identities: StorageIdentities | None,
    *,
    limit: int,
) -> tuple[invocations.Invocation, bytes]:
    """The service, once the caller is admitted, and only then the body (so strangers cannot make the
    manager read large bodies).

    These routes authenticate by themselves (a service's token is no user), so an OIDC user's own MinIO
    user is made here on their first request, as ``deps.authenticate`` does for the others (issue 16)."""
    invocation = await invocations.service_for_invocation(
        database, name=name, authorization=request.headers.get("authorization"), authenticator=authenticator
    )
    if invocation.user is not None and identities is not None:
        await identities.ensure(invocation.user)
    return invocation, await read_limited(request, limit)


async def start_job(request: Request, name: str) -> Response:
    # A LeanRoute: the getters are called here, not declared as dependencies (see ``api.lean_route``).
    settings = await get_settings(request)
    invocation, body = await _authorized_call(
        request,
        name,
        await get_database(request),
        await get_authenticator(request),
        await get_identities(request),
        limit=settings.oscar_max_body_bytes,
    )
    accepted = await (await get_intake(request)).invocation(
        service=invocation.service,
        body=body,
        idempotency_key=request.headers.get("idempotency-key"),
        owner=invocation.user,
    )
    return Response(
        status_code=status.HTTP_201_CREATED, headers={"X-Oscar-Job-Ids": ",".join(accepted.job_ids)}
    )


router.add_api_route(
    "/job/{name}",
    start_job,
    methods=["POST"],
    route_class_override=LeanRoute,
    status_code=status.HTTP_201_CREATED,
    response_class=Response,
    summary="Start a job asynchronously: answered once the event is durably recorded",
    openapi_extra=_BODY,
    responses={
        400: {"description": "Malformed event or object key, or a body that is neither JSON nor base64"},
        401: {"description": "Missing or wrong service token, or an invalid OIDC token"},
        403: {
            "description": "An OIDC user who may not see the service, or a storage event naming an "
            "object under none of the service's inputs"
        },
        404: {"description": "No such service"},
        503: {"description": _NO_MINIO_USER},
    },
)


@router.post(
    "/run/{name}",
    response_class=Response,
    summary="Run a service synchronously and return what it produced",
    openapi_extra=_BODY,
    responses={
        200: {
            "content": {"text/plain": {}},
            "description": "One output file base64-encoded, several as a "
            "base64 zip, or else the script's output",
        },
        400: {"description": "Body neither JSON nor base64, or a malformed event or object key"},
        401: {"description": "Missing or wrong service token, or an invalid OIDC token"},
        403: {
            "description": "An OIDC user who may not see the service, or a storage event naming an "
            "object under none of the service's inputs (the admin may name any)"
        },
        404: {"description": "No such service"},
        500: {"description": "The script failed, or its answer is over OSCAR_MAX_RUN_RESPONSE_BYTES"},
        503: {"description": _NO_MINIO_USER},
        504: {"description": "The run (staging in and out included) did not finish in time"},
    },
)
async def run_service(
    name: str,
    request: Request,
    settings: SettingsDep,
    database: DatabaseDep,
    authenticator: AuthenticatorDep,
    identities: IdentitiesDep,
    backend: BackendDep,
) -> Response:
    invocation, body = await _authorized_call(
        request, name, database, authenticator, identities, limit=settings.oscar_max_run_body_bytes
    )
    answer = await invocations.run_sync(
        backend,
        invocation=invocation,
        body=body,
        time_limit=settings.oscar_run_timeout,
        max_response_bytes=settings.oscar_max_run_response_bytes,
    )
    # Streamed from the answer's file, base64 chunk by chunk: a large output never sits in memory whole.
    # (The background task closes an answer whose stream never started: the client went away.)
    return StreamingResponse(
        answer.stream(),
        media_type="text/plain; charset=utf-8",
        headers={"Content-Length": str(answer.length)},
        background=BackgroundTask(answer.close),
    )
