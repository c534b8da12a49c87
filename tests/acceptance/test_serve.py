"""The README's run command: ``oscar-manager serve`` as a real process on the embedded default."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.components import free_port
from tests.support.factories import COWSAY_FDL

pytestmark = pytest.mark.server


@dataclass
class RunningServer:
    url: str
    workdir: Path
    process: subprocess.Popen[bytes]

    def password(self) -> str:
        return (self.workdir / "oscar-data" / "admin-password").read_text().strip()


def _executable() -> list[str]:
    found = shutil.which("oscar-manager", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "oscar_manager"]


def start_server(workdir: Path, port: int) -> RunningServer:
    # Only what a fresh shell would have: no OSCAR_*/MINIO_*/OIDC_* settings at all.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OSCAR_", "MINIO_", "OIDC_"))}
    env["OSCAR_SERVICE_PORT"] = str(port)
    with (workdir / "server.log").open("ab") as log:
        process = subprocess.Popen([*_executable(), "serve"], cwd=workdir, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError((workdir / "server.log").read_text())
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return RunningServer(url=url, workdir=workdir, process=process)
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise AssertionError("server did not become healthy:\n" + (workdir / "server.log").read_text())


def stop_server(server: RunningServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path, free_port())
    try:
        yield running
    finally:
        stop_server(running)


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
