"""``oscar-supervisor serve`` (``supervisor.serve``), a warm pod's server, without Kubernetes: started in
this process on a loopback port, sent runs over real HTTP, its answers compared with what the Job path
(``cli.run`` with the response framed in the log, then unframed as the manager does) gives for the same
script and body."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from oscar_manager.supervisor import cli, response_frame, serve
from tests.support.supervisor import UPPER, b64, config

KEY = "k" * 64


@contextlib.asynccontextmanager
async def warm_server(script: str, tmp_path: Path) -> AsyncIterator[tuple[str, serve.WarmServer]]:
    env = {
        "FUNCTION_CONFIG": config(),
        "SCRIPT": b64(script),
        "TMPDIR": str(tmp_path),
        serve.KEY_ENV: KEY,
        "PATH": "/usr/bin:/bin",
    }
    server = serve.WarmServer(env=env, config_file=tmp_path / "none.yaml", script_file=tmp_path / "none.sh")
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve.serve(server, port=0, host="127.0.0.1", listening=bound.set_result))
    try:
        yield f"http://127.0.0.1:{await bound}", server
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def job_answer(script: str, body: bytes, tmp_path: Path) -> tuple[int, bytes | None]:
    """What a sync Job gives: its exit code, and the response the manager unframes from its log."""
    env = {"FUNCTION_CONFIG": config(), "SCRIPT": b64(script), "TMPDIR": str(tmp_path)}
    env |= {response_frame.ENV: "1", "PATH": "/usr/bin:/bin"}
    log = io.BytesIO()
    code = await cli.run(
        body,
        env=env,
        stdout=log,
        stderr=log,
        config_file=tmp_path / "none.yaml",
        script_file=tmp_path / "none",
    )
    return code, response_frame.unframe(log.getvalue().decode())[1]


def post(body: bytes, **headers: str) -> dict[str, object]:
    return {"content": body, "headers": {serve.KEY_HEADER: KEY, **headers}}


@pytest.mark.parametrize(
    ("script", "body"),
    [
        (UPPER, b64("hello warm pods").encode()),  # one output file: its base64
        ('echo "log line"\ntr a-z A-Z < "$INPUT_FILE_PATH"\n', b64("quiet please").encode()),  # no file
        ('for n in 1 2; do echo $n > "$TMP_OUTPUT_DIR/f$n"; done\n', b64("x").encode()),  # a zip
    ],
)
async def test_a_run_answers_what_the_job_path_answers(script: str, body: bytes, tmp_path: Path) -> None:
    code, expected = await job_answer(script, body, tmp_path)
    assert code == 0
    assert expected is not None
    async with warm_server(script, tmp_path) as (url, server), httpx.AsyncClient() as http:
        for _ in range(2):  # the same pod serves run after run
            answer = await http.post(f"{url}/run", **post(body))  # type: ignore[arg-type]
            assert answer.status_code == 200, answer.text
            if script.startswith("for"):  # a zip's bytes carry times: compare what it holds
                assert answer.content[:4] == expected[:4] == b"UEsD"  # base64 of a zip's "PK\x03\x04"
            else:
                assert answer.content == expected
        assert server.runs == 2


async def test_a_failing_script_is_422_with_its_exit_code_and_log(tmp_path: Path) -> None:
    async with warm_server("echo oops; exit 7\n", tmp_path) as (url, _), httpx.AsyncClient() as http:
        answer = await http.post(f"{url}/run", **post(b64("x").encode()))  # type: ignore[arg-type]
    assert answer.status_code == 422
    assert answer.headers[serve.EXIT_CODE_HEADER] == "7"
    assert "oops" in answer.text
    assert "exited with code 7" in answer.text


async def test_one_run_at_a_time_and_readiness_says_busy(tmp_path: Path) -> None:
    async with warm_server("sleep 1; echo slow\n", tmp_path) as (url, _), httpx.AsyncClient() as http:
        assert (await http.get(f"{url}/ready")).status_code == 200
        first = asyncio.create_task(http.post(f"{url}/run", **post(b64("a").encode())))  # type: ignore[arg-type]
        await asyncio.sleep(0.3)
        assert (await http.get(f"{url}/ready")).status_code == 503
        second = await http.post(f"{url}/run", **post(b64("b").encode()))  # type: ignore[arg-type]
        assert second.status_code == 503  # refused at once: nothing ran
        assert (await first).text == "slow\n"
        assert (await http.get(f"{url}/ready")).status_code == 200


async def test_past_its_time_limit_a_run_is_504(tmp_path: Path) -> None:
    async with warm_server("sleep 5\n", tmp_path) as (url, _), httpx.AsyncClient() as http:
        answer = await http.post(
            f"{url}/run",
            **post(b64("x").encode(), **{serve.TIMEOUT_HEADER: "0.5"}),  # type: ignore[arg-type]
        )
    assert answer.status_code == 504
    assert "timeout" in answer.text


async def test_an_answer_over_the_limit_is_413_with_its_size(tmp_path: Path) -> None:
    script = 'head -c 3000 /dev/zero > "$TMP_OUTPUT_DIR/big"\n'
    async with warm_server(script, tmp_path) as (url, _), httpx.AsyncClient() as http:
        answer = await http.post(
            f"{url}/run",
            **post(b64("x").encode(), **{serve.MAX_RESPONSE_HEADER: "1000"}),  # type: ignore[arg-type]
        )
    assert answer.status_code == 413
    assert answer.headers[serve.RESPONSE_SIZE_HEADER] == "3000"


async def test_without_the_managers_key_nothing_runs(tmp_path: Path) -> None:
    async with warm_server("echo ran\n", tmp_path) as (url, server), httpx.AsyncClient() as http:
        answer = await http.post(f"{url}/run", content=b"x", headers={serve.KEY_HEADER: "wrong"})
        assert answer.status_code == 403
        assert (await http.post(f"{url}/run", content=b"x")).status_code == 403
    assert server.runs == 0


def test_the_program_serves_with_the_serve_argument(tmp_path: Path) -> None:
    """``python -m oscar_manager.supervisor serve``: the warm pod's command line, answering on its port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "FUNCTION_CONFIG": config(),
        "SCRIPT": b64(UPPER),
        serve.KEY_ENV: KEY,
        serve.PORT_ENV: str(port),
        "TMPDIR": str(tmp_path),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "oscar_manager.supervisor", "serve"], env=env, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                answer = httpx.post(f"http://127.0.0.1:{port}/run", **post(b64("abc").encode()))  # type: ignore[arg-type]
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, "the server never listened"
                time.sleep(0.1)
        assert answer.status_code == 200
        assert base64.b64decode(answer.content) == b"ABC"
    finally:
        process.terminate()
        process.wait(10)


async def test_idle_says_since_when_and_retire_takes_only_a_pod_idle_long_enough(tmp_path: Path) -> None:
    """What the leader's scale-down reads and asks (``backends.warm_scaling``)."""
    async with warm_server("sleep 1; echo slow\n", tmp_path) as (url, server), httpx.AsyncClient() as http:
        retire = {serve.KEY_HEADER: KEY, serve.IDLE_AT_LEAST_HEADER: "0.4"}
        state = (await http.get(f"{url}/idle")).json()
        assert state["busy"] is False
        assert state["retired"] is False
        # Idle less than asked: not retired.
        assert (await http.post(f"{url}/retire", headers=retire)).status_code == 409
        # Busy: not retired, and says so.
        run = asyncio.create_task(http.post(f"{url}/run", **post(b64("a").encode())))  # type: ignore[arg-type]
        await asyncio.sleep(0.5)
        assert (await http.get(f"{url}/idle")).json() == {"busy": True, "idle_seconds": 0.0, "retired": False}
        assert (await http.post(f"{url}/retire", headers=retire)).status_code == 409
        assert (await run).status_code == 200
        # Idle from the end of that run: retired once idle long enough; no key, no retiring.
        assert (await http.post(f"{url}/retire", headers=retire)).status_code == 409
        await asyncio.sleep(0.5)
        assert (await http.get(f"{url}/idle")).json()["idle_seconds"] >= 0.4
        assert (
            await http.post(f"{url}/retire", headers={**retire, serve.KEY_HEADER: "x"})
        ).status_code == 403
        assert not server.retired
        assert (await http.post(f"{url}/retire", headers=retire)).status_code == 200
        # Retired: no run, not ready (the ReplicaSet then removes it before any busy pod).
        refused = await http.post(f"{url}/run", **post(b64("b").encode()))  # type: ignore[arg-type]
        assert refused.status_code == 503
        assert "retired" in refused.text
        assert (await http.get(f"{url}/ready")).status_code == 503
        assert (await http.get(f"{url}/idle")).json()["retired"] is True
        assert server.runs == 1
