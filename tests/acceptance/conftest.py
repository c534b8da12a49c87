from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.components import free_port
from tests.support.databases import PostgresDatabases
from tests.support.server import RunningServer, start_server, stop_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path, free_port())
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture
def postgres_url(postgres_databases: PostgresDatabases) -> Iterator[str]:
    """A freshly migrated PostgreSQL database of the test's own, for managers sharing it (replicas)."""
    url = postgres_databases.create(migrated=True)
    try:
        yield url
    finally:
        postgres_databases.drop(url)
