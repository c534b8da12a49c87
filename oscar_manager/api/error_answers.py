"""How every error reaches the caller: the message as ``text/plain``, as upstream answers (gin's
``c.String``), or ``{"error": <name>, "detail": <message>}`` for a caller that prefers JSON.

The real clients show the body to people as it is: the dashboard puts ``response.data`` in an alert (an
object there reads "[object Object]", or blanks the page), oscar-cli prints it as the error text. None of
them prefers JSON over text: axios sends ``Accept: application/json, text/plain, */*``, requests ``*/*``,
Go's client no ``Accept`` at all. So JSON only when the ``Accept`` header gives ``application/json`` a
strictly higher quality than ``text/plain`` (``Accept: application/json``, or ``..., */*;q=0.1``).

Every error path comes here: ``OscarError`` (the manager's one error type), request validation, whatever
Starlette answers itself (no such route, method not allowed) and, through ``CatchAll``, anything else.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from oscar_manager.errors import InternalError, OscarError

log = logging.getLogger("oscar_manager")

# The answer depends on Accept; the message may echo what the caller sent (a key, a name), so a browser
# must never sniff it into something it renders.
_ALWAYS = {"Vary": "Accept", "X-Content-Type-Options": "nosniff"}


def _quality(ranges: list[tuple[str, str, float]], media_type: str) -> float:
    """The quality ``Accept`` gives a media type: that of the most specific range matching it (RFC 9110
    §12.5.1), 0 when none does."""
    kind, subtype = media_type.split("/")
    best_specificity, quality = -1, 0.0
    for range_kind, range_subtype, q in ranges:
        if range_kind == kind and range_subtype == subtype:
            specificity = 2
        elif range_kind == kind and range_subtype == "*":
            specificity = 1
        elif range_kind == "*" and range_subtype == "*":
            specificity = 0
        else:
            continue
        if specificity > best_specificity:
            best_specificity, quality = specificity, q
    return quality


def _ranges(accept: str) -> list[tuple[str, str, float]]:
    ranges: list[tuple[str, str, float]] = []
    for item in accept.split(","):
        media_range, *parameters = (part.strip() for part in item.split(";"))
        kind, slash, subtype = media_range.lower().partition("/")
        if not slash or not kind or not subtype:
            continue
        q = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(max(float(value.strip()), 0.0), 1.0)
                except ValueError:
                    q = 0.0  # an unreadable weight: the range is not counted as accepted
        ranges.append((kind, subtype, q))
    return ranges


def prefers_json(accept: str | None) -> bool:
    """Whether the caller asked for JSON over text: no header (Go), ``*/*`` (requests) and axios'
    ``application/json, text/plain, */*`` all weigh both the same, and get text."""
    if not accept:
        return False
    ranges = _ranges(accept)
    return _quality(ranges, "application/json") > _quality(ranges, "text/plain")


def error_name(status_code: int) -> str:
    """``NotFound`` for 404...: the JSON form's ``error`` for answers that are not an ``OscarError``."""
    try:
        phrase = HTTPStatus(status_code).phrase
    except ValueError:
        return "Error"
    return "".join(word[:1].upper() + word[1:] for word in phrase.replace("-", " ").split())


def error_response(
    request: HTTPConnection,
    status_code: int,
    name: str,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """The one rendering of an error: text unless JSON is preferred (see the module's docstring)."""
    merged = {**(headers or {}), **_ALWAYS}
    if prefers_json(request.headers.get("accept")):
        return JSONResponse({"error": name, "detail": message}, status_code, headers=merged)
    return PlainTextResponse(message, status_code, headers=merged)


async def _oscar_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OscarError)
    return error_response(request, exc.status_code, type(exc).__name__, exc.message, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    # Upstream answers bad input with 400; FastAPI's default would be 422.
    assert isinstance(exc, RequestValidationError)
    parts = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
    return error_response(request, 400, "BadRequest", "invalid request: " + "; ".join(parts))


async def _starlette_error(request: Request, exc: Exception) -> Response:
    """What Starlette answers itself (no such route, a method the route lacks), in words."""
    assert isinstance(exc, HTTPException)
    status_code = exc.status_code
    if status_code == 404 and exc.detail == HTTPStatus.NOT_FOUND.phrase:
        message = f"there is no {request.url.path} on this server"
    elif status_code == 405:
        # Not naming the methods it takes: Starlette's Allow lists only the first route of that path.
        message = f"{request.url.path} does not take {request.method}"
    else:
        message = str(exc.detail)
    return error_response(request, status_code, error_name(status_code), message, exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(OscarError, _oscar_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _starlette_error)


class CatchAll:
    """Renders any exception no handler took as a 500 like every other error, logging the traceback under
    an incident id that the answer names (the answer itself says nothing internal).

    An ASGI middleware rather than a handler for ``Exception``: Starlette runs that handler outside every
    middleware, so a browser would see a CORS failure instead of the error.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception:
            incident = secrets.token_hex(6)
            log.exception("unexpected error (incident %s) in %s %s", incident, scope["method"], scope["path"])
            if started:
                raise  # part of the answer is out: the server can only close the connection
            error = InternalError(
                f"unexpected error (incident {incident}); the manager's log has the details"
            )
            await (await _oscar_error(Request(scope), error))(scope, receive, send)


ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "description": "The JSON form of an error, sent only when Accept prefers application/json to text/plain",
    "properties": {
        "error": {"type": "string", "description": "what went wrong, e.g. NotFound, BadRequest"},
        "detail": {"type": "string", "description": "the message, the same text the plain answer carries"},
    },
    "required": ["error", "detail"],
}
_ERROR_CONTENT: dict[str, Any] = {
    "text/plain": {"schema": {"type": "string", "description": "the message, a sentence for people"}},
    "application/json": {"schema": {"$ref": "#/components/schemas/Error"}},
}


def document_errors(schema: dict[str, Any], *, authenticated: set[tuple[str, str]]) -> None:
    """Error answers in the OpenAPI document as they are sent: text, with the JSON form as an alternative;
    400 where FastAPI would document its default 422; a 401 on every route that takes credentials."""
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            invalid = responses.pop("422", None)
            if invalid is not None and "400" not in responses:
                responses["400"] = {"description": "Invalid parameters or body"}
            if (path, method) in authenticated and "401" not in responses:
                responses["401"] = {"description": "Missing or wrong credentials"}
            for code, response in responses.items():
                if code == "default" or int(code) >= 400:
                    response["content"] = _ERROR_CONTENT
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Error"] = ERROR_SCHEMA
