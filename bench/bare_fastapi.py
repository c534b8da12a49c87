"""A bare FastAPI app with one route, served by uvicorn in a process of its own as the manager is: the
floor of an idle web service on this stack (``bench.idle_memory`` starts it).

Usage: ``python -m bench.bare_fastapi PORT``.
"""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI

app = FastAPI()


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    # The same loop as ``oscar-manager serve``.
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", loop="asyncio")
