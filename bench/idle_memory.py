"""Idle memory of ``oscar-manager serve`` (issue 17): its resident set (``VmRSS``) once started on a
fresh data directory, answering ``/health``, and left alone for a while; against a bare FastAPI app with
one route (``bench.bare_fastapi``) on uvicorn, in a process of its own, measured in the same run.

The embedded default (no configuration: SQLite, local buckets, local backend, Basic auth) and, unless
``--no-postgres``, the same manager on a throwaway PostgreSQL server (a new database each run). The three
are measured in turn, ``--runs`` times, so that the machine's drifting load weighs on each alike.

Usage: ``python -m bench.idle_memory [--runs 3] [--settle 5] [--no-postgres]``.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import httpx

from tests.support.components import PostgresServer, free_port
from tests.support.server import start_server, stop_server

MB = 1024 * 1024


def resident_bytes(pid: int) -> int:
    """``VmRSS`` of process ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def bare_app(settle: float) -> int:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench.bare_fastapi", str(port)])
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
            time.sleep(0.1)
        time.sleep(settle)
        return resident_bytes(process.pid)
    finally:
        process.terminate()
        process.wait()


def manager(settle: float, env: dict[str, str] | None = None) -> int:
    """``oscar-manager serve`` on a fresh data directory (``start_server`` waits for ``/health``)."""
    server = start_server(Path(tempfile.mkdtemp(prefix="oscar-bench-idle-")), free_port(), env=env)
    try:
        time.sleep(settle)
        return resident_bytes(server.process.pid)
    finally:
        stop_server(server)


async def _create_database(server: PostgresServer, name: str) -> str:
    connection = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{server.port}/postgres")
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return f"postgresql+asyncpg://postgres@127.0.0.1:{server.port}/{name}"


def report(name: str, samples: list[int], baseline: list[int] | None) -> None:
    median = statistics.median(samples)
    runs = ", ".join(f"{sample / MB:.1f}" for sample in samples)
    line = f"{name:<40} median {median / MB:6.1f} MB  (runs: {runs})"
    if baseline is not None:
        line += f"  {median / statistics.median(baseline):.2f}x the bare app"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds left idle before reading")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    postgres = None if args.no_postgres else PostgresServer.start()
    measured: dict[str, list[int]] = {}
    try:
        for run in range(args.runs):
            subjects: dict[str, Callable[[], int]] = {
                "bare FastAPI app on uvicorn": functools.partial(bare_app, args.settle),
                "oscar-manager serve, embedded default": functools.partial(manager, args.settle),
            }
            if postgres is not None:
                url = asyncio.run(_create_database(postgres, f"idle_{run}"))
                subjects["oscar-manager serve, PostgreSQL"] = functools.partial(
                    manager, args.settle, {"OSCAR_DATABASE_URL": url}
                )
            for name, measure in subjects.items():
                measured.setdefault(name, []).append(measure())
    finally:
        if postgres is not None:
            postgres.stop()
    print(f"idle VmRSS, {args.settle:g} s after /health answered, {args.runs} run(s):")
    baseline = measured.pop("bare FastAPI app on uvicorn")
    report("bare FastAPI app on uvicorn", baseline, None)
    for name, samples in measured.items():
        report(name, samples, baseline)


if __name__ == "__main__":
    main()
