from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

router = APIRouter(tags=["health"])


@router.get("/health", response_class=PlainTextResponse, summary="Liveness probe (no authentication)")
async def health() -> str:
    return "Ok"
