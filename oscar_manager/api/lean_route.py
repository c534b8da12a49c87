"""``LeanRoute``: a FastAPI route whose endpoint is called with the request and its path parameters as
they are, with no dependency solving, for the one route on the hot path of every event (``POST /job``).

FastAPI works out a route's dependencies on every request (cache keys, scopes, the query string and
cookies parsed whether used or not): for ``/job`` that cost more of the event loop than the endpoint
itself. The endpoint reads what it needs from the request (``deps``' getters take the request too). The
route is otherwise a FastAPI route: its OpenAPI entry comes from the endpoint's signature and the route's
arguments, and what it raises goes to the application's error handlers like any other route's.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


class LeanRoute(APIRoute):
    """The endpoint must be ``async def endpoint(request: Request, <path parameters: str>) -> Response``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: Callable[..., Coroutine[Any, Any, Response]] = self.endpoint

        async def handler(request: Request) -> Response:
            return await endpoint(request, **request.path_params)

        return handler
