"""The API tests run on both backends: the local executor, and Kubernetes (the API double, whose kubelet
runs pods with the real supervisor, with ``minio.default`` on moto's S3 server)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from oscar_manager.settings import Settings
from tests.support.app import app_client


@pytest.fixture(params=["local", "kubernetes"])
def backend_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    if request.param == "kubernetes":
        kubernetes: Settings = request.getfixturevalue("kubernetes_settings")
        return kubernetes
    return settings


@pytest.fixture
async def client(backend_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app, authenticated as the admin, on each backend."""
    async with app_client(backend_settings) as http:
        yield http
