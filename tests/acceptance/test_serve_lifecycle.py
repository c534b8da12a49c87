"""``oscar-manager serve`` as replicas meet it (issue 17): one process per SQLite file, and a SIGTERM that
lets requests in flight finish, within a bound, before the process exits."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.components import free_port
from tests.support.server import (
    RunningServer,
    serve_command,
    server_environment,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.server


def test_a_second_serve_on_the_same_sqlite_file_is_refused_and_the_first_keeps_serving(
    tmp_path: Path,
) -> None:
    first = start_server(tmp_path, free_port())
    try:
        # The same working directory: the same data directory, so the same SQLite file.
        second = subprocess.run(
            serve_command(),
            cwd=tmp_path,
            env=server_environment(free_port()),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode != 0
        database = tmp_path / "oscar-data" / "oscar.db"
        assert str(database.resolve()) in second.stderr
        assert "PostgreSQL" in second.stderr
        assert "OSCAR_DATABASE_URL" in second.stderr
        assert "Traceback" not in second.stderr
        assert httpx.get(f"{first.url}/health", timeout=5).status_code == 200
    finally:
        stop_server(first)
    # The lock went with the first process: a new one starts on the same file.
    again = start_server(tmp_path, free_port())
    stop_server(again)


def _children_named(pid: int, name: str) -> list[int]:
    """Descendants of ``pid`` whose command is ``name`` (from /proc)."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split at the last ")".
        head, _, rest = stat.rpartition(")")
        names[int(entry.name)] = head.partition("(")[2]
        parents[int(entry.name)] = int(rest.split()[1])

    def descends(candidate: int) -> bool:
        while candidate in parents and candidate > 1:
            candidate = parents[candidate]
            if candidate == pid:
                return True
        return False

    return [found for found, comm in names.items() if comm == name and descends(found)]


def _run_in_background(server: RunningServer, service: str) -> tuple[threading.Thread, list[object]]:
    """POST /run/<service> from a thread; its answer (or the exception) lands in the returned list."""
    outcome: list[object] = []

    def call() -> None:
        try:
            with httpx.Client(auth=("oscar", server.password()), timeout=120) as http:
                outcome.append(http.post(f"{server.url}/run/{service}", content=base64.b64encode(b"x")))
        except httpx.HTTPError as error:
            outcome.append(error)

    thread = threading.Thread(target=call)
    thread.start()
    return thread, outcome


def _started_script(server: RunningServer) -> int:
    """Wait for the script's ``sleep`` to run under the server: the request is in flight."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = _children_named(server.process.pid, "sleep")
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError("the script never started:\n" + (server.workdir / "server.log").read_text())


def _slow_service(server: RunningServer, seconds: int) -> None:
    body = {"name": "slow", "image": "img", "script": f"sleep {seconds}\necho done\n"}
    with httpx.Client(auth=("oscar", server.password()), timeout=10) as http:
        created = http.post(f"{server.url}/system/services", json=body)
    assert created.status_code == 201, created.text


def test_a_request_in_flight_at_sigterm_gets_its_answer_and_the_process_exits_0(
    tmp_path: Path, bwrap: str
) -> None:
    server = start_server(tmp_path, free_port())
    try:
        _slow_service(server, 2)
        thread, outcome = _run_in_background(server, "slow")
        _started_script(server)
        server.process.send_signal(signal.SIGTERM)
        # It stops taking requests at once (the Service's endpoints may still send some its way: the
        # preStop pause in deploy/kubernetes/ha is for that), while the one in flight goes on.
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/health", timeout=2)
        assert thread.is_alive()
        thread.join(timeout=60)
        (answer,) = outcome
        assert isinstance(answer, httpx.Response), answer
        assert answer.status_code == 200, answer.text
        assert "done" in answer.text
        # Ended by itself (not killed by the re-raised SIGTERM), after its shutdown completed.
        assert server.process.wait(timeout=30) == 0
        assert "Application shutdown complete" in (tmp_path / "server.log").read_text()
    finally:
        stop_server(server)


def test_a_request_longer_than_the_grace_is_cut_and_the_process_exits_within_it(
    tmp_path: Path, bwrap: str
) -> None:
    """Without the bound uvicorn waits for requests in flight forever (here a minute), and Kubernetes
    kills the pod at terminationGracePeriodSeconds, before the app's own shutdown has run."""
    server = start_server(tmp_path, free_port(), env={"OSCAR_GRACEFUL_SHUTDOWN_TIMEOUT": "1"})
    try:
        _slow_service(server, 60)
        thread, outcome = _run_in_background(server, "slow")
        script = _started_script(server)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
        assert time.monotonic() - signalled < 30
        thread.join(timeout=30)
        (answer,) = outcome
        # The cut request gets no 200: its connection is closed (or answered with an error).
        assert not isinstance(answer, httpx.Response) or answer.status_code >= 500
        log = (tmp_path / "server.log").read_text()
        assert "timeout graceful shutdown exceeded" in log
        assert "Application shutdown complete" in log
        # The script was killed with its job, not left running.
        deadline = time.monotonic() + 10
        while _alive(script) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(script)
    finally:
        stop_server(server)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0] != "Z"
