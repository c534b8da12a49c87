from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from oscar_manager.app import create_app
from oscar_manager.settings import Settings
from tests.support.factories import ADMIN_PASSWORD

# Per request: send no credentials even though the client has some.
NO_AUTH = httpx.Auth()


@asynccontextmanager
async def app_client(settings: Settings, *, auth: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's start-up and shut-down around an in-process HTTP client."""
    app = create_app(settings)
    credentials = ("oscar", ADMIN_PASSWORD) if auth else None
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://oscar.test", auth=credentials) as http,
    ):
        yield http
