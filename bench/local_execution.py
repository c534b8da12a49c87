"""Local execution benchmarks, each as a ratio against a baseline measured in the same run.

1. Sync ``/run`` overhead: a trivial script through ``POST /run/{service}`` on a real ``oscar-manager serve``
   (HTTP, auth, stage in, sandbox, stage out, base64 response) against the same script run directly with
   ``sh``, against the same script run in-process through the sandbox the server uses (bubblewrap, and the
   ``setpriv`` drop to ``nobody`` when running as root), and against a bare authenticated request
   (``GET /system/info``) to the same server.
2. Events-to-jobs throughput: N async invocations of a no-op script (``POST /job``) until all jobs finished,
   against the same N scripts run directly with ``sh`` and through the sandbox, at the same concurrency.
   Intake is measured while the jobs run (they share the server); ``--clients`` posts from several clients.

Usage: ``python -m bench.local_execution [--runs 200] [--jobs 200] [--clients 1]``. Prints figures; asserts
nothing, but gives up (and says which jobs are unfinished) when the jobs are not all done in time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from oscar_manager.backends.sandbox import Sandbox, ScriptRun
from oscar_manager.domain.quantities import quantity_bytes
from oscar_manager.domain.service import DEFAULT_MEMORY
from oscar_manager.local_runtime import unprivileged_user
from tests.support.components import free_port
from tests.support.server import RunningServer, start_server, stop_server

SCRIPT = 'tr a-z A-Z < "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/out"\n'
NOOP = "true\n"
CONCURRENCY = 4
FINISH_TIMEOUT = 120.0  # seconds after the last POST /job for every job to have finished
POLL_INTERVAL = 0.05


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


class SandboxBaseline:
    """The script run the way the server runs it (bubblewrap if usable, as ``nobody`` when root, the default
    memory limit), in this process and with no manager around it: what the manager cannot go below."""

    def __init__(self) -> None:
        self.sandbox = Sandbox(run_as=unprivileged_user() if os.geteuid() == 0 else None)
        # Reachable by the user scripts run as (the benchmark's own temporary folder is private).
        self.workdir = Path(tempfile.mkdtemp(prefix="oscar-bench-sandbox-"))
        os.chmod(self.workdir, 0o777)  # noqa: S103 - a throw-away folder the script user must write to
        (self.workdir / "in.txt").write_text("hello oscar")

    @property
    def name(self) -> str:
        return "bubblewrap" if self.sandbox.sandboxed else "no sandbox"

    async def run(self, script: str) -> None:
        (self.workdir / "script.sh").write_text(script)
        visible = self.sandbox.job_path
        env = {
            "PATH": "/usr/bin:/bin",
            "INPUT_FILE_PATH": visible(self.workdir, self.workdir / "in.txt"),
            "TMP_OUTPUT_DIR": visible(self.workdir, self.workdir),
        }
        result = await self.sandbox.run(
            ScriptRun(
                workdir=self.workdir,
                script="script.sh",
                env=env,
                timeout=30,
                memory_bytes=quantity_bytes(DEFAULT_MEMORY),
            )
        )
        if result.exit_code != 0:
            raise RuntimeError(f"sandboxed baseline failed: {result.output!r}")

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def report(name: str, samples: list[float], baseline: list[float]) -> None:
    p50, base50 = statistics.median(samples), statistics.median(baseline)
    print(
        f"  {name:<34} p50 {p50:7.2f} ms  p99 {percentile(samples, 0.99):7.2f} ms"
        f"  | +{p50 - base50:6.2f} ms over baseline, x{p50 / base50:5.2f}"
    )


async def sync_overhead(
    server: RunningServer, token: str, workdir: Path, sandboxed: SandboxBaseline, runs: int
) -> None:
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
        in_sandbox = await timed(lambda: sandboxed.run(SCRIPT), runs)
        http_only = await timed(info_once, runs)
        through_run = await timed(run_once, runs)
    print(f"sync /run of a trivial script ({runs} runs each)")
    report("baseline: sh script.sh", baseline, baseline)
    report(f"sandbox only ({sandboxed.name})", in_sandbox, baseline)
    report("bare authenticated request", http_only, baseline)
    report("POST /run", through_run, baseline)
    run50, http50 = statistics.median(through_run), statistics.median(http_only)
    manager = run50 - statistics.median(baseline) - http50
    print(f"  manager overhead beyond HTTP and sh, p50: {manager:.2f} ms")
    beyond_sandbox = run50 - statistics.median(in_sandbox) - http50
    print(f"  manager overhead beyond HTTP and the sandbox, p50: {beyond_sandbox:.2f} ms")


async def rate(jobs: int, one: Callable[[], Awaitable[None]]) -> float:
    limit = asyncio.Semaphore(CONCURRENCY)

    async def limited() -> None:
        async with limit:
            await one()

    start = time.perf_counter()
    await asyncio.gather(*(limited() for _ in range(jobs)))
    return jobs / (time.perf_counter() - start)


async def statuses(http: httpx.AsyncClient, service: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    page = ""
    while True:
        body = (await http.get(f"/system/logs/{service}", params={"page": page})).json()
        counts.update(job["status"] for job in body["jobs"].values())
        page = body.get("next_page", "")
        if not page:
            return counts


async def throughput(
    server: RunningServer, workdir: Path, sandboxed: SandboxBaseline, jobs: int, clients: int
) -> None:
    (workdir / "noop.sh").write_text(NOOP)
    baseline = await rate(jobs, lambda: run_sh(workdir, "noop.sh"))
    in_sandbox = await rate(jobs, lambda: sandboxed.run(NOOP))

    auth = ("oscar", server.password())
    async with httpx.AsyncClient(base_url=server.url, timeout=60, auth=auth) as http:
        numbers = iter(range(jobs))

        async def client() -> None:
            for n in numbers:
                response = await http.post("/job/noop", content=base64.b64encode(b"%d" % n))
                assert response.status_code == 201

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        accepted = time.perf_counter() - start
        deadline = time.monotonic() + FINISH_TIMEOUT
        while (counts := await statuses(http, "noop"))["Succeeded"] < jobs:
            if time.monotonic() > deadline:
                print(f"  gave up: jobs unfinished {FINISH_TIMEOUT:g} s after the last POST: {dict(counts)}")
                return
            await asyncio.sleep(POLL_INTERVAL)
        elapsed = time.perf_counter() - start
    end_to_end = jobs / elapsed
    print(f"events to finished jobs, no-op script, concurrency {CONCURRENCY} ({jobs} jobs)")
    who = f"{clients} client{'s' if clients > 1 else ''}"
    print(f"  {'baseline: sh at the same concurrency':<38} {baseline:8.1f} runs/s")
    print(f"  {f'sandbox only ({sandboxed.name}), same':<38} {in_sandbox:8.1f} runs/s")
    print(f"  {f'intake only (POST /job, {who})':<38} {jobs / accepted:8.1f} events/s")
    print(
        f"  {'POST /job to Succeeded':<38} {end_to_end:8.1f} jobs/s  (x{end_to_end / baseline:.2f} of"
        f" baseline, x{end_to_end / in_sandbox:.2f} of the sandboxed one)"
    )


async def main(runs: int, jobs: int, clients: int) -> None:
    sandboxed = SandboxBaseline()
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
            await sync_overhead(server, token, root, sandboxed, runs)
            await throughput(server, root, sandboxed, jobs, clients)
        finally:
            stop_server(server)
            sandboxed.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--clients", type=int, default=1, help="concurrent POST /job clients")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.runs, arguments.jobs, arguments.clients))
