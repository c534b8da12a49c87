"""Intake-to-Job-create throughput and latency on the Kubernetes backend, next to the raw client create
rate measured in the same run against the same API server, on one of two targets:
- the API double (the default), answering every request after an injected delay (5 ms by default), in a
  process of its own as a real API server would not share the manager's CPU;
- ``--control-plane``: the tests' real control plane (etcd, kube-apiserver, controller-manager, scheduler
  and kwok, ``bench.dispatch_plane``), the manager as the shipped ServiceAccount with the shipped RBAC, its
  Jobs' pods played to Succeeded by kwok. The plane shares this machine's cores with the manager.

Events go in through ``POST /job/{service}``; a job counts as created when the API server has accepted its
Job: the double notes when; on the real plane, when an admin's watch receives the Job's ADDED event
(``bench.job_watch``, a process of its own). The raw creates go to a namespace of their own, so the
manager's job watcher does not list those Jobs; on the real plane the bench waits for their pods to be
played out before the manager's run. Two ways to send:
- ``--clients N`` (closed loop, the default): N in-process clients, each sending its next event once the
  last is answered. Shows the most the manager takes; latencies then are mostly queueing.
- ``--rate R`` (open loop): R events a second from ``bench.paced_sender``, a process of its own, to the
  manager served by uvicorn as in production. Shows the latencies at that load, or that it falls behind.

The figures: ``raw client creates`` (Jobs/s straight from kubernetes-asyncio, the ceiling); ``/job intake``
(events/s the manager answered 201 to; paced, from the first event's due time); ``intake -> Job created``
(Jobs/s from the first event to the last Job created, and the ratio of that to raw); ``latency`` (p50/p99 from
an event's send, or its due time when paced, to its Job created); ``process CPU per job`` (this process: the
manager and what drives it). On the real plane only, the end to end: ``Jobs finished (API server)``, seconds
from the first event until the watch saw every Job Complete; ``Succeeded in /system/logs``, until the manager
itself reported them all Succeeded (its pod and Job watches; polled every 0.2 s); and ``raw Jobs finished``,
the same for the raw creates, from the start of their creates: the plane's own pace with no manager in the
way.
Usage: ``python -m bench.kubernetes_dispatch [--jobs 1000] [--control-plane | --delay 0.005]
[--clients 8 | --rate 300] [--postgres]``. Prints figures.
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
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from bench.dispatch_plane import control_plane
from bench.dispatch_target import Target, api_double, raw_rate
from oscar_manager.app import create_app
from oscar_manager.registry.migrations import upgrade
from oscar_manager.settings import Settings
from tests.support.app import NO_AUTH, app_client
from tests.support.components import PostgresServer, free_port
from tests.support.factories import ADMIN_PASSWORD, make_settings
from tests.support.jobs import all_jobs

SERVICE = "bench"
END_TO_END_WITHIN = 600.0  # seconds the real plane is given to see every Job through


@dataclass
class Figures:
    raw: float  # raw creates a second
    raw_settled: float | None  # seconds until the raw Jobs all finished (None: the target runs no pod)
    intake: float  # events a second the manager took
    latencies: list[float]  # event -> Job created, sorted
    elapsed: float  # seconds from the first event to the last Job created
    cpu: float  # this process's CPU seconds over the manager's run
    finished: float | None  # seconds from the first event until the API server showed every Job finished
    succeeded: float | None  # ... until /system/logs showed every job Succeeded
    outcomes: dict[str, int]  # job statuses in /system/logs at the end


async def _run(args: argparse.Namespace, target: Target) -> Figures:
    work = Path(tempfile.mkdtemp(prefix="bench-k8s-"))
    database = args.database_url or f"sqlite+aiosqlite:///{work / 'oscar.db'}"
    await asyncio.to_thread(upgrade, database)
    base = make_settings(
        database_url=database,
        data_dir=work / "data",
        oscar_kubernetes_concurrency=args.concurrency,
        oscar_dispatch_interval=0.01,
    )
    settings = target.manager_settings(base, work)
    loop = asyncio.get_running_loop()
    raw_started = loop.time()
    raw = await raw_rate(target.raw_api(), target.raw_namespace, args.jobs, args.concurrency)
    raw_settled = await target.raw_settled(args.jobs, raw_started)
    body = {"name": SERVICE, "image": "alpine", "script": "true\n"}
    async with contextlib.AsyncExitStack() as stack:
        if args.rate:
            manager = await stack.enter_async_context(served(settings))
            http = await stack.enter_async_context(
                httpx.AsyncClient(base_url=manager, auth=("oscar", ADMIN_PASSWORD))
            )
        else:
            http = await stack.enter_async_context(app_client(settings))
        (await http.post("/system/services", json=body)).raise_for_status()
        token = (await http.get(f"/system/services/{SERVICE}")).json()["token"]
        cpu = time.process_time()
        started = loop.time()
        if args.rate:
            sent = await paced_from_another_process(manager, token, args.jobs, args.rate)
            # From the first event's due time: not the sender's own start-up (half a second on a busy
            # machine, which read as events not taken).
            started = min(sent.values())
        else:
            sent = await closed_loop(http, token, args.jobs, args.clients)
        intake_done = loop.time()
        deadline = loop.time() + 120
        created = await target.created()
        while len(created) < args.jobs and loop.time() < deadline:
            await asyncio.sleep(0.1)
            created = await target.created()
        cpu = time.process_time() - cpu
        succeeded, outcomes = (
            await all_succeeded(http, args.jobs, started) if target.runs_pods else (None, {})
        )
        finished = await target.finished()
    latencies = sorted(created[name] - sent[name] for name in sent if name in created)
    return Figures(
        raw=raw,
        raw_settled=raw_settled,
        intake=args.jobs / (intake_done - started),
        latencies=latencies,
        elapsed=max(created.values()) - started,
        cpu=cpu,
        finished=max(finished.values()) - started if len(finished) == args.jobs else None,
        succeeded=succeeded,
        outcomes=outcomes,
    )


async def all_succeeded(
    http: httpx.AsyncClient, count: int, since: float
) -> tuple[float | None, dict[str, int]]:
    """Polls ``/system/logs`` until the manager reports ``count`` jobs Succeeded (or some ended otherwise):
    seconds from ``since`` to then (None: not all Succeeded), and how many jobs ended in each status."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + END_TO_END_WITHIN
    while True:
        statuses = [job["status"] for job in (await all_jobs(http, SERVICE)).values()]
        outcomes = {status: statuses.count(status) for status in sorted(set(statuses))}
        if outcomes.get("Succeeded") == count:
            return loop.time() - since, outcomes
        if outcomes.get("Failed") or loop.time() > deadline:
            return None, outcomes
        await asyncio.sleep(0.2)


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
            answer = await http.post(f"/job/{SERVICE}", content=payload, headers=headers, auth=NO_AUTH)
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
        SERVICE,
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


@contextlib.asynccontextmanager
async def target_of(args: argparse.Namespace) -> AsyncIterator[Target]:
    if args.control_plane:
        async with control_plane(Path(tempfile.mkdtemp(prefix="bench-plane-"))) as plane:
            yield plane
    else:
        async with api_double(delay=args.delay, max_history=4 * args.jobs + 1000) as double:
            yield double


def report(args: argparse.Namespace, target: Target, figures: Figures) -> None:
    latencies = figures.latencies
    created = len(latencies)
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[min(created - 1, round(0.99 * (created - 1)))] * 1000
    rate = created / figures.elapsed
    print(f"registry                         {'PostgreSQL' if args.database_url else 'SQLite'}")
    for label, value in target.describe():
        print(label.ljust(33) + value)
    print(f"raw client creates ({args.concurrency} at once)".ljust(33) + f"{figures.raw:8.0f} jobs/s")
    sending = f"paced at {args.rate:g}/s" if args.rate else f"{args.clients} clients"
    print(f"/job intake ({sending})".ljust(33) + f"{figures.intake:8.0f} events/s")
    print(f"intake -> Job created            {rate:8.0f} jobs/s   ({created}/{args.jobs} created)")
    print(f"latency event -> Job created     p50 {p50:.1f} ms   p99 {p99:.1f} ms")
    print(f"ratio manager/raw                {rate / figures.raw:.2f}")
    # On a shared machine the rates follow its load; CPU per job does much less.
    who = "the manager and uvicorn" if args.rate else "the manager and its in-process clients"
    print(f"process CPU per job              {figures.cpu / args.jobs * 1000:.2f} ms   ({who})")
    if target.runs_pods:
        print(f"end to end: Jobs finished (API server)    {seconds(figures.finished)}")
        print(f"end to end: Succeeded in /system/logs     {seconds(figures.succeeded)}   {figures.outcomes}")
        print(f"raw Jobs finished (from their creates)    {seconds(figures.raw_settled)}")


def seconds(value: float | None) -> str:
    return "not all" if value is None else f"{value:.1f} s"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument(
        "--control-plane",
        action="store_true",
        help="against the tests' real Kubernetes control plane (pods played by kwok), not the API double",
    )
    parser.add_argument("--delay", type=float, default=0.005, help="the API double's delay per request")
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
        async with target_of(args) as target:
            figures = await _run(args, target)
            report(args, target, figures)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
