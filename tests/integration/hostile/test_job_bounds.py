"""Issue 12 item 4: a hostile script cannot exhaust the machine. Real bubblewrap and real cgroups (v1 here):
each script below tries to take more processes, memory, tmpfs, disk or cpu than its job may."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from oscar_manager.backends import cgroups
from oscar_manager.backends.sandbox import Sandbox, SandboxUnavailable, ScriptResult, ScriptRun
from oscar_manager.local_runtime import unprivileged_user
from oscar_manager.settings import Settings
from tests.support.app import NO_AUTH, app_client
from tests.support.components import unavailable
from tests.support.factories import service_body
from tests.support.jobs import wait_for_jobs

PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else os.path.realpath(sys.executable)
MiB = 1 << 20

# Forks until it cannot (at most 300, so that it stays harmless where nothing bounds it), prints how many.
FORKER = f"""{PYTHON} - <<'EOF'
import os, time
n = 0
while n < 300:
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    n += 1
print("forked", n, flush=True)
EOF
"""


@pytest.fixture
def sandbox() -> Sandbox:
    if not cgroups.host_cgroups().available:
        unavailable(f"no cgroups here: {cgroups.host_cgroups().reason}")
    try:
        return Sandbox(require=True, run_as=unprivileged_user() if os.geteuid() == 0 else None)
    except SandboxUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Under the system temp dir, not pytest's private one: reachable by the user scripts run as.
    with tempfile.TemporaryDirectory(prefix="oscar-bounds-") as top:
        os.chmod(top, 0o755)  # noqa: S103 - the script user reaches its folder
        root = Path(top) / "job"
        root.mkdir()
        if os.geteuid() == 0:
            os.chown(root, *unprivileged_user())
        yield root


def job(workdir: Path, script: str, **bounds: object) -> ScriptRun:
    (workdir / "script.sh").write_text(script)
    fields: dict[str, object] = {"memory_bytes": 256 * MiB, "timeout": 60, **bounds}
    return ScriptRun(workdir=workdir, script="script.sh", env={"PATH": "/usr/bin:/bin"}, **fields)  # type: ignore[arg-type]


async def run(
    sandbox: Sandbox, workdir: Path, script: str, **bounds: object
) -> tuple[ScriptRun, ScriptResult]:
    spec = job(workdir, script, **bounds)
    return spec, await sandbox.run(spec)


async def test_a_fork_bomb_is_stopped_by_the_pids_limit(sandbox: Sandbox, workdir: Path) -> None:
    _, result = await run(sandbox, workdir, FORKER, max_pids=32)
    forked = int(re.search(rb"forked (\d+)", result.output).group(1))  # type: ignore[union-attr]
    assert forked < 32, result.output
    assert cgroups.host_cgroups().job_dirs() == []


async def test_an_allocation_over_the_memory_is_killed_and_reported_as_oom(
    sandbox: Sandbox, workdir: Path
) -> None:
    script = f"{PYTHON} -c 'x = bytearray(512 * 1024 * 1024); print(\"allocated\")'\n"
    spec, result = await run(sandbox, workdir, script, memory_bytes=128 * MiB)
    assert result.exit_code == 128 + signal.SIGKILL
    assert b"allocated" not in result.output
    assert result.usage is not None
    assert result.usage.oom_kills >= 1
    assert any("Out of memory" in reason for reason in result.bounds_hit(spec))


async def test_tmpfs_are_bounded_and_charged_to_the_jobs_memory(sandbox: Sandbox, workdir: Path) -> None:
    fill = "dd if=/dev/zero of={0}/fill bs=1M count=512 2>&1 | grep -o 'No space left on device'\n"
    fill += "echo {0}=$(wc -c < {0}/fill)\n"
    script = "".join(fill.format(where) for where in ("/tmp", "/dev/shm", "/run"))
    script += "echo x > /dev/planted 2>/dev/null || echo dev-read-only\n"
    _, result = await run(sandbox, workdir, script, memory_bytes=128 * MiB)
    sizes = {key.decode(): int(value) for key, value in re.findall(rb"(/\S+)=(\d+)", result.output)}
    assert sizes["/tmp"] <= 64 * MiB, result.output
    assert sizes["/dev/shm"] <= 32 * MiB, result.output
    assert sizes["/run"] <= 1 * MiB, result.output
    assert result.output.count(b"No space left on device") == 3
    assert b"dev-read-only" in result.output
    # tmpfs pages count against the job's memory cgroup: 100 MiB in /tmp plus 100 MiB of heap is over the
    # job's 160 MiB, though each alone fits.
    script = (
        "dd if=/dev/zero of=/tmp/fill bs=1M count=75 2>/dev/null\n"
        f"{PYTHON} -c 'x = bytearray(100 * 1024 * 1024); print(\"allocated\")'\n"
    )
    _, result = await run(sandbox, workdir, script, memory_bytes=160 * MiB)
    assert result.usage is not None
    assert result.usage.oom_kills >= 1, result.output
    assert b"allocated" not in result.output


@pytest.mark.parametrize(
    "script",
    [
        # Many files, each under the bound, quickly: caught at the end of the script.
        "for i in $(seq 40); do head -c 1048576 /dev/zero > f$i; done; echo finished\n",
        # One file past the bound: RLIMIT_FSIZE.
        "head -c 64M /dev/zero > big; echo finished\n",
        # A slow writer: caught while it runs.
        "for i in $(seq 200); do head -c 1048576 /dev/zero > f$i; sleep 0.05; done; echo finished\n",
        # Files deleted but held open still use the disk.
        "exec 3> a 4> b; rm a b; head -c 12M /dev/zero >&3; head -c 12M /dev/zero >&4\n"
        "sleep 5; echo finished\n",
    ],
    ids=["many-files", "one-big-file", "slow-writer", "deleted-open-files"],
)
async def test_writing_past_the_disk_bound_fails_the_job(
    sandbox: Sandbox, workdir: Path, script: str
) -> None:
    spec, result = await run(sandbox, workdir, script, disk_bytes=16 * MiB)
    reasons = result.bounds_hit(spec)
    assert any("disk bound of 16777216 bytes" in reason for reason in reasons), (result, reasons)
    if "slow" in script or "sleep 5" in script:
        assert b"finished" not in result.output
        assert result.exit_code == 128 + signal.SIGKILL
    elif "big" in script:  # the writer got SIGXFSZ at the bound, the rest of the script ran
        assert b"File size limit exceeded" in result.output
        assert (workdir / "big").stat().st_size <= 16 * MiB


async def test_a_busy_loop_is_throttled_by_the_cpu_quota(sandbox: Sandbox, workdir: Path) -> None:
    script = "for i in 1 2; do timeout 3 sh -c 'while :; do :; done' & done; wait\n"
    _, result = await run(sandbox, workdir, script, cpu_cores=0.2)
    assert result.usage is not None
    assert result.usage.cpu_seconds is not None
    assert result.usage.throttled_periods, result.usage
    # Two spinning processes would take up to two cores; the quota keeps them near a fifth of one.
    assert result.usage.cpu_seconds < 0.4 * result.duration, (result.usage, result.duration)


async def test_nothing_is_left_in_or_of_the_cgroup(sandbox: Sandbox, workdir: Path) -> None:
    script = "setsid sleep 300 & nohup sleep 300 >/dev/null 2>&1 & echo started; sleep 60\n"
    spec = job(workdir, script, timeout=2)
    task = asyncio.create_task(sandbox.run(spec))
    for _ in range(500):
        if cgroups.host_cgroups().job_dirs():
            break
        await asyncio.sleep(0.01)
    dirs = cgroups.host_cgroups().job_dirs()
    assert dirs
    result = await task
    assert result.timed_out
    assert cgroups.host_cgroups().job_dirs() == []
    assert not any(path.exists() for path in dirs)


async def test_a_run_cancelled_while_its_cgroup_is_made_leaves_none(
    sandbox: Sandbox, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client gone or a manager stopping while the worker thread makes the job's cgroup: the thread
    finishes making it, and it must be removed then, not stay for the manager's life."""
    host = cgroups.host_cgroups()
    entered, release = threading.Event(), threading.Event()
    real_create = cgroups.Cgroups.create

    def slow_create(self: cgroups.Cgroups, limits: cgroups.JobLimits) -> cgroups.JobCgroup:
        entered.set()
        release.wait(30)
        return real_create(self, limits)

    monkeypatch.setattr(cgroups.Cgroups, "create", slow_create)
    task = asyncio.create_task(sandbox.run(job(workdir, "echo never\n")))
    assert await asyncio.to_thread(entered.wait, 30)
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(500):
        if not host.job_dirs():
            break
        await asyncio.sleep(0.02)
    assert host.job_dirs() == []


def test_cgroups_of_a_crashed_manager_are_removed_at_start() -> None:
    host = cgroups.host_cgroups()
    if not host.available:
        unavailable(host.reason)
    gone = subprocess.Popen(["true"])
    gone.wait()
    victim = subprocess.Popen(["sleep", "300"])
    try:
        stale = []
        for parent in host.parents.values():
            leftover = parent.parent / f"{cgroups.PARENT_PREFIX}{gone.pid}" / "job-1"
            leftover.mkdir(parents=True)
            (leftover / "cgroup.procs").write_text(str(victim.pid))
            stale.append(leftover.parent)
        found = cgroups.detect()
        assert found.available
        assert victim.wait(timeout=10) == -signal.SIGKILL
        assert not any(path.exists() for path in stale)
    finally:
        victim.kill()


def test_a_manager_that_exits_removes_its_own_cgroups() -> None:
    host = cgroups.host_cgroups()
    if not host.available:
        unavailable(host.reason)
    code = (
        "import os; from oscar_manager.backends import cgroups; "
        "found = cgroups.host_cgroups(); assert found.available, found.reason; "
        "print(os.getpid(), *[str(p) for p in found.parents.values()])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    pid, *parents = done.stdout.split()
    assert parents
    assert all(path.endswith(f"{cgroups.PARENT_PREFIX}{pid}") for path in parents)
    assert not any(Path(path).exists() for path in parents)


async def test_a_sync_run_and_a_job_are_bounded_the_same_way(settings: Settings) -> None:
    if not cgroups.host_cgroups().available:
        unavailable(cgroups.host_cgroups().reason)
    bounded = settings.model_copy(update={"oscar_job_max_pids": 32})
    async with app_client(bounded) as client:
        body = service_body(
            "forker", script=FORKER, input=[{"storage_provider": "minio", "path": "forker/in"}]
        )
        assert (await client.post("/system/services", json=body)).status_code == 201
        token = (await client.get("/system/services/forker")).json()["token"]
        response = await client.post(
            "/run/forker",
            content=base64.b64encode(b"x"),
            headers={"Authorization": f"Bearer {token}"},
            auth=NO_AUTH,
        )
        assert response.status_code == 200, response.text
        forked = int(re.search(r"forked (\d+)", response.text).group(1))  # type: ignore[union-attr]
        assert forked < 32

        hog = f"{PYTHON} -c 'x = bytearray(512 * 1024 * 1024)'\n"
        body = service_body(
            "hog", script=hog, memory="64Mi", input=[{"storage_provider": "minio", "path": "hog/in"}]
        )
        assert (await client.post("/system/services", json=body)).status_code == 201
        token = (await client.get("/system/services/hog")).json()["token"]
        response = await client.post(
            "/run/hog",
            content=base64.b64encode(b"x"),
            headers={"Authorization": f"Bearer {token}"},
            auth=NO_AUTH,
        )
        assert response.status_code == 500
        assert "Out of memory" in response.text
        created = await client.post(
            "/job/hog",
            content=base64.b64encode(b"x"),
            headers={"Authorization": f"Bearer {token}"},
            auth=NO_AUTH,
        )
        (job_id,) = created.headers["x-oscar-job-ids"].split(",")
        jobs = await wait_for_jobs(client, "hog", count=1)
        assert jobs[job_id]["status"] == "Failed"
        log = (await client.get(f"/system/logs/hog/{job_id}")).text
        assert "Out of memory: the kernel killed" in log
        info = (await client.get("/system/info")).json()["execution"]
        assert info["limits"].startswith("cgroup v")
