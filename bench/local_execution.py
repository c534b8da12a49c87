"""Local execution benchmarks, each as a ratio against a baseline measured in the same run.

1. Sync ``/run`` overhead: a trivial script through ``POST /run/{service}`` on a real ``oscar-manager serve``
   (HTTP, auth, stage in, sandbox, stage out, base64 response) against the same script run directly with
   ``sh`` and against a bare authenticated request (``GET /system/info``) to the same server.
2. Events-to-jobs throughput: N async invocations of a no-op script (``POST /job``) until all jobs finished,
   against the same N scripts run directly with ``sh`` at the same concurrency.

Usage: ``python bench/local_execution.py [--runs 200] [--jobs 200]``. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from tests.support.components import free_port
from tests.support.server import RunningServer, start_server, stop_server

SCRIPT = 'tr a-z A-Z < "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/out"\n'
NOOP = "true\n"
CONCURRENCY = 4


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]


async def timed(action: Callable[[], Awaitable[object]], runs: int) -> list[float]:
    for _ in range(min(10, runs)):  # warm-up
        await action()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        await action()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


async def run_sh(workdir: Path, script: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "/bin/sh", script, cwd=workdir, env={"INPUT_FILE_PATH": "in.txt", "TMP_OUTPUT_DIR": "."}
    )
    if await process.wait() != 0:
        raise RuntimeError("baseline script failed")


def report(name: str, samples: list[float], baseline: list[float]) -> None:
    p50, base50 = statistics.median(samples), statistics.median(baseline)
    print(
        f"  {name:<34} p50 {p50:7.2f} ms  p99 {percentile(samples, 0.99):7.2f} ms"
        f"  | +{p50 - base50:6.2f} ms over baseline, x{p50 / base50:5.2f}"
    )


async def sync_overhead(server: RunningServer, token: str, workdir: Path, runs: int) -> None:
    (workdir / "script.sh").write_text(SCRIPT)
    (workdir / "in.txt").write_text("hello oscar")
    body = base64.b64encode(b"hello oscar")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        admin = ("oscar", server.password())
        headers = {"Authorization": f"Bearer {token}"}

        async def run_once() -> None:
            response = await http.post("/run/bench", content=body, headers=headers)
            assert base64.b64decode(response.content) == b"HELLO OSCAR", response.text

        async def info_once() -> None:
            assert (await http.get("/system/info", auth=admin)).status_code == 200

        baseline = await timed(lambda: run_sh(workdir, "script.sh"), runs)
        http_only = await timed(info_once, runs)
        through_run = await timed(run_once, runs)
    print(f"sync /run of a trivial script ({runs} runs each)")
    report("baseline: sh script.sh", baseline, baseline)
    report("bare authenticated request", http_only, baseline)
    report("POST /run", through_run, baseline)
    manager = statistics.median(through_run) - statistics.median(baseline) - statistics.median(http_only)
    print(f"  manager overhead beyond HTTP and sh, p50: {manager:.2f} ms")


async def throughput(server: RunningServer, workdir: Path, jobs: int) -> None:
    (workdir / "noop.sh").write_text(NOOP)
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one_sh() -> None:
        async with limit:
            await run_sh(workdir, "noop.sh")

    start = time.perf_counter()
    await asyncio.gather(*(one_sh() for _ in range(jobs)))
    baseline = jobs / (time.perf_counter() - start)

    auth = ("oscar", server.password())
    async with httpx.AsyncClient(base_url=server.url, timeout=60, auth=auth) as http:
        start = time.perf_counter()
        for n in range(jobs):
            response = await http.post("/job/noop", content=base64.b64encode(b"%d" % n))
            assert response.status_code == 201
        accepted = time.perf_counter() - start
        while True:
            finished = 0
            page = ""
            while True:
                body = (await http.get("/system/logs/noop", params={"page": page})).json()
                finished += sum(job["status"] == "Succeeded" for job in body["jobs"].values())
                page = body.get("next_page", "")
                if not page:
                    break
            if finished >= jobs:
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - start
    rate = jobs / elapsed
    print(f"events to finished jobs, no-op script, concurrency {CONCURRENCY} ({jobs} jobs)")
    print(f"  baseline: sh at the same concurrency   {baseline:8.1f} runs/s")
    print(f"  intake only (POST /job, one client)    {jobs / accepted:8.1f} events/s")
    print(
        f"  POST /job to Succeeded                 {rate:8.1f} jobs/s  (x{rate / baseline:.2f} of baseline)"
    )


async def main(runs: int, jobs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {"OSCAR_PASSWORD": "bench", "OSCAR_LOCAL_CONCURRENCY": str(CONCURRENCY)}
        server = start_server(root, free_port(), env=env)
        try:
            async with httpx.AsyncClient(base_url=server.url, auth=("oscar", "bench")) as http:
                for name, script in (("bench", SCRIPT), ("noop", NOOP)):
                    body = {"name": name, "image": "img", "script": script}
                    assert (await http.post("/system/services", json=body)).status_code == 201
                token = (await http.get("/system/services/bench")).json()["token"]
                sandbox = (await http.get("/system/info")).json()["execution"]["sandbox"]
            print(f"sandbox: {sandbox}")
            await sync_overhead(server, token, root, runs)
            await throughput(server, root, jobs)
        finally:
            stop_server(server)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=200)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.runs, arguments.jobs))
