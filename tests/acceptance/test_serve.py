"""The README's run command: ``oscar-manager serve`` as a real process on the embedded default."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.components import free_port
from tests.support.factories import COWSAY_FDL
from tests.support.server import RunningServer, start_server, stop_server

pytestmark = pytest.mark.server


def test_embedded_default_round_trips_the_cowsay_example(server: RunningServer, tmp_path: Path) -> None:
    assert (server.workdir / "oscar-data" / "oscar.db").exists()
    auth = ("oscar", server.password())
    with httpx.Client(base_url=server.url, auth=auth, timeout=10) as http:
        assert http.get("/system/services/cowsay").status_code == 404
        created = http.post(
            "/system/services", content=COWSAY_FDL, headers={"Content-Type": "application/yaml"}
        )
        assert created.status_code == 201, created.text
        service = http.get("/system/services/cowsay").json()
    assert service["memory"] == "1Gi"
    assert service["visibility"] == "private"
    assert len(service["token"]) == 64

    # The registry survives a restart, with the same generated password.
    stop_server(server)
    restarted = start_server(server.workdir, free_port())
    try:
        with httpx.Client(base_url=restarted.url, auth=("oscar", restarted.password()), timeout=10) as http:
            assert http.get("/system/services/cowsay").json()["token"] == service["token"]
            assert http.get("/system/services", auth=("oscar", "wrong")).status_code == 401
    finally:
        stop_server(restarted)
