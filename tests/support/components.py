"""Real components the tests start themselves, and the rule for when one cannot start.

A test whose component cannot be started is skipped with the reason; with ``OSCAR_TEST_STRICT=1`` (set by
``.ci/run``) that skip becomes a failure, so CI never passes by silently not testing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest


def strict() -> bool:
    return os.environ.get("OSCAR_TEST_STRICT") == "1"


def unavailable(reason: str) -> NoReturn:
    if strict():
        pytest.fail(f"OSCAR_TEST_STRICT=1 and a required component is unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _postgres_bindir() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    for bindir in reversed(candidates):
        if (bindir / "initdb").exists():
            return bindir
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


@dataclass
class PostgresServer:
    """A throwaway cluster: trust auth, loopback only, no fsync (about a second to start)."""

    bindir: Path
    datadir: Path
    port: int
    as_postgres_user: bool

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.as_postgres_user:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    @classmethod
    def start(cls) -> PostgresServer:
        bindir = _postgres_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries (initdb) are not installed")
        as_root = os.geteuid() == 0
        datadir = Path(tempfile.mkdtemp(prefix="oscar-pg-"))
        if as_root:
            shutil.chown(datadir, "postgres", "postgres")
        server = cls(bindir=bindir, datadir=datadir, port=free_port(), as_postgres_user=as_root)
        server._run(
            "initdb", "-D", str(datadir), "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-sync"
        )
        server.resume()
        return server

    def _options(self) -> str:
        return (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.datadir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )

    def halt(self) -> None:
        """The server goes away (its connections are cut), its data kept for :meth:`resume`. A fast stop, not
        an immediate one: with ``synchronous_commit=off`` a crash would lose the last commits."""
        self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        """Back on the same port with the same data after :meth:`halt`."""
        self._run(
            "pg_ctl",
            "-D",
            str(self.datadir),
            "-l",
            str(self.datadir / "server.log"),
            "-w",
            "-o",
            self._options(),
            "start",
        )

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.datadir, ignore_errors=True)
