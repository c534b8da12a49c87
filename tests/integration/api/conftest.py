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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The Kubernetes variants run on SQLite only: the registry is one code path for both databases, and
    every API test runs on PostgreSQL on the local backend (the real control plane makes each Kubernetes
    variant cost seconds)."""
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        params = getattr(item, "callspec", None)
        chosen = params.params if params is not None else {}
        on_postgres = "postgresql" in (chosen.get("database_url"), chosen.get("empty_database_url"))
        (dropped if chosen.get("backend_settings") == "kubernetes" and on_postgres else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
