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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from oscar_manager.backends.base import BackendUnavailable
from oscar_manager.backends.bwrap import (
    INFO_SECONDS,
    JOB_DIR,
    SHELL,
    Bwrap,
    child_pid,
    hide_flags,
    needs_hiding,
    probe,
    sandbox_flags,
    tmpfs_sizes,
)
from oscar_manager.backends.cgroups import (
    JOIN_SCRIPT,
    Cgroups,
    CgroupUsage,
    JobCgroup,
    JobLimits,
    host_cgroups,
)
from oscar_manager.backends.processes import first_child, kill_group, write_all
from oscar_manager.backends.sandbox_shell import script_env, shell_command
from oscar_manager.backends.script import ScriptResult, ScriptRun
from oscar_manager.backends.supervision import supervise
from oscar_manager.errors import OscarError

__all__ = [
    "JOB_DIR",
    "Sandbox",
    "SandboxRefused",
    "SandboxUnavailable",
    "ScriptResult",
    "ScriptRun",
    "Spawned",
]

log = logging.getLogger(__name__)

# Between SIGTERM and SIGKILL to the script's process group once the timeout expires.
KILL_GRACE_SECONDS: Final = 1.0


async def _create_cgroup(cgroups: Cgroups, limits: JobLimits) -> JobCgroup:
    """A job cgroup made in a worker thread. Cancelled meanwhile (a client gone, the manager stopping), the
    thread still makes it: it is removed as soon as it exists instead of staying for the manager's life."""
    creating = asyncio.ensure_future(asyncio.to_thread(cgroups.create, limits))
    try:
        return await asyncio.shield(creating)
    except asyncio.CancelledError:
        creating.add_done_callback(_discard_cgroup)
        raise


def _discard_cgroup(created: asyncio.Future[JobCgroup]) -> None:
    if not created.cancelled() and created.exception() is None:
        asyncio.get_running_loop().run_in_executor(None, created.result().finish)


@dataclass(frozen=True, slots=True)
class Spawned:
    """A script started by :meth:`Sandbox.spawn`, still to be ended by :meth:`Sandbox.terminate`."""

    process: asyncio.subprocess.Process
    group: JobCgroup | None  # its cgroup, None without cgroups
    started: float  # time.monotonic() at its start
    inside_pid: int | None = None  # the sandbox's first process, when asked for and under bubblewrap


class SandboxUnavailable(OscarError):
    """bubblewrap was required but cannot run here."""


class SandboxRefused(BackendUnavailable):
    """No working bubblewrap and no opt-in to run scripts without it."""


class _Auto(enum.Enum):
    AUTO = "auto"


AUTO: Final = _Auto.AUTO


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
        cgroups: Cgroups | None | Literal[_Auto.AUTO] = AUTO,
        allow_unsandboxed: bool = False,
    ) -> None:
        """``bwrap``: AUTO finds it on PATH; None never sandboxes. A bwrap is probed once per process (one
        short blocking run, at start-up); ``require`` raises ``SandboxUnavailable`` when it does not work.

        ``hidden_paths`` (directories or files) are replaced by an empty tmpfs or by /dev/null inside the
        sandbox; without bubblewrap nothing can be hidden.

        ``run_as`` (uid, gid): a manager running as root drops to this user (with ``setpriv``) before
        starting the sandbox or the script, so the script cannot read what only root may read. The job's
        working directory must then be reachable and writable by that user.

        ``cgroups``: AUTO uses this process's (``host_cgroups``) when it may make them; None never does.
        Without them the memory limit falls back to RLIMIT_AS per process and there is no pids or cpu bound.

        Without a working bubblewrap, scripts are refused (``run`` raises ``SandboxRefused``) unless
        ``allow_unsandboxed``: they would run with the manager's rights or as ``nobody``, next to every
        other job and the data directory.
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
        self._allow_unsandboxed = allow_unsandboxed
        found = host_cgroups() if cgroups is AUTO else cgroups
        self._cgroups = found if found is not None and found.available else None
        self._no_cgroups = found if found is not None else Cgroups({}, unified=False, reason="disabled")
        if cgroups is AUTO and self._cgroups is None:
            log.warning("Jobs run without cgroups, bounded by ulimit only: %s", self._no_cgroups.reason)

    @property
    def refusal(self) -> str | None:
        """Why scripts are refused here, or None when they run."""
        if self._bwrap is not None or self._allow_unsandboxed:
            return None
        return (
            "scripts are refused: bubblewrap (bwrap) is not installed or does not work on this machine, and"
            " running them unsandboxed needs OSCAR_ALLOW_UNSANDBOXED=true"
        )

    def check_allowed(self) -> None:
        refusal = self.refusal
        if refusal is not None:
            raise SandboxRefused(refusal)

    def describe_limits(self) -> str:
        """How jobs are bounded here: the cgroup version and controllers, or the ulimit fallback and why."""
        return (self._cgroups or self._no_cgroups).describe()

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
        self.check_allowed()
        read_fd, write_fd = os.pipe()
        reader = os.fdopen(read_fd, "rb", buffering=0)
        try:
            stdin = asyncio.subprocess.PIPE if run.stdin else asyncio.subprocess.DEVNULL
            spawned = await self.spawn(run, stdin=stdin, output=write_fd)
        except BaseException:
            reader.close()
            raise
        finally:
            os.close(write_fd)
        return await supervise(
            spawned.process,
            run=run,
            reader=reader,
            started=spawned.started,
            group=spawned.group,
            max_output=self._max_output,
            stop=self._stop,
            sandboxed=self._bwrap is not None,
        )

    async def spawn(
        self, run: ScriptRun, *, stdin: int, output: int, inside_pid: bool = False, gated: bool = False
    ) -> Spawned:
        """Start ``run``'s script in the sandbox and its cgroup, and return at once (``run.timeout`` is the
        caller's to apply). ``stdin``: a descriptor, or asyncio's PIPE or DEVNULL; ``output``: where its
        stdout and stderr go. ``inside_pid``: learn the pid of the sandbox's first process (whose
        namespaces are the sandbox's), from bubblewrap's ``--info-fd``. ``gated``: the sandbox is made
        but the script waits for a line on stdin (see ``shell_command``). End it with :meth:`terminate`."""
        self.check_allowed()
        if run.image is not None and self._bwrap is None:
            raise SandboxRefused("service images run only under bubblewrap, which does not work here")
        env = script_env(run.env)
        group = None
        if self._cgroups is not None:
            limits = JobLimits(memory_bytes=run.memory_bytes, cpu_cores=run.cpu_cores, max_pids=run.max_pids)
            group = await _create_cgroup(self._cgroups, limits)
        command = shell_command(
            self.job_path(run.workdir, run.workdir / run.script),
            memory_bytes=run.memory_bytes if group is None else None,
            file_bytes=run.disk_bytes,
            gated=gated,
        )
        args_fd: int | None = None
        info_read: int | None = None  # bubblewrap's --info-fd, when inside_pid
        info_write: int | None = None
        try:
            if self._bwrap is None:
                program, argv = command[0], command[1:]
                cwd: Path | None = run.workdir
                child_env = env
            else:
                # Options go through a memfd (--args) so that the environment is not on the world-readable
                # command line of the bwrap process for as long as the job runs.
                args_fd = os.memfd_create("oscar-bwrap-args", os.MFD_CLOEXEC)
                write_all(args_fd, b"".join(os.fsencode(arg) + b"\0" for arg in self._bwrap_args(run, env)))
                os.lseek(args_fd, 0, os.SEEK_SET)
                program, argv = self._bwrap.path, ["--args", str(args_fd), "--", *command]
                if inside_pid:
                    info_read, info_write = os.pipe()
                    argv[2:2] = ["--info-fd", str(info_write)]
                cwd, child_env = None, {}
            if self._drop:
                program, argv = self._drop[0], [*self._drop[1:], program, *argv]
            if group is not None:
                program, argv = (
                    SHELL,
                    ["-c", JOIN_SCRIPT, "oscar-cgroup", *group.procs_files, "--", program, *argv],
                )
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                program,
                *argv,
                stdin=stdin,
                stdout=output,
                stderr=output,
                cwd=cwd,
                env=child_env,
                start_new_session=True,
                pass_fds=tuple(fd for fd in (args_fd, info_write) if fd is not None),
            )
        except BaseException:
            if group is not None:
                await asyncio.shield(asyncio.to_thread(group.finish))
            if info_read is not None:
                os.close(info_read)
            raise
        finally:
            for fd in (args_fd, info_write):
                if fd is not None:
                    os.close(fd)
        pid = None if info_read is None else await child_pid(info_read, within=INFO_SECONDS)
        return Spawned(process=proc, group=group, started=started, inside_pid=pid)

    def host_command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as the scripts' user (the manager's own when it drops no privileges), on the host."""
        return [*self._drop, *argv]

    async def terminate(self, spawned: Spawned, *, grace: float = KILL_GRACE_SECONDS) -> CgroupUsage | None:
        """SIGTERM to what :meth:`spawn` started, ``grace`` seconds, then SIGKILL to all of it; its cgroup
        removed. Safe to call on a process that has ended (then only what it left is killed)."""
        proc = spawned.process
        if proc.returncode is None:
            await self._stop(proc, grace=grace)
        if self._bwrap is None:
            kill_group(proc.pid, signal.SIGKILL)  # what the script left running, as in ``supervise``
        if spawned.group is None:
            return None
        return await asyncio.shield(asyncio.to_thread(spawned.group.finish))

    async def _stop(self, proc: asyncio.subprocess.Process, *, grace: float = KILL_GRACE_SECONDS) -> None:
        """SIGTERM to the script's process group, a grace period, then SIGKILL."""
        group = proc.pid
        if self._bwrap is not None:
            # The script runs in the session of bwrap's child (pid 1 of the sandbox); a signal to bwrap
            # itself would kill the sandbox at once, with no grace.
            group = first_child(proc.pid) or proc.pid
        kill_group(group, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await proc.wait()
        # With bubblewrap this kills bwrap, whose death (--die-with-parent) kills the whole sandbox.
        kill_group(proc.pid, signal.SIGKILL)
        await proc.wait()

    def _bwrap_args(self, run: ScriptRun, env: Mapping[str, str]) -> list[str]:
        assert self._bwrap is not None
        args = sandbox_flags(
            workdir=run.workdir.absolute(),
            extra=self._bwrap.extra_flags,
            network=run.network,
            hidden=self._hidden,
            sizes=tmpfs_sizes(run.memory_bytes) if self._bwrap.sized else None,
            image=run.image,
        )
        for key, value in env.items():
            args += ["--setenv", key, value]
        return args
