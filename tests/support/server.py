"""Run ``oscar-manager serve`` as a real process, the way the README tells a user to."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.components import free_port


@dataclass
class RunningServer:
    url: str
    workdir: Path
    process: subprocess.Popen[bytes]
    given_password: str = ""
    # The S3 face of the local buckets (empty when off, e.g. on MinIO).
    s3_url: str = ""

    def password(self) -> str:
        if self.given_password:
            return self.given_password
        return (self.workdir / "oscar-data" / "admin-password").read_text().strip()


def serve_command() -> list[str]:
    found = shutil.which("oscar-manager", path=str(Path(sys.executable).parent))
    return [*([found] if found else [sys.executable, "-m", "oscar_manager"]), "serve"]


def server_environment(port: int, env: dict[str, str] | None = None) -> dict[str, str]:
    """Only what a fresh shell would have: no OSCAR_*/MINIO_*/OIDC_* settings but those given."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OSCAR_", "MINIO_", "OIDC_"))}
    environment["OSCAR_LOCAL_IMAGES"] = "host"  # as in make_settings: no public registry is asked
    environment.update(env or {})
    environment["OSCAR_SERVICE_PORT"] = str(port)
    # Each server its own S3 face port, so that servers of tests running side by side never collide.
    environment.setdefault("OSCAR_S3_PORT", str(free_port()))
    return environment


def start_server(workdir: Path, port: int, *, env: dict[str, str] | None = None) -> RunningServer:
    environment = server_environment(port, env)
    s3_port = int(environment["OSCAR_S3_PORT"] or 0)
    with (workdir / "server.log").open("ab") as log:
        process = subprocess.Popen(serve_command(), cwd=workdir, env=environment, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError((workdir / "server.log").read_text())
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return RunningServer(
                    url=url,
                    workdir=workdir,
                    process=process,
                    given_password=environment.get("OSCAR_PASSWORD", ""),
                    s3_url=f"http://127.0.0.1:{s3_port}"
                    if s3_port and not environment.get("MINIO_ENDPOINT")
                    else "",
                )
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


def crash_server(server: RunningServer) -> None:
    """SIGKILL: no shutdown code runs, as in a power cut or an OOM kill."""
    server.process.kill()
    server.process.wait()
