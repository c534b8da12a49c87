"""Run one user script per job, isolated by bubblewrap when this machine allows it.

Only the script runs in a child process: the manager stages inputs and outputs itself, so no credentials are
handed to the script. bubblewrap costs a few milliseconds per run (namespaces and mounts, no image, no
daemon), where a container runtime or a Python interpreter per job would cost far more. Without bubblewrap
the same interface runs a plain process in its own session, still with the timeout, limits and output cap.

What the bubblewrap sandbox does not hide on its own: the root file system is bound read-only, so whatever
the manager's user can read stays readable (its data directory: database, keys, other jobs' files). Pass
such directories as ``hidden_paths``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import shutil
import signal
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, Literal

from oscar_manager.backends.bwrap import (
    JOB_DIR,
    SHELL,
    Bwrap,
    hide_flags,
    needs_hiding,
    probe,
    sandbox_flags,
)
from oscar_manager.errors import OscarError

__all__ = ["JOB_DIR", "Sandbox", "SandboxUnavailable", "ScriptResult", "ScriptRun"]

log = logging.getLogger(__name__)

# Between SIGTERM and SIGKILL to the script's process group once the timeout expires.
KILL_GRACE_SECONDS: Final = 1.0
# After the script exits, how long to wait for the end of its output (only a process that escaped the
# process group can hold the pipe open that long).
DRAIN_SECONDS: Final = 1.0


class SandboxUnavailable(OscarError):
    """bubblewrap was required but cannot run here."""


class _Auto(enum.Enum):
    AUTO = "auto"


AUTO: Final = _Auto.AUTO


@dataclass(frozen=True, slots=True)
class ScriptRun:
    workdir: Path  # the job's directory, made by the caller; the script's working directory
    script: str  # file name of the script in ``workdir``, run with /bin/sh
    env: Mapping[str, str]  # the script's whole environment (PATH is the manager's if not given)
    timeout: float | None  # seconds, then SIGTERM, a grace period and SIGKILL to everything it started
    memory_bytes: int | None  # address-space limit (RLIMIT_AS) of the script and its children
    network: bool = False  # under bubblewrap, False means no network at all, not even the host's loopback
    stdin: bytes = b""


@dataclass(frozen=True, slots=True)
class ScriptResult:
    # The script's exit status; 128+N when a signal N ended it; None when the timeout killed it.
    exit_code: int | None
    timed_out: bool
    output: bytes  # stdout and stderr as one stream; past max_output_bytes, head + marker line + tail
    duration: float


class Sandbox:
    """Runs scripts under bubblewrap if it works here, else as plain processes; safe for concurrent runs."""

    def __init__(
        self,
        *,
        bwrap: str | None | Literal[_Auto.AUTO] = AUTO,
        require: bool = False,
        max_output_bytes: int = 1 << 20,
        hidden_paths: Iterable[Path] = (),
        run_as: tuple[int, int] | None = None,
    ) -> None:
        """``bwrap``: AUTO finds it on PATH; None never sandboxes. A bwrap is probed once per process (one
        short blocking run, at start-up); ``require`` raises ``SandboxUnavailable`` when it does not work.

        ``hidden_paths`` (directories or files) are replaced by an empty tmpfs or by /dev/null inside the
        sandbox; without bubblewrap nothing can be hidden.

        ``run_as`` (uid, gid): a manager running as root drops to this user (with ``setpriv``) before
        starting the sandbox or the script, so the script cannot read what only root may read. The job's
        working directory must then be reachable and writable by that user.
        """
        if max_output_bytes < 0:
            raise ValueError("max_output_bytes must be >= 0")
        self._max_output = max_output_bytes
        self._bwrap: Bwrap | None = None
        self._drop: tuple[str, ...] = ()
        if run_as is not None:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                log.warning("setpriv is not installed: scripts keep the manager's user")
            else:
                uid, gid = run_as
                self._drop = (setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--")
        reason = "disabled"
        if bwrap is not None:
            path = shutil.which("bwrap") if bwrap is AUTO else bwrap
            if path is None:
                reason = "bwrap is not installed"
            else:
                probed = probe(path, self._drop)
                if isinstance(probed, Bwrap):
                    self._bwrap = probed
                else:
                    reason = probed
        if self._bwrap is None:
            if require:
                raise SandboxUnavailable(f"bubblewrap is required but unusable: {reason}")
            if bwrap is not None:
                log.warning("Scripts run without a sandbox: %s", reason)
        hidden = [path for path in hidden_paths if needs_hiding(path, dropped=bool(self._drop))]
        self._hidden = hide_flags(hidden)

    @property
    def sandboxed(self) -> bool:
        return self._bwrap is not None

    @property
    def runs_as(self) -> tuple[int, int] | None:
        """The (uid, gid) scripts run as when the manager drops privileges for them, else None."""
        if not self._drop:
            return None
        uid = int(self._drop[1].partition("=")[2])
        gid = int(self._drop[2].partition("=")[2])
        return uid, gid

    def job_path(self, workdir: Path, host_path: Path) -> str:
        """The path the script sees for ``host_path``, which must be ``workdir`` or lie under it."""
        relative = host_path.absolute().relative_to(workdir.absolute())
        return str((workdir.absolute() if self._bwrap is None else JOB_DIR) / relative)

    async def run(self, run: ScriptRun) -> ScriptResult:
        env = _script_env(run.env)
        command = _shell_command(self.job_path(run.workdir, run.workdir / run.script), run.memory_bytes)
        read_fd, write_fd = os.pipe()
        reader = os.fdopen(read_fd, "rb", buffering=0)
        args_fd: int | None = None
        try:
            if self._bwrap is None:
                program, argv = command[0], command[1:]
                cwd: Path | None = run.workdir
                child_env = env
            else:
                # Options go through a memfd (--args) so that the environment is not on the world-readable
                # command line of the bwrap process for as long as the job runs.
                args_fd = os.memfd_create("oscar-bwrap-args", os.MFD_CLOEXEC)
                _write_all(args_fd, b"".join(os.fsencode(arg) + b"\0" for arg in self._bwrap_args(run, env)))
                os.lseek(args_fd, 0, os.SEEK_SET)
                program, argv = self._bwrap.path, ["--args", str(args_fd), "--", *command]
                cwd, child_env = None, {}
            if self._drop:
                program, argv = self._drop[0], [*self._drop[1:], program, *argv]
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                program,
                *argv,
                stdin=asyncio.subprocess.PIPE if run.stdin else asyncio.subprocess.DEVNULL,
                stdout=write_fd,
                stderr=write_fd,
                cwd=cwd,
                env=child_env,
                start_new_session=True,
                pass_fds=() if args_fd is None else (args_fd,),
            )
        except BaseException:
            reader.close()
            raise
        finally:
            os.close(write_fd)
            if args_fd is not None:
                os.close(args_fd)
        return await self._supervise(proc, run=run, reader=reader, started=started)

    async def _supervise(
        self, proc: asyncio.subprocess.Process, *, run: ScriptRun, reader: BinaryIO, started: float
    ) -> ScriptResult:
        loop = asyncio.get_running_loop()
        output = _Output(self._max_output, loop.create_future())
        transport: asyncio.BaseTransport | None = None
        feeder: asyncio.Task[None] | None = None
        timed_out = False
        try:
            transport, _ = await loop.connect_read_pipe(lambda: output, reader)
            if proc.stdin is not None:
                feeder = asyncio.create_task(_feed(proc.stdin, run.stdin))
            try:
                async with asyncio.timeout(run.timeout):
                    await proc.wait()
            except TimeoutError:
                timed_out = True
                await self._stop(proc)
            if self._bwrap is None:
                # Like a container whose main process ends, whatever the script left running goes too
                # (bubblewrap's pid namespace does that by itself). The group id cannot have been reused
                # while any of its members is left.
                _kill_group(proc.pid, signal.SIGKILL)
            duration = time.monotonic() - started
            await asyncio.wait([output.closed], timeout=DRAIN_SECONDS)
        finally:
            if proc.returncode is None:
                _kill_group(proc.pid, signal.SIGKILL)
                await asyncio.shield(proc.wait())
            if transport is None:
                reader.close()
            else:
                transport.close()
            if feeder is not None:
                feeder.cancel()
                await asyncio.gather(feeder, return_exceptions=True)
        code = proc.returncode
        exit_code = None if timed_out or code is None else (128 - code if code < 0 else code)
        return ScriptResult(
            exit_code=exit_code, timed_out=timed_out, output=output.result(), duration=duration
        )

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM to the script's process group, a grace period, then SIGKILL."""
        group = proc.pid
        if self._bwrap is not None:
            # The script runs in the session of bwrap's child (pid 1 of the sandbox); a signal to bwrap
            # itself would kill the sandbox at once, with no grace.
            group = _first_child(proc.pid) or proc.pid
        _kill_group(group, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(KILL_GRACE_SECONDS):
                await proc.wait()
        # With bubblewrap this kills bwrap, whose death (--die-with-parent) kills the whole sandbox.
        _kill_group(proc.pid, signal.SIGKILL)
        await proc.wait()

    def _bwrap_args(self, run: ScriptRun, env: Mapping[str, str]) -> list[str]:
        assert self._bwrap is not None
        args = sandbox_flags(
            workdir=run.workdir.absolute(),
            extra=self._bwrap.extra_flags,
            network=run.network,
            hidden=self._hidden,
        )
        for key, value in env.items():
            args += ["--setenv", key, value]
        return args


def _script_env(env: Mapping[str, str]) -> dict[str, str]:
    result = dict(env)
    for key, value in result.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise ValueError(f"invalid environment variable for the script: {key!r}")
    result.setdefault("PATH", os.environ.get("PATH", os.defpath))
    return result


def _shell_command(script: str, memory_bytes: int | None) -> list[str]:
    if memory_bytes is None:
        return [SHELL, script]
    # The limit is set by the shell in the child, then the script runs exactly as with `sh script`. No
    # preexec_fn: it would run Python in a fork of the threaded manager (unsafe) and rule out vfork.
    # A failing ulimit means a stricter hard limit is already in place, or an OS without RLIMIT_AS.
    kib = max(memory_bytes // 1024, 1)
    return [SHELL, "-c", f'ulimit -v {kib} 2>/dev/null; exec {SHELL} "$0"', script]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _first_child(pid: int) -> int | None:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _feed(stdin: asyncio.StreamWriter, data: bytes) -> None:
    try:
        stdin.write(data)
        await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the script did not read all of its input: that is its business
    finally:
        stdin.close()


class _Output(asyncio.Protocol):
    """The script's combined output: the first half of the budget and a rolling tail of the second half."""

    def __init__(self, limit: int, closed: asyncio.Future[None]) -> None:
        self.closed = closed
        self._head = bytearray()
        self._head_limit = limit // 2
        self._tail: deque[bytes] = deque()
        self._tail_size = 0
        self._tail_limit = limit - self._head_limit
        self._total = 0

    def data_received(self, data: bytes) -> None:
        self._total += len(data)
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if not data:
            return
        self._tail.append(data)
        self._tail_size += len(data)
        while self._tail_size - len(self._tail[0]) >= self._tail_limit:
            self._tail_size -= len(self._tail.popleft())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def result(self) -> bytes:
        tail = b"".join(self._tail)
        if self._total <= self._head_limit + self._tail_limit:
            return bytes(self._head) + tail
        tail = tail[max(len(tail) - self._tail_limit, 0) :]
        omitted = self._total - len(self._head) - len(tail)
        marker = f"\n[oscar-manager: {omitted} bytes of output omitted]\n".encode()
        return bytes(self._head) + marker + tail
