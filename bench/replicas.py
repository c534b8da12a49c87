"""Throughput of one manager replica against two sharing one PostgreSQL (issue 17), in the same run.

Each replica is an ``oscar-manager serve`` process of its own, on the Kubernetes backend against the API
double (a process of its own answering every request after ``--delay``, as in
``bench.kubernetes_dispatch``), all on one throwaway PostgreSQL server. Events go in through ``POST
/job/{service}`` from ``--clients`` closed-loop clients in this process, spread evenly over the replicas
(as a Kubernetes Service would); a job counts as created when the double accepted its Job. Printed for 1
and for 2 replicas: events/s taken, Jobs/s created, latency event -> Job created (p50/p99), and the ratio
of 2 replicas' rate to 1's. On a 2-core machine shared by the replicas, PostgreSQL, the double and the
clients, the ratio is the figure: it says how much a second replica adds, or costs, on the same cores.
Usage: ``python -m bench.replicas [--jobs 2000] [--clients 16] [--delay 0.005]``. Prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.dispatch_target import DoubleTarget, api_double
from oscar_manager.registry.migrations import upgrade
from tests.support.components import PostgresServer, free_port
from tests.support.kube_api import kubeconfig

SERVICE = "bench"
PASSWORD = "bench-pw"


@dataclass
class Figures:
    replicas: int
    intake: float  # events/s answered 201
    created: float  # Jobs/s created, first event to last Job
    latencies: list[float]  # event -> Job created, sorted


@contextlib.contextmanager
def managers(count: int, database_url: str, kube: Path, work: Path) -> Iterator[list[str]]:
    """``count`` manager processes on ``database_url``; yields their URLs once all answer /health."""
    processes: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    work.mkdir(parents=True, exist_ok=True)
    try:
        for index in range(count):
            port = free_port()
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith(("OSCAR_", "MINIO_", "OIDC_"))},
                "OSCAR_DATABASE_URL": database_url,
                "OSCAR_BACKEND": "kubernetes",
                "OSCAR_KUBECONFIG": str(kube),
                "OSCAR_PASSWORD": PASSWORD,
                "OSCAR_DATA_DIR": str(work / f"replica-{index}"),
                "OSCAR_SERVICE_PORT": str(port),
                "OSCAR_S3_PORT": str(free_port()),
                "OSCAR_DISPATCH_INTERVAL": "0.01",
            }
            log = (work / f"replica-{index}.log").open("ab")
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "oscar_manager", "serve"], env=env, stdout=log, stderr=log
                )
            )
            urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        for url, process in zip(urls, processes, strict=True):
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"a replica did not start: see {work}")
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                time.sleep(0.1)
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


async def closed_loop(urls: list[str], token: str, count: int, clients: int) -> dict[str, float]:
    """``clients`` clients, client ``n`` sending to replica ``n % len(urls)``, each sending its next event
    once the last is answered; returns job id -> when its event went out."""
    sent: dict[str, float] = {}
    numbers = iter(range(count))
    loop = asyncio.get_running_loop()
    headers = {"Authorization": f"Bearer {token}"}

    async def client(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            for index in numbers:
                started = loop.time()
                payload = base64.b64encode(f"event {index}".encode())
                answer = await http.post(f"/job/{SERVICE}", content=payload, headers=headers)
                answer.raise_for_status()
                sent[answer.headers["X-Oscar-Job-Ids"]] = started

    await asyncio.gather(*(client(urls[n % len(urls)]) for n in range(clients)))
    return sent


async def one_run(count: int, args: argparse.Namespace, double: DoubleTarget, work: Path) -> Figures:
    server = PostgresServer.start()  # a fresh registry per run
    try:
        await asyncio.to_thread(upgrade, server.url)
        kube = work / "kubeconfig"
        kube.write_text(kubeconfig(double.url))
        before = set(await double.created())
        with managers(count, server.url, kube, work / f"{count}-replicas") as urls:
            async with httpx.AsyncClient(base_url=urls[0], auth=("oscar", PASSWORD), timeout=60) as admin:
                body = {"name": SERVICE, "image": "alpine", "script": "true\n"}
                (await admin.post("/system/services", json=body)).raise_for_status()
                token = (await admin.get(f"/system/services/{SERVICE}")).json()["token"]
            loop = asyncio.get_running_loop()
            started = loop.time()
            sent = await closed_loop(urls, token, args.jobs, args.clients)
            intake = args.jobs / (loop.time() - started)
            deadline = loop.time() + 120
            while True:
                created = {name: at for name, at in (await double.created()).items() if name not in before}
                if len(created) >= args.jobs or loop.time() > deadline:
                    break
                await asyncio.sleep(0.1)
    finally:
        server.stop()
    latencies = sorted(created[name] - sent[name] for name in sent if name in created)
    return Figures(
        replicas=count,
        intake=intake,
        created=len(latencies) / (max(created.values()) - started),
        latencies=latencies,
    )


def report(figures: Figures) -> None:
    latencies = figures.latencies
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))] * 1000
    print(
        f"{figures.replicas} replica(s): intake {figures.intake:6.0f} events/s   "
        f"Jobs created {figures.created:6.0f} jobs/s   p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   "
        f"({len(latencies)} created)"
    )


@contextlib.asynccontextmanager
async def double_for(args: argparse.Namespace) -> AsyncIterator[DoubleTarget]:
    async with api_double(delay=args.delay, max_history=8 * args.jobs + 1000) as double:
        yield double


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--delay", type=float, default=0.005, help="the API double's delay per request")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    print(f"PostgreSQL (throwaway, no fsync); API double answering in {args.delay * 1000:.1f} ms")
    print(f"{args.jobs} events from {args.clients} closed-loop clients spread over the replicas")
    async with double_for(args) as double:
        one = await one_run(1, args, double, work)
        report(one)
        two = await one_run(2, args, double, work)
        report(two)
    created, intake = two.created / one.created, two.intake / one.intake
    print(f"ratio 2 replicas / 1: Jobs created {created:.2f}, intake {intake:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
