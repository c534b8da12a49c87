"""SQS servers the S3-input tests start as processes of their own on loopback: moto's server (S3 and SQS,
and S3 notifications delivered to its SQS) and ElasticMQ (a real SQS-compatible server on the JVM,
fetched from Maven Central by ``scripts/build-elasticmq``)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.components import free_port

ROOT = Path(__file__).resolve().parents[2]


def _wait_for_port(port: int, process: subprocess.Popen[bytes], *, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} within {within:.0f} s")


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    endpoint: str
    workdir: Path | None = None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_moto() -> ServerProcess:
    """``moto_server`` (from the test extra) on a free loopback port: S3 and SQS on one endpoint."""
    moto_server = Path(sys.executable).parent / "moto_server"
    if not moto_server.exists():
        raise RuntimeError("moto_server is not installed (moto[server] in the test extra)")
    port = free_port()
    process = subprocess.Popen(
        [str(moto_server), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, process, within=30, what="moto_server")
    except RuntimeError:
        process.kill()
        raise
    return ServerProcess(process, f"http://127.0.0.1:{port}")


def elasticmq_jars() -> Path:
    """The jars ``scripts/build-elasticmq`` fetched (it fetches them now if they are missing: seconds)."""
    found = subprocess.run(
        [str(ROOT / "scripts" / "build-elasticmq")], check=True, capture_output=True, text=True, timeout=600
    )
    return Path(found.stdout.strip())


def start_elasticmq() -> ServerProcess:
    """ElasticMQ on a free loopback port, in memory, its queue URLs naming that port."""
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("java is not installed")
    jars = elasticmq_jars()
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="oscar-elasticmq-"))
    config = workdir / "elasticmq.conf"
    config.write_text(
        'include classpath("application.conf")\n'
        f'node-address {{ protocol = http, host = "127.0.0.1", port = {port}, context-path = "" }}\n'
        f'rest-sqs {{ enabled = true, bind-port = {port}, bind-hostname = "127.0.0.1",'
        " sqs-limits = strict }\n"
        "rest-stats.enabled = false\n"
        # ARNs as AWS's in us-east-1: S3 servers (moto) take them in a bucket's notification rules.
        'aws { region = "us-east-1", accountId = "000000000000" }\n'
    )
    with (workdir / "server.log").open("wb") as log:  # the server keeps its own copy of the descriptor
        process = subprocess.Popen(
            [java, f"-Dconfig.file={config}", "-cp", f"{jars}/*", "org.elasticmq.server.Main"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_port(port, process, within=60, what="ElasticMQ")
    except RuntimeError:
        process.kill()
        raise
    return ServerProcess(process, f"http://127.0.0.1:{port}", workdir)
