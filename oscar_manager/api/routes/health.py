from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_class=PlainTextResponse,
    summary="Liveness probe; with ?ready=1 the readiness answer (no authentication)",
    responses={503: {"description": "not ready: the parts down, each with its reason"}},
)
async def health(request: Request, ready: Annotated[bool, Query()] = False) -> Response:
    """``Ok`` while the process answers. With ``ready``: each event source, the database and the
    storage, up or why not, as JSON; 503 while any is down (so an orchestrator sends no traffic)."""
    if not ready:
        return PlainTextResponse("Ok")
    is_ready, body = await _readiness(request)
    return JSONResponse(body, status_code=200 if is_ready else 503)


async def _readiness(request: Request) -> tuple[bool, dict[str, Any]]:
    probe = getattr(request.app.state, "readiness", None)
    if probe is None:  # the runtime has not started (or has stopped)
        return False, {"ready": False, "reason": "the manager is not running"}
    answer: tuple[bool, dict[str, Any]] = await probe()
    return answer
