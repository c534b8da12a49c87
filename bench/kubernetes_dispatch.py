"""Intake-to-Job-create throughput and latency on the Kubernetes backend, against the API double
answering every request after an injected delay (5 ms by default), next to the raw client create rate
measured in the same run against the same double.

Events go in through ``POST /job/{service}``; a job counts as created when the double has accepted its
Job. The double runs in a process of its own, as a real API server would not share the manager's CPU; the
raw rate is measured against that same process (in a namespace of its own, so the manager's job watcher
does not list those Jobs). Two ways to send:
- ``--clients N`` (closed loop, the default): N in-process clients, each sending its next event once the
  last is answered. Shows the most the manager takes; latencies then are mostly queueing.
- ``--rate R`` (open loop): R events a second from ``bench.paced_sender``, a process of its own, to the
  manager served by uvicorn as in production. Shows the latencies at that load, or that it falls behind.
Usage: ``python -m bench.kubernetes_dispatch [--jobs 1000] [--delay 0.005] [--clients 8 | --rate 300]
[--postgres]``. Prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import httpx
import uvicorn
from kubernetes_asyncio import client

from oscar_manager.app import create_app
from oscar_manager.backends import manifests
from oscar_manager.backends.kube_client import without_environment_lookups
from oscar_manager.domain.service import MinioDefault, normalise_new, parse_service
from oscar_manager.registry.migrations import upgrade
from oscar_manager.settings import Settings
from tests.support.app import NO_AUTH, app_client
from tests.support.components import PostgresServer, free_port
from tests.support.factories import ADMIN_PASSWORD, make_settings
from tests.support.kube_api import kubeconfig

NS = "oscar-svc"
RAW_NS = "raw-bench"


@contextlib.asynccontextmanager
async def api_double(*, delay: float, max_history: int) -> AsyncIterator[str]:
    """The API double in a process of its own (schema validation off: it would make the double, not the
    manager, the bottleneck); yields its URL."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.kube_api",
        f"--delay={delay}",
        "--no-validate",
        f"--max-history={max_history}",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        port = int(await process.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


async def created_at(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """The manager's Jobs (not the raw run's): name -> when the double created it (``time.monotonic``, as
    this process's loop time)."""
    async with http.get(f"{url}/_double/created") as answer:
        answer.raise_for_status()
        found: dict[str, float] = await answer.json()
        return {name: at for name, at in found.items() if not name.startswith("raw-")}


async def raw_rate(url: str, count: int, concurrency: int) -> float:
    service = normalise_new(
        parse_service({"name": "raw", "image": "alpine", "script": "true"}),
        owner="cluster_admin",
        namespace=NS,
        minio=MinioDefault(endpoint="", region="us-east-1", verify=True),
    )
    cluster = manifests.ClusterConfig(manager_image="oscar-manager:bench", ttl_seconds=60)
    bodies: list[Any] = [
        manifests.job(service, job_id=f"raw-{index:016x}", event=b"{}", cluster=cluster)
        for index in range(count)
    ]
    gate = asyncio.Semaphore(concurrency)
    async with client.ApiClient(client.Configuration(host=url)) as api:
        without_environment_lookups(api)  # as the manager's client
        batch = client.BatchV1Api(api)

        async def create(body: Any) -> None:
            async with gate:
                # As the backend does: the answer is checked, not parsed into a V1Job.
                answer = await batch.create_namespaced_job(RAW_NS, body, _preload_content=False)
                async with cast("aiohttp.ClientResponse", answer) as raw:
                    raw.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(create(body) for body in bodies))
        return count / (time.perf_counter() - started)


async def _run(args: argparse.Namespace, url: str) -> tuple[float, float, list[float], float, float]:
    """(raw creates/s, intake events/s, latencies event -> Job created, seconds to the last Job, this
    process's CPU seconds over the manager's run)."""
    work = Path(tempfile.mkdtemp(prefix="bench-k8s-"))
    (work / "kubeconfig").write_text(kubeconfig(url))
    database = args.database_url or f"sqlite+aiosqlite:///{work / 'oscar.db'}"
    await asyncio.to_thread(upgrade, database)
    settings = make_settings(
        database_url=database,
        data_dir=work / "data",
        oscar_backend="kubernetes",
        oscar_kubeconfig=work / "kubeconfig",
        oscar_kubernetes_concurrency=args.concurrency,
        oscar_dispatch_interval=0.01,
    )
    raw = await raw_rate(url, args.jobs, args.concurrency)
    body = {"name": "bench", "image": "alpine", "script": "true\n"}
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        if args.rate:
            manager = await stack.enter_async_context(served(settings))
            http = await stack.enter_async_context(
                httpx.AsyncClient(base_url=manager, auth=("oscar", ADMIN_PASSWORD))
            )
        else:
            http = await stack.enter_async_context(app_client(settings))
        probe = await stack.enter_async_context(aiohttp.ClientSession())
        (await http.post("/system/services", json=body)).raise_for_status()
        token = (await http.get("/system/services/bench")).json()["token"]
        cpu = time.process_time()
        started = loop.time()
        if args.rate:
            sent = await paced_from_another_process(manager, token, args.jobs, args.rate)
        else:
            sent = await closed_loop(http, token, args.jobs, args.clients)
        intake_done = loop.time()
        deadline = loop.time() + 120
        created = await created_at(probe, url)
        while len(created) < args.jobs and loop.time() < deadline:
            await asyncio.sleep(0.1)
            created = await created_at(probe, url)
        cpu = time.process_time() - cpu
    latencies = sorted(created[name] - sent[name] for name in sent if name in created)
    return raw, args.jobs / (intake_done - started), latencies, max(created.values()) - started, cpu


async def closed_loop(http: httpx.AsyncClient, token: str, count: int, clients: int) -> dict[str, float]:
    """``clients`` in-process clients, each sending its next event once the last is answered; returns job
    id -> when its event went out."""
    sent: dict[str, float] = {}
    headers = {"Authorization": f"Bearer {token}"}
    loop = asyncio.get_running_loop()
    numbers = iter(range(count))

    async def client() -> None:
        for index in numbers:
            payload = base64.b64encode(f"event {index}".encode())
            started = loop.time()
            answer = await http.post("/job/bench", content=payload, headers=headers, auth=NO_AUTH)
            answer.raise_for_status()
            sent[answer.headers["X-Oscar-Job-Ids"]] = started

    await asyncio.gather(*(client() for _ in range(clients)))
    return sent


@contextlib.asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[str]:
    """The manager behind uvicorn in this process, as it serves in production; yields its URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving


async def paced_from_another_process(url: str, token: str, count: int, rate: float) -> dict[str, float]:
    """bench.paced_sender's answer: job id -> when its event was due."""
    sender = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.paced_sender",
        url,
        "bench",
        token,
        str(count),
        str(rate),
        stdout=asyncio.subprocess.PIPE,
    )
    output, _ = await sender.communicate()
    if sender.returncode != 0:
        raise RuntimeError(f"bench.paced_sender failed ({sender.returncode})")
    sent: dict[str, float] = json.loads(output)
    return sent


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--delay", type=float, default=0.005)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--rate", type=float, default=0, help="events a second, paced (open loop); 0: as fast as --clients go"
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--database-url", default="", help="e.g. postgresql+asyncpg://... (an empty database); default SQLite"
    )
    parser.add_argument(
        "--postgres", action="store_true", help="on a throwaway PostgreSQL server (no fsync, as in the tests)"
    )
    args = parser.parse_args()

    server = PostgresServer.start() if args.postgres else None
    try:
        if server is not None:
            args.database_url = server.url
        async with api_double(delay=args.delay, max_history=4 * args.jobs + 1000) as url:
            raw, intake, latencies, elapsed, cpu = await _run(args, url)
    finally:
        if server is not None:
            server.stop()

    created = len(latencies)
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[min(created - 1, round(0.99 * (created - 1)))] * 1000
    print(f"registry                         {'PostgreSQL' if args.database_url else 'SQLite'}")
    print(f"API double delay per request     {args.delay * 1000:.1f} ms")
    print(f"raw client creates ({args.concurrency} at once)  {raw:8.0f} jobs/s")
    sending = f"paced at {args.rate:g}/s" if args.rate else f"{args.clients} clients"
    print(f"/job intake ({sending})".ljust(33) + f"{intake:8.0f} events/s")
    print(
        f"intake -> Job created            {created / elapsed:8.0f} jobs/s   ({created}/{args.jobs} created)"
    )
    print(f"latency event -> Job created     p50 {p50:.1f} ms   p99 {p99:.1f} ms")
    print(f"ratio manager/raw                {created / elapsed / raw:.2f}")
    # On a shared machine the rates follow its load; CPU per job does much less.
    who = "the manager and uvicorn" if args.rate else "the manager and its in-process clients"
    print(f"process CPU per job              {cpu / args.jobs * 1000:.2f} ms   ({who})")


if __name__ == "__main__":
    asyncio.run(main())
