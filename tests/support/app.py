from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi import FastAPI

from oscar_manager import connections, local_runtime, runtime
from oscar_manager.app import create_app
from oscar_manager.backends.base import Backend
from oscar_manager.backends.exposed import Exposer
from oscar_manager.backends.local import LocalBackend
from oscar_manager.settings import Settings
from oscar_manager.storage.providers import Stores
from tests.support.components import free_port
from tests.support.factories import ADMIN_PASSWORD, service_body

if TYPE_CHECKING:  # (kubernetes-asyncio is loaded only by the tests that use it)
    from oscar_manager.backends.exposed_kube import Resolve

# Per request: send no credentials even though the client has some.
NO_AUTH = httpx.Auth()


@asynccontextmanager
async def app_client(settings: Settings, *, auth: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's start-up and shut-down around an in-process HTTP client."""
    async with running_app(settings, auth=auth) as (_app, http):
        yield http


@asynccontextmanager
async def running_app(
    settings: Settings, *, auth: bool = True
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """As :func:`app_client`, with the app itself (its ``state`` holds what the runtime built)."""
    app = create_app(settings)
    credentials = ("oscar", ADMIN_PASSWORD) if auth else None
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://oscar.test", auth=credentials) as http,
    ):
        yield app, http


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create_io_service(
    http: httpx.AsyncClient,
    name: str,
    script: str,
    *,
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> str:
    """Create ``name`` reading ``name/in`` and writing ``name/out`` on ``minio.default``; its token."""
    body = service_body(
        name,
        script=script,
        input=[{"storage_provider": "minio", "path": f"{name}/in"}],
        output=[{"storage_provider": "minio", "path": f"{name}/out"}],
        **fields,
    )
    created = await http.post("/system/services", json=body, headers=headers)
    assert created.status_code == 201, created.text
    token: str = (await http.get(f"/system/services/{name}", headers=headers)).json()["token"]
    return token


def give_local_backend(monkeypatch: pytest.MonkeyPatch, exposer: Exposer | None) -> None:
    """Apps started from now on run ``exposer`` as their local backend's exposed side (the backend is
    real; only what runs exposed services is the test's; None: none)."""
    build = local_runtime.local_backend

    def with_exposer(settings: Settings, stores: Stores) -> LocalBackend:
        backend = build(settings, stores)
        backend.exposed = exposer
        return backend

    monkeypatch.setattr(runtime, "local_backend", with_exposer)


def give_kubernetes_resolve(monkeypatch: pytest.MonkeyPatch, resolve: Resolve) -> None:
    """Apps started from now on with ``OSCAR_BACKEND=kubernetes`` reach an exposed service's pod at
    ``resolve(pod address, port)`` (the backend is the real one the settings make: nothing listens at a
    pod address on the tests' control plane, so a test maps it to a loopback server of its own)."""

    async def with_resolve(stack: contextlib.AsyncExitStack, settings: Settings) -> Backend:
        return await connections.open_kubernetes(stack, settings, resolve=resolve)

    monkeypatch.setattr(runtime, "open_kubernetes", with_resolve)


@asynccontextmanager
async def served_app(settings: Settings) -> AsyncIterator[tuple[FastAPI, str]]:
    """The app served by uvicorn on a loopback port, in this event loop: for what an in-process client
    cannot show (bodies streamed as they come, websockets). Yields the app and its base URL."""
    import uvicorn

    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, lifespan="on", ws="websockets-sansio", log_level="warning"
        )
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if serving.done():
                serving.result()
                raise AssertionError("uvicorn ended before it started")
            await asyncio.sleep(0.01)
        yield app, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving
