"""A bare ASGI app that answers ``GET /`` with a file's bytes as JSON: the transfer floor of a large answer,
served by uvicorn in a process of its own as the manager is (``bench.listing_scale`` starts it).

Usage: ``python -m bench.bare_body FILE PORT``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def app_for(body: bytes) -> Starlette:
    async def answer(_request: Request) -> Response:
        return Response(body, media_type="application/json")

    return Starlette(routes=[Route("/", answer)])


if __name__ == "__main__":
    uvicorn.run(
        app_for(Path(sys.argv[1]).read_bytes()), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning"
    )
