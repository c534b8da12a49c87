"""The script sandbox, with bubblewrap and in the plain-process fallback, driven through real processes."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shlex
import shutil
import socket
import sys
import tempfile
import tracemalloc
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from oscar_manager.backends.sandbox import JOB_DIR, Sandbox, SandboxUnavailable, ScriptResult, ScriptRun
from tests.support.components import unavailable

MODES = ["bwrap", "fallback"]
# Scripts see a private /tmp: a virtualenv under /tmp (a CI clone, say) is not visible inside the sandbox,
# so they use the interpreter itself, wherever it really lives.
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else os.path.realpath(sys.executable)
MiB = 1 << 20


def _bwrap_sandbox(*, max_output_bytes: int = 1 << 20) -> Sandbox:
    try:
        return Sandbox(require=True, max_output_bytes=max_output_bytes)
    except SandboxUnavailable as exc:
        unavailable(str(exc))


def _make_sandbox(mode: str, *, max_output_bytes: int = 1 << 20) -> Sandbox:
    if mode == "bwrap":
        return _bwrap_sandbox(max_output_bytes=max_output_bytes)
    return Sandbox(bwrap=None, max_output_bytes=max_output_bytes, allow_unsandboxed=True)


@pytest.fixture(params=MODES)
def sandbox(request: pytest.FixtureRequest) -> Sandbox:
    return _make_sandbox(request.param)


@pytest.fixture
def bwrap_sandbox() -> Sandbox:
    return _bwrap_sandbox()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    root = tmp_path / "job"
    (root / "input").mkdir(parents=True)
    (root / "output").mkdir()
    return root


async def run_script(
    sandbox: Sandbox,
    workdir: Path,
    script: str,
    *,
    env: Mapping[str, str] | None = None,
    seconds: float | None = 30,
    memory_bytes: int | None = None,
    network: bool = False,
    stdin: bytes = b"",
) -> ScriptResult:
    (workdir / "script.sh").write_text(script)
    return await sandbox.run(
        ScriptRun(
            workdir=workdir,
            script="script.sh",
            env={"PATH": "/usr/bin:/bin"} if env is None else env,
            timeout=seconds,
            memory_bytes=memory_bytes,
            network=network,
            stdin=stdin,
        )
    )


def _processes(argv: list[bytes]) -> list[int]:
    """Host pids of live (not zombie) processes whose command line is exactly ``argv``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if cmdline.split(b"\0")[:-1] == argv and state != "Z":
            found.append(int(entry.name))
    return found


async def _wait_for_processes(argv: list[bytes], *, present: bool, within: float = 5.0) -> list[int]:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        pids = await asyncio.to_thread(_processes, argv)
        if bool(pids) == present or asyncio.get_running_loop().time() > deadline:
            return pids
        await asyncio.sleep(0.02)


def _existing(*paths: Path) -> list[Path]:
    return [path for path in paths if path.exists()]


def _sleeper() -> tuple[str, list[bytes]]:
    """A `sleep` command line unique to this test, to find its process on the host from either mode."""
    seconds = f"1000.{secrets.randbelow(10**6):06d}"
    return f"sleep {seconds}", [b"sleep", seconds.encode()]


# --- exit codes and output ------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 1, 42])
async def test_the_exit_code_is_the_scripts(sandbox: Sandbox, workdir: Path, code: int) -> None:
    result = await run_script(sandbox, workdir, f"echo running\nexit {code}\n")
    assert result.exit_code == code
    assert not result.timed_out
    assert result.output == b"running\n"
    assert result.duration > 0


async def test_a_script_killed_by_a_signal_exits_with_128_plus_the_signal(
    sandbox: Sandbox, workdir: Path
) -> None:
    result = await run_script(sandbox, workdir, "kill -9 $$\n")
    assert result.exit_code == 128 + 9
    assert not result.timed_out


async def test_stdout_and_stderr_are_one_stream_in_order(sandbox: Sandbox, workdir: Path) -> None:
    script = "echo out1\necho err1 >&2\necho out2\nprintf 'err2' >&2\n"
    result = await run_script(sandbox, workdir, script)
    assert result.output == b"out1\nerr1\nout2\nerr2"


async def test_a_syntax_error_is_reported_like_sh_does(sandbox: Sandbox, workdir: Path) -> None:
    result = await run_script(sandbox, workdir, "echo before\nif then\n", memory_bytes=256 * MiB)
    assert result.exit_code == 2
    script = sandbox.job_path(workdir, workdir / "script.sh")
    assert result.output.startswith(f"before\n{script}: 2: Syntax error".encode())


# --- environment ----------------------------------------------------------------------------------------


def _parse_env(dump: bytes) -> dict[str, str]:
    pairs = (item.decode().split("=", 1) for item in dump.split(b"\0") if item)
    return {key: value for key, value in pairs}


@pytest.mark.parametrize("memory_bytes", [None, 256 * MiB])
async def test_the_environment_is_exactly_the_one_given(
    sandbox: Sandbox, workdir: Path, monkeypatch: pytest.MonkeyPatch, memory_bytes: int | None
) -> None:
    monkeypatch.setenv("OSCAR_SECRET", "must-not-leak")
    env = {
        "PATH": "/usr/bin:/bin",
        "SPACED": "a b  c",
        "UNICODE": "ñandú €",
        "LINES": "one\ntwo",
        "EMPTY": "",
    }
    result = await run_script(sandbox, workdir, "env -0\n", env=env, memory_bytes=memory_bytes)
    assert result.exit_code == 0
    # The shell adds PWD itself, as it does for any script.
    assert _parse_env(result.output) == {**env, "PWD": sandbox.job_path(workdir, workdir)}


async def test_path_comes_from_the_manager_when_not_given(
    sandbox: Sandbox, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OSCAR_SECRET", "must-not-leak")
    monkeypatch.setenv("PATH", "/usr/local/bin:/usr/bin:/bin")
    result = await run_script(sandbox, workdir, "env -0\n", env={"ONLY": "this"})
    assert _parse_env(result.output) == {
        "ONLY": "this",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "PWD": sandbox.job_path(workdir, workdir),
    }


@pytest.mark.parametrize("env", [{"A=B": "x"}, {"": "x"}, {"A": "nul\0byte"}])
async def test_an_impossible_environment_is_refused(workdir: Path, env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="invalid environment variable"):
        await run_script(Sandbox(bwrap=None, allow_unsandboxed=True), workdir, "true\n", env=env)


async def test_the_environment_is_not_on_any_command_line(bwrap_sandbox: Sandbox, workdir: Path) -> None:
    token = f"token-{secrets.token_hex(16)}"
    script = "touch output/ready\nsleep 5\n"
    job = asyncio.create_task(run_script(bwrap_sandbox, workdir, script, env={"TOKEN": token}))
    ready = workdir / "output" / "ready"
    try:
        for _ in range(500):
            if ready.exists():
                break
            await asyncio.sleep(0.01)
        assert ready.exists()
        assert await asyncio.to_thread(_processes_mentioning, token.encode()) == []
    finally:
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)


def _processes_mentioning(needle: bytes) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


# --- files ----------------------------------------------------------------------------------------------


async def test_outputs_reach_the_host_with_any_file_name(sandbox: Sandbox, workdir: Path) -> None:
    source = workdir / "input" / "my input ñ €.txt"
    source.write_text("payload ✓\n")
    out_dir = workdir / "output"
    env = {
        "PATH": "/usr/bin:/bin",
        "INPUT_FILE_PATH": sandbox.job_path(workdir, source),
        "TMP_OUTPUT_DIR": sandbox.job_path(workdir, out_dir),
    }
    script = 'cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/result ü ✓.txt"\nmkdir "$TMP_OUTPUT_DIR/sub dir"\n'
    script += 'echo second > "$TMP_OUTPUT_DIR/sub dir/b c"\n'
    result = await run_script(sandbox, workdir, script, env=env)
    assert result.exit_code == 0, result.output
    assert (out_dir / "result ü ✓.txt").read_text() == "payload ✓\n"
    assert (out_dir / "sub dir" / "b c").read_text() == "second\n"


def test_job_paths_are_host_paths_without_bwrap(workdir: Path) -> None:
    fallback = Sandbox(bwrap=None, allow_unsandboxed=True)
    target = workdir / "input" / "a b.txt"
    assert fallback.job_path(workdir, target) == str(target.absolute())
    assert fallback.job_path(workdir, workdir) == str(workdir.absolute())


def test_job_paths_are_under_the_fixed_job_dir_with_bwrap(bwrap_sandbox: Sandbox, workdir: Path) -> None:
    assert bwrap_sandbox.job_path(workdir, workdir / "input" / "a b.txt") == f"{JOB_DIR}/input/a b.txt"
    assert bwrap_sandbox.job_path(workdir, workdir) == str(JOB_DIR)


def test_job_paths_outside_the_workdir_are_refused(sandbox: Sandbox, workdir: Path) -> None:
    with pytest.raises(ValueError, match="subpath|does not start with"):
        sandbox.job_path(workdir, workdir.parent / "elsewhere")


# --- isolation (bubblewrap) -----------------------------------------------------------------------------


async def test_the_root_is_read_only_and_tmp_is_private(bwrap_sandbox: Sandbox, workdir: Path) -> None:
    name = f"oscar-sandbox-{secrets.token_hex(4)}"
    script = f"""
        touch /usr/{name} && echo WROTE-USR
        echo x > /etc/{name} && echo WROTE-ETC
        echo scratch > /tmp/{name} && cat /tmp/{name}
        echo kept > output/kept
        hostname
    """
    result = await run_script(bwrap_sandbox, workdir, script)
    assert b"WROTE" not in result.output
    assert b"Read-only file system" in result.output
    assert result.output.endswith(b"scratch\noscar-job\n")
    assert _existing(Path("/usr", name), Path("/etc", name), Path("/tmp", name)) == []
    assert (workdir / "output" / "kept").read_text() == "kept\n"


async def test_the_script_has_no_capabilities(bwrap_sandbox: Sandbox, workdir: Path) -> None:
    # Run by root, bubblewrap would otherwise keep every capability, enough to remount / read-write.
    name = f"oscar-sandbox-{secrets.token_hex(4)}"
    script = (
        f"grep CapEff /proc/self/status\nmount -o remount,bind,rw / && touch /usr/{name} && echo ESCAPED\n"
    )
    result = await run_script(bwrap_sandbox, workdir, script)
    assert re.search(rb"CapEff:\s+0+\n", result.output), result.output
    assert b"ESCAPED" not in result.output
    assert _existing(Path("/usr", name)) == []


@pytest.mark.parametrize("network", [False, True])
async def test_loopback_of_the_host_is_reachable_only_with_network(
    bwrap_sandbox: Sandbox, workdir: Path, network: bool
) -> None:
    connections = 0

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connect = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=10).close()"
    try:
        result = await run_script(
            bwrap_sandbox, workdir, f"{PYTHON} -c {shlex.quote(connect)}\n", network=network
        )
    finally:
        server.close()
        await server.wait_closed()
    if network:
        assert result.exit_code == 0, result.output
        assert connections == 1
    else:
        assert result.exit_code != 0
        assert b"ConnectionRefusedError" in result.output or b"Network is unreachable" in result.output
        assert connections == 0


@pytest.fixture
def host_unix_socket() -> Iterator[Path]:
    """A listening Unix socket under /run, where host daemons keep theirs."""
    candidates = [Path(f"/run/user/{os.getuid()}"), Path("/run")]
    directory = next((c for c in candidates if c.is_dir() and os.access(c, os.W_OK)), None)
    if directory is None:
        unavailable("no writable directory under /run to plant a host socket in")
    path = directory / f"oscar-test-{secrets.token_hex(4)}.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen()
        try:
            yield path
        finally:
            path.unlink()


async def test_host_unix_sockets_are_out_of_reach(
    bwrap_sandbox: Sandbox, workdir: Path, host_unix_socket: Path
) -> None:
    connect = f"import socket; socket.socket(socket.AF_UNIX).connect({str(host_unix_socket)!r})"
    script = f"{PYTHON} -c {shlex.quote(connect)} && echo CONNECTED\n"
    result = await run_script(bwrap_sandbox, workdir, script)
    assert b"CONNECTED" not in result.output
    assert b"FileNotFoundError" in result.output
    # The same script does reach it unsandboxed: the check above is not vacuous.
    plain = await run_script(Sandbox(bwrap=None, allow_unsandboxed=True), workdir, script)
    assert b"CONNECTED" in plain.output, plain.output


@pytest.fixture
def secret_dir() -> Iterator[Path]:
    """A directory outside /tmp (which the sandbox replaces anyway), like the manager's data directory."""
    try:
        path = Path(tempfile.mkdtemp(prefix="oscar-secret-", dir="/var/tmp"))
    except OSError as exc:
        unavailable(f"cannot create a directory under /var/tmp: {exc}")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_hidden_paths_are_unreadable_even_around_the_workdir(secret_dir: Path) -> None:
    (secret_dir / "admin-password").write_text("hunter2\n")
    loose_file = secret_dir.parent / f"{secret_dir.name}.key"
    loose_file.write_text("private key\n")
    workdir = secret_dir / "work" / "job-1"
    (workdir / "output").mkdir(parents=True)
    script = f"cat {secret_dir}/admin-password {loose_file}\necho done > output/result\n"
    try:
        exposed = await run_script(_bwrap_sandbox(), workdir, script)
        assert exposed.output == b"hunter2\nprivate key\n"
        hiding = Sandbox(require=True, hidden_paths=[secret_dir, loose_file, secret_dir / "absent"])
        result = await run_script(hiding, workdir, script)
    finally:
        loose_file.unlink()
    assert b"hunter2" not in result.output
    assert b"private key" not in result.output
    assert b"No such file or directory" in result.output
    assert (workdir / "output" / "result").read_text() == "done\n"


# --- timeout and process clean-up -----------------------------------------------------------------------


async def test_the_timeout_kills_the_script_and_all_its_descendants(sandbox: Sandbox, workdir: Path) -> None:
    command, argv = _sleeper()
    script = f"{command} &\necho $! > output/pid\necho started\nwait\necho never\n"
    job = asyncio.create_task(run_script(sandbox, workdir, script, seconds=2))
    pids = await _wait_for_processes(argv, present=True)
    assert len(pids) == 1
    result = await job
    assert result.timed_out
    assert result.exit_code is None
    assert result.output == b"started\n"
    assert 2 <= result.duration < 10
    assert (workdir / "output" / "pid").read_text().strip().isdigit()
    if not sandbox.sandboxed:
        assert int((workdir / "output" / "pid").read_text()) == pids[0]
    assert await _wait_for_processes(argv, present=False) == []


async def test_the_timeout_lets_the_script_clean_up_on_sigterm(sandbox: Sandbox, workdir: Path) -> None:
    script = "trap 'echo cleaned > output/cleanup; exit 0' TERM\necho up\nwhile :; do sleep 0.05; done\n"
    result = await run_script(sandbox, workdir, script, seconds=1)
    assert result.timed_out
    assert result.exit_code is None
    assert result.output.startswith(b"up\n")  # sh may add that its `sleep` was terminated
    assert (workdir / "output" / "cleanup").read_text() == "cleaned\n"


async def test_a_script_ignoring_sigterm_is_killed_after_the_grace(sandbox: Sandbox, workdir: Path) -> None:
    result = await run_script(
        sandbox, workdir, "trap '' TERM\necho up\nwhile :; do sleep 0.05; done\n", seconds=1
    )
    assert result.timed_out
    assert result.exit_code is None
    assert result.output == b"up\n"
    assert result.duration < 10


async def test_what_the_script_leaves_running_is_killed_when_it_exits(
    sandbox: Sandbox, workdir: Path
) -> None:
    command, argv = _sleeper()
    result = await run_script(sandbox, workdir, f"{command} &\necho left\nexit 0\n", seconds=60)
    assert result.exit_code == 0
    assert result.output == b"left\n"
    assert result.duration < 30  # it did not wait for the sleep's end of output
    assert await _wait_for_processes(argv, present=False) == []


async def test_cancelling_a_run_kills_the_script(sandbox: Sandbox, workdir: Path) -> None:
    command, argv = _sleeper()
    job = asyncio.create_task(run_script(sandbox, workdir, f"{command} &\nwait\n", seconds=None))
    assert await _wait_for_processes(argv, present=True) != []
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert await _wait_for_processes(argv, present=False) == []


# --- memory ---------------------------------------------------------------------------------------------


async def test_the_memory_limit_stops_a_large_allocation(sandbox: Sandbox, workdir: Path) -> None:
    script = f"{PYTHON} -c 'bytearray(500 * 1024 * 1024); print(\"allocated\")'\n"
    limited = await run_script(sandbox, workdir, script, memory_bytes=200 * MiB)
    if limited.usage is not None:  # in a memory cgroup: the kernel's OOM killer, counted and reported
        assert limited.exit_code == 128 + 9
        assert limited.usage.oom_kills >= 1
    else:  # RLIMIT_AS: the allocation itself fails
        assert limited.exit_code == 1
        assert b"MemoryError" in limited.output
    unlimited = await run_script(sandbox, workdir, script, memory_bytes=None)
    assert unlimited.exit_code == 0, unlimited.output
    assert unlimited.output == b"allocated\n"


async def test_ordinary_scripts_work_under_the_default_service_memory(
    sandbox: Sandbox, workdir: Path
) -> None:
    script = f"""
        seq 1 200000 | sort -rn | head -n 1
        awk 'BEGIN {{ for (i = 0; i < 1000; i++) s += i; print s }}'
        {PYTHON} -c 'print(len(bytearray(100 * 1024 * 1024)))'
    """
    result = await run_script(sandbox, workdir, script, memory_bytes=256 * MiB)
    assert result.exit_code == 0, result.output
    assert result.output == b"200000\n499500\n104857600\n"


# --- output limit ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_huge_output_keeps_head_and_tail_in_bounded_memory(workdir: Path, mode: str) -> None:
    limit = 64 * 1024
    filler = 50 * MiB
    sandbox = _make_sandbox(mode, max_output_bytes=limit)
    script = f"echo HEAD\nhead -c {filler} /dev/zero | tr '\\0' x\necho\necho TAIL\n"
    tracemalloc.start()
    try:
        result = await run_script(sandbox, workdir, script)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.exit_code == 0
    total = len("HEAD\n") + filler + len("\nTAIL\n")
    marker = f"\n[oscar-manager: {total - limit} bytes of output omitted]\n".encode()
    head, tail = result.output.split(marker)
    assert head == b"HEAD\n" + b"x" * (limit // 2 - 5)
    assert tail == b"x" * (limit // 2 - 6) + b"\nTAIL\n"
    assert peak < 4 * MiB, f"{peak} bytes held for {filler} bytes of output"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("size", "omitted"), [(1000, 0), (1001, 1), (5000, 4000)])
async def test_output_up_to_the_limit_is_kept_whole(
    workdir: Path, mode: str, size: int, omitted: int
) -> None:
    limited = _make_sandbox(mode, max_output_bytes=1000)
    result = await run_script(limited, workdir, f"head -c {size} /dev/zero | tr '\\0' y\n")
    if omitted == 0:
        assert result.output == b"y" * size
    else:
        marker = f"\n[oscar-manager: {omitted} bytes of output omitted]\n".encode()
        assert result.output == b"y" * 500 + marker + b"y" * 500


# --- stdin ----------------------------------------------------------------------------------------------


async def test_stdin_is_delivered_then_closed(sandbox: Sandbox, workdir: Path) -> None:
    data = bytes(range(256)) * 4096 + b"\0end"  # 1 MiB: more than a pipe holds
    result = await run_script(sandbox, workdir, "cat > output/stdin.bin\necho eof\n", stdin=data)
    assert result.exit_code == 0
    assert result.output == b"eof\n"
    assert (workdir / "output" / "stdin.bin").read_bytes() == data


async def test_unread_stdin_does_not_hang_the_run(sandbox: Sandbox, workdir: Path) -> None:
    result = await run_script(sandbox, workdir, "exit 0\n", stdin=b"z" * (8 * MiB), seconds=20)
    assert not result.timed_out
    assert result.exit_code == 0


@pytest.fixture
def manager_stdin_open() -> Iterator[None]:
    """The manager's own stdin is a pipe nobody closes (as under a supervisor): no script may inherit it."""
    read_end, write_end = os.pipe()
    saved = os.dup(0)
    os.dup2(read_end, 0)
    try:
        yield
    finally:
        os.dup2(saved, 0)
        for fd in (saved, read_end, write_end):
            os.close(fd)


@pytest.mark.usefixtures("manager_stdin_open")
async def test_without_stdin_the_script_reads_end_of_file(sandbox: Sandbox, workdir: Path) -> None:
    result = await run_script(sandbox, workdir, "cat\necho read-all\n", seconds=5)
    assert not result.timed_out
    assert result.output == b"read-all\n"


# --- concurrency and set-up -----------------------------------------------------------------------------


async def test_concurrent_runs_stay_apart(sandbox: Sandbox, tmp_path: Path) -> None:
    workdirs = [tmp_path / f"job {n}" for n in range(8)]
    peek = f"if ls {shlex.quote(str(tmp_path))} >/dev/null 2>&1; then echo visible; fi\n"
    for root in workdirs:
        (root / "output").mkdir(parents=True)
        (root / "script.sh").write_text(f'echo "$N" > output/n\n{peek}')
    runs = [
        ScriptRun(workdir=root, script="script.sh", env={"N": str(n)}, timeout=30, memory_bytes=256 * MiB)
        for n, root in enumerate(workdirs)
    ]
    results = await asyncio.gather(*(sandbox.run(run) for run in runs))
    for n, (root, result) in enumerate(zip(workdirs, results, strict=True)):
        assert result.exit_code == 0
        assert (root / "output" / "n").read_text() == f"{n}\n"
        # Under bubblewrap the other jobs' directories (in the host's /tmp) are not visible at all.
        if tmp_path.is_relative_to("/tmp"):
            assert result.output == (b"" if sandbox.sandboxed else b"visible\n")


def test_an_unusable_bwrap_is_refused_when_required_and_skipped_otherwise(tmp_path: Path) -> None:
    broken = tmp_path / "bwrap"
    broken.write_text("#!/bin/sh\necho 'bwrap: no namespaces here' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(SandboxUnavailable, match="no namespaces here"):
        Sandbox(bwrap=str(broken), require=True)
    assert not Sandbox(bwrap=str(broken)).sandboxed
    with pytest.raises(SandboxUnavailable, match="disabled"):
        Sandbox(bwrap=None, require=True)
    assert not Sandbox(bwrap=None, allow_unsandboxed=True).sandboxed
