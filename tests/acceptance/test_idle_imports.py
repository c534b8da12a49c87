"""The embedded default loads only what it uses (issue 17): ``oscar-manager serve`` with no configuration
(SQLite, local buckets, local backend, Basic auth) never imports the Kubernetes client, the S3 and MinIO
stacks, the OIDC machinery, Fernet or Alembic, which together were half of its idle memory.

The server runs as the README runs it; a ``sitecustomize`` put on its ``PYTHONPATH`` records the modules
it has loaded when sent ``SIGUSR1``, here once it has started and answered a request.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.support.components import free_port
from tests.support.server import start_server, stop_server

pytestmark = pytest.mark.server

# Each the top of a library that only a setting which is off by default needs.
NOT_ON_THE_DEFAULT = {
    "kubernetes_asyncio": "the Kubernetes backend",
    "aiokafka": "a service with a Kafka input",
    "aiobotocore": "MinIO or another S3 provider",
    "botocore": "MinIO or another S3 provider",
    "miniopy_async": "MinIO",
    "aiohttp": "MinIO, Kubernetes",
    "authlib": "OIDC",
    "joserfc": "OIDC",
    "httpx": "OIDC, image pulls (loaded at the first one)",
    "cryptography": "users' own MinIO identities",
    "alembic": "migrations (run in a child process that exits)",
    "mako": "migrations (run in a child process that exits)",
}

RECORDER = """
import os
import signal
import sys


def _record(signum, frame):
    path = os.path.join(os.environ["IDLE_IMPORTS_RECORD"], f"modules-{os.getpid()}")
    with open(path + ".part", "w") as out:
        out.write("\\n".join(sorted(sys.modules)))
    os.rename(path + ".part", path)


signal.signal(signal.SIGUSR1, _record)
"""


def test_embedded_default_serves_without_the_libraries_of_settings_that_are_off(tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(RECORDER)
    workdir = tmp_path / "work"
    workdir.mkdir()
    path = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH", "")]))
    # Images on, as by default (the test servers' own default is host tools): nothing is pulled yet.
    env = {"PYTHONPATH": path, "IDLE_IMPORTS_RECORD": str(hook), "OSCAR_LOCAL_IMAGES": "auto"}
    env["OSCAR_IMAGE_DIR"] = str(workdir / "images")
    server = start_server(workdir, free_port(), env=env)
    record = hook / f"modules-{server.process.pid}"
    try:
        answer = httpx.get(f"{server.url}/system/services", auth=("oscar", server.password()), timeout=10)
        assert answer.status_code == 200, answer.text
        server.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not record.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        loaded = set(record.read_text().split())
    finally:
        stop_server(server)

    assert {"oscar_manager.runtime", "oscar_manager.api.routes.services", "sqlalchemy"} <= loaded
    found = {name: why for name, why in NOT_ON_THE_DEFAULT.items() if name in loaded}
    assert found == {}, f"loaded by the embedded default, though only these need them: {found}"
