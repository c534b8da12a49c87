"""``/system/services/{name}/exposed[/{path}]``: an exposed service's own API, proxied to one of its
instances (every method, and websockets), and ``GET /system/services/{name}/auth``, which checks a
caller for a service and hands out the cookie that admits a browser to it (``auth_type: forward``).

Upstream's ingress serves these paths; here the manager does, so no ingress controller is needed. As
there, an exposed service is public at its path unless it sets ``set_auth``
(``operations.exposed_access``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response, WebSocket
from starlette.requests import HTTPConnection

from oscar_manager.api import proxy, ws_proxy
from oscar_manager.api.deps import AuthenticatorDep, BackendDep, DatabaseDep
from oscar_manager.api.error_answers import error_response
from oscar_manager.auth.authenticator import Authenticator
from oscar_manager.backends.base import Backend
from oscar_manager.backends.exposed import Endpoint
from oscar_manager.domain.exposure import base_path, cookie_name, instance_target
from oscar_manager.domain.service import Service
from oscar_manager.errors import OscarError
from oscar_manager.operations import Database, exposed, exposed_access
from oscar_manager.operations.exposed_access import Presented

router = APIRouter(prefix="/system/services", tags=["exposed services"])

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_PROXIED: dict[int | str, dict[str, Any]] = {
    200: {"description": "The instance's answer, whatever its status"},
    401: {"description": "set_auth: no or wrong credentials"},
    403: {"description": "auth_type forward: an OIDC user who may not see the service"},
    404: {"description": "No such exposed service"},
    502: {"description": "The instance did not answer on api_port"},
    503: {"description": "The service is stopped, none of its instances is ready, or this backend runs none"},
}


def _presented(connection: HTTPConnection, name: str, *, forwarded_uri: bool = False) -> Presented:
    return Presented(
        authorization=connection.headers.get("authorization"),
        query_token=connection.query_params.get("token"),
        cookie_token=connection.cookies.get(cookie_name(name)),
        forwarded_uri=connection.headers.get("x-forwarded-uri") if forwarded_uri else None,
    )


def _cookie(connection: HTTPConnection, name: str, token: str) -> str:
    """Upstream's cookie: for the service's exposed path only, not readable by scripts, Secure behind
    HTTPS, a session cookie."""
    secure = (
        connection.headers.get("x-forwarded-proto", "").lower() == "https" or connection.url.scheme == "https"
    )
    return (
        f"{cookie_name(name)}={token}; Path={base_path(name)}; HttpOnly"
        + ("; Secure" if secure else "")
        + "; SameSite=Lax"
    )


def _target(connection: HTTPConnection, service: Service) -> str:
    raw_path: bytes = connection.scope.get("raw_path") or connection.scope["path"].encode()
    query: bytes = connection.scope.get("query_string", b"")
    return instance_target(service, raw_path.decode("latin-1"), query.decode("latin-1"))


async def _exposed_http(
    request: Request,
    name: str,
    database: DatabaseDep,
    backend: BackendDep,
    authenticator: AuthenticatorDep,
) -> Response:
    service, admission, endpoint = await _admitted(request, name, database, backend, authenticator)
    clients: proxy.ExposedClients = request.app.state.exposed_clients
    return await proxy.forward(
        request,
        clients,
        name=name,
        port=service.expose.api_port[0],
        endpoint=endpoint,
        target=_target(request, service),
        set_cookies=[_cookie(request, name, admission.token)] if admission.token else [],
        withheld=_withheld(request, authenticator),
    )


def _withheld(connection: HTTPConnection, authenticator: Authenticator) -> tuple[str, ...]:
    """The caller's headers the instance must not get: the manager's own credentials."""
    own = authenticator.own_credentials(connection.headers.get("authorization"))
    return ("authorization",) if own else ()


async def _admitted(
    connection: HTTPConnection,
    name: str,
    database: Database,
    backend: Backend,
    authenticator: Authenticator,
) -> tuple[Service, exposed_access.Admission, Endpoint]:
    """The service, the caller let in (or refused: raises) and the instance to send it to."""
    service, exposer = await exposed.target(database, backend, name)
    admission = await exposed_access.admit(service, authenticator, _presented(connection, name))
    return service, admission, await exposed.endpoint(database, exposer, service)


async def _exposed_root(
    request: Request, name: str, database: DatabaseDep, backend: BackendDep, authenticator: AuthenticatorDep
) -> Response:
    return await _exposed_http(request, name, database, backend, authenticator)


async def _exposed_path(
    request: Request,
    name: str,
    path: str,
    database: DatabaseDep,
    backend: BackendDep,
    authenticator: AuthenticatorDep,
) -> Response:
    del path  # the undecoded path is taken from the request itself
    return await _exposed_http(request, name, database, backend, authenticator)


# One route a method, so that each has an operation id of its own in the OpenAPI document.
for _method in METHODS:
    router.add_api_route(
        "/{name}/exposed",
        _exposed_root,
        methods=[_method],
        name=f"exposed_root_{_method.lower()}",
        summary="An exposed service's API at its root (proxied to an instance)",
        responses=_PROXIED,
        response_class=Response,
    )
    router.add_api_route(
        "/{name}/exposed/{path:path}",
        _exposed_path,
        methods=[_method],
        name=f"exposed_path_{_method.lower()}",
        summary="An exposed service's API (proxied; the prefix stripped unless rewrite_target)",
        responses=_PROXIED,
        response_class=Response,
    )


async def _exposed_websocket(websocket: WebSocket, name: str) -> None:
    state = websocket.app.state
    database: Database = state.database
    backend: Backend = state.backend
    authenticator: Authenticator = state.authenticator
    try:
        service, admission, endpoint = await _admitted(websocket, name, database, backend, authenticator)
    except OscarError as refused:
        answer = error_response(websocket, refused.status_code, type(refused).__name__, refused.message)
        for key, value in refused.headers.items():
            answer.headers[key] = value
        await ws_proxy.deny(websocket, answer)
        return
    await ws_proxy.relay(
        websocket,
        name=name,
        port=service.expose.api_port[0],
        endpoint=endpoint,
        target=_target(websocket, service),
        set_cookies=[_cookie(websocket, name, admission.token)] if admission.token else [],
        withheld=_withheld(websocket, authenticator),
    )


@router.websocket("/{name}/exposed")
async def exposed_root_websocket(websocket: WebSocket, name: str) -> None:
    await _exposed_websocket(websocket, name)


@router.websocket("/{name}/exposed/{path:path}")
async def exposed_path_websocket(websocket: WebSocket, name: str, path: str) -> None:
    del path
    await _exposed_websocket(websocket, name)


@router.get(
    "/{name}/auth",
    summary="Check a caller for the service (the admin, its token, or an OIDC user who may see it); "
    "with the token (Bearer or ?token=), set the cookie that admits a browser to its exposed path",
    response_class=Response,
    responses={
        200: {"description": "Admitted (a Set-Cookie when a service token was given)"},
        401: {"description": "No or wrong credentials"},
        403: {"description": "An OIDC user who may not see the service"},
        404: {"description": "No such service"},
    },
)
async def service_auth(
    request: Request, name: str, database: DatabaseDep, authenticator: AuthenticatorDep
) -> Response:
    service = await exposed.named(database, name)
    admission = await exposed_access.service_auth(
        service, authenticator, _presented(request, name, forwarded_uri=True)
    )
    answer = Response(status_code=200)
    if admission.token:
        answer.headers.append("set-cookie", _cookie(request, name, admission.token))
    return answer
