"""Each local job in a cgroup of its own: memory, process count and cpu bounded, everything killed at the end.

cgroup v2 is used where the unified hierarchy delegates the memory and pids controllers to the manager's
cgroup; else cgroup v1, one hierarchy per controller (memory, pids, cpu, and cpuacct and freezer for
accounting and a clean kill). The manager writes only below a parent of its own in each hierarchy,
``<its current cgroup>/oscar-manager-<pid>/job-<n>``, and removes the parents of managers that are gone.

The script joins its cgroup from its first instruction: a tiny shell (run by the manager's user, before
privileges are dropped and bubblewrap starts) writes its own pid into each ``cgroup.procs`` and execs the
rest, so no ``preexec_fn`` runs in a fork of the threaded manager.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

V1_CONTROLLERS: Final = ("memory", "pids", "cpu", "cpuacct", "freezer")
CFS_PERIOD_US: Final = 100_000
CFS_MIN_QUOTA_US: Final = 1_000  # the kernel's least quota
PARENT_PREFIX: Final = "oscar-manager-"
# The shell that puts itself in the job's cgroups, then becomes the rest of its arguments.
JOIN_SCRIPT: Final = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
# How long to wait for killed processes to leave a cgroup before giving up on removing it.
EMPTY_WAIT_SECONDS: Final = 5.0
# How many times to kill what is left of a job before giving up on it (each followed by that wait).
KILL_ROUNDS: Final = 6


@dataclass(frozen=True, slots=True)
class JobLimits:
    memory_bytes: int | None
    cpu_cores: float | None
    max_pids: int | None


@dataclass(frozen=True, slots=True)
class CgroupUsage:
    """What the kernel counted for a job, read before its cgroup is removed."""

    oom_kills: int
    cpu_seconds: float | None  # cpu time of everything in the cgroup
    throttled_periods: int | None  # CFS periods in which the quota stopped it


class JobCgroup:
    """One job's cgroup directories (one per v1 hierarchy, or one v2 directory)."""

    def __init__(self, dirs: dict[str, Path], *, unified: bool) -> None:
        self.dirs = dirs  # controller (or "unified") -> directory
        self._unified = unified

    @property
    def procs_files(self) -> list[str]:
        return [str(path / "cgroup.procs") for path in self.dirs.values()]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.dirs.values():
            with contextlib.suppress(OSError, ValueError):
                found.update(int(line) for line in (path / "cgroup.procs").read_text().split())
        return found

    def kill(self) -> None:
        """SIGKILL everything in the cgroup (frozen first on v1, so nothing forks while it is killed)."""
        if self._unified:
            kill_file = self.dirs["unified"] / "cgroup.kill"
            if kill_file.exists():
                _write(kill_file, "1")
                return
        freezer = self.dirs.get("freezer")
        if freezer is not None and self.pids():
            _write(freezer / "freezer.state", "FROZEN")
            _wait_for(lambda: _read(freezer / "freezer.state") != "FREEZING", EMPTY_WAIT_SECONDS)
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if freezer is not None:
            _write(freezer / "freezer.state", "THAWED")

    def usage(self) -> CgroupUsage:
        if self._unified:
            path = self.dirs["unified"]
            events = _keyed(path / "memory.events")
            stat = _keyed(path / "cpu.stat")
            usec = stat.get("usage_usec")
            return CgroupUsage(
                oom_kills=events.get("oom_kill", 0),
                cpu_seconds=None if usec is None else usec / 1e6,
                throttled_periods=stat.get("nr_throttled"),
            )
        oom = _keyed(self.dirs["memory"] / "memory.oom_control") if "memory" in self.dirs else {}
        cpu_stat = _keyed(self.dirs["cpu"] / "cpu.stat") if "cpu" in self.dirs else {}
        nanoseconds = _read(self.dirs["cpuacct"] / "cpuacct.usage") if "cpuacct" in self.dirs else ""
        return CgroupUsage(
            oom_kills=oom.get("oom_kill", 0),
            cpu_seconds=int(nanoseconds) / 1e9 if nanoseconds.isdigit() else None,
            throttled_periods=cpu_stat.get("nr_throttled"),
        )

    def finish(self) -> CgroupUsage:
        """Kill what is left, read the counters and remove the cgroup (blocking: call it in a thread)."""
        self.kill()
        usage = self.usage()
        # On a loaded machine killed processes (or a freeze) can take seconds: kill again rather than
        # leave the cgroup behind for the rest of the manager's life.
        for _ in range(KILL_ROUNDS):
            if _wait_for(lambda: not self.pids(), EMPTY_WAIT_SECONDS):
                break
            self.kill()
        else:
            log.error(
                "processes of a job are still in %s after SIGKILL", ", ".join(map(str, self.dirs.values()))
            )
        # The kernel may refuse a cgroup's removal (EBUSY) for a moment after its last process left.
        if not _wait_for(self._remove, EMPTY_WAIT_SECONDS):
            log.error("could not remove the job cgroup %s", ", ".join(map(str, self.dirs.values())))
        return usage

    def _remove(self) -> bool:
        """Try to remove every directory of the cgroup; True once none is left."""
        for path in self.dirs.values():
            with contextlib.suppress(OSError):
                path.rmdir()
        return not any(path.exists() for path in self.dirs.values())


class Cgroups:
    """Where this manager makes its jobs' cgroups; ``available`` is False (with ``reason``) if it cannot."""

    def __init__(self, parents: dict[str, Path], *, unified: bool, reason: str = "") -> None:
        self.parents = parents
        self.unified = unified
        self.reason = reason
        self._names = itertools.count(1)

    @property
    def available(self) -> bool:
        return bool(self.parents)

    def describe(self) -> str:
        if not self.available:
            return f"ulimit (no cgroups: {self.reason})"
        if self.unified:
            return "cgroup v2 (memory, pids, cpu)"
        return f"cgroup v1 ({', '.join(self.parents)})"

    def create(self, limits: JobLimits) -> JobCgroup:
        """A new job cgroup with ``limits``; OSError if the kernel refuses it (nothing is left behind)."""
        name = f"job-{next(self._names)}"
        dirs: dict[str, Path] = {}
        group = JobCgroup(dirs, unified=self.unified)
        try:
            for controller, parent in self.parents.items():
                path = parent / name
                path.mkdir()
                dirs[controller] = path
            if self.unified:
                _limit_v2(dirs["unified"], limits)
            else:
                _limit_v1(dirs, limits)
        except OSError:
            group.finish()
            raise
        return group

    def remove_parents(self) -> None:
        """Remove this manager's (empty) parent cgroups; one still holding a job stays, for the next start
        to clean up."""
        for parent in self.parents.values():
            with contextlib.suppress(OSError):
                parent.rmdir()

    def job_dirs(self) -> list[Path]:
        """The job cgroups that exist now (none once every job has finished)."""
        return sorted(path for parent in self.parents.values() for path in parent.glob("job-*"))


def _limit_v1(dirs: dict[str, Path], limits: JobLimits) -> None:
    memory = dirs.get("memory")
    if memory is not None and limits.memory_bytes is not None:
        _write(memory / "memory.limit_in_bytes", str(limits.memory_bytes))
        swap = memory / "memory.memsw.limit_in_bytes"
        if swap.exists():  # memory plus swap: no swap beyond the memory limit
            _write(swap, str(limits.memory_bytes))
    if "pids" in dirs and limits.max_pids is not None:
        _write(dirs["pids"] / "pids.max", str(limits.max_pids))
    if "cpu" in dirs and limits.cpu_cores is not None:
        _write(dirs["cpu"] / "cpu.cfs_period_us", str(CFS_PERIOD_US))
        _write(dirs["cpu"] / "cpu.cfs_quota_us", str(_quota_us(limits.cpu_cores)))


def _limit_v2(path: Path, limits: JobLimits) -> None:
    if limits.memory_bytes is not None:
        _write(path / "memory.max", str(limits.memory_bytes))
        if (path / "memory.swap.max").exists():
            _write(path / "memory.swap.max", "0")
    if limits.max_pids is not None:
        _write(path / "pids.max", str(limits.max_pids))
    if limits.cpu_cores is not None and (path / "cpu.max").exists():
        _write(path / "cpu.max", f"{_quota_us(limits.cpu_cores)} {CFS_PERIOD_US}")


def _quota_us(cores: float) -> int:
    return max(round(cores * CFS_PERIOD_US), CFS_MIN_QUOTA_US)


@functools.cache
def host_cgroups() -> Cgroups:
    """This process's cgroups, found once (stale parents of managers that are gone are removed then, and
    this process's own when it exits)."""
    found = detect()
    atexit.register(found.remove_parents)
    return found


def detect(proc: Path = Path("/proc/self")) -> Cgroups:
    try:
        own = _own_cgroups(proc / "cgroup")
        mounts = _cgroup_mounts(proc / "mountinfo")
    except OSError as exc:
        return Cgroups({}, unified=False, reason=f"cannot read the process's cgroups: {exc}")
    name = f"{PARENT_PREFIX}{os.getpid()}"
    reasons: list[str] = []
    unified = mounts.get("unified")
    if unified is not None and "" in own:
        base = _below(unified, own[""])
        controllers = _read(base / "cgroup.controllers").split()
        if {"memory", "pids"} <= set(controllers):
            try:
                parent = _make_parent(base, name, "unified")
                wanted = " ".join(f"+{c}" for c in ("memory", "pids", "cpu") if c in controllers)
                _write(parent / "cgroup.subtree_control", wanted)
                return Cgroups({"unified": parent}, unified=True)
            except OSError as exc:
                reasons.append(f"cgroup v2 at {base}: {exc}")
    parents: dict[str, Path] = {}
    for controller in V1_CONTROLLERS:
        mount = mounts.get(controller)
        if mount is None or controller not in own:
            continue
        try:
            parents[controller] = _make_parent(_below(mount, own[controller]), name, controller)
        except OSError as exc:
            reasons.append(f"{controller}: {exc}")
    if "memory" not in parents:
        for controller, path in parents.items():
            _remove_tree(path, controller)
        reasons.append("no writable memory controller")
        return Cgroups({}, unified=False, reason="; ".join(reasons))
    return Cgroups(parents, unified=False)


def _make_parent(base: Path, name: str, controller: str) -> Path:
    _remove_stale(base, controller)
    parent = base / name
    parent.mkdir(exist_ok=True)
    return parent


def _remove_stale(base: Path, controller: str) -> None:
    """The parents left by managers that crashed (their pid is gone), with their jobs killed."""
    with contextlib.suppress(OSError):
        for path in base.glob(f"{PARENT_PREFIX}*"):
            pid = path.name.removeprefix(PARENT_PREFIX)
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                log.warning("removing the cgroup %s left by a manager that is gone", path)
                _remove_tree(path, controller)


def _remove_tree(path: Path, controller: str) -> None:
    for child in [p for p in path.iterdir() if p.is_dir()] if path.is_dir() else []:
        _remove_tree(child, controller)
    JobCgroup({controller: path}, unified=controller == "unified").finish()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _own_cgroups(path: Path) -> dict[str, str]:
    """Controller -> this process's cgroup path ("" for the unified hierarchy)."""
    own: dict[str, str] = {}
    for line in path.read_text().splitlines():
        _, controllers, cgroup = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            own[controller] = cgroup
    return own


@dataclass(frozen=True, slots=True)
class _Mount:
    point: Path
    root: str  # the cgroup path the mount shows at its mount point (not "/" inside a container)


def _cgroup_mounts(path: Path) -> dict[str, _Mount]:
    mounts: dict[str, _Mount] = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        separator = fields.index("-")
        fstype, options = fields[separator + 1], fields[separator + 3].split(",")
        mount = _Mount(Path(_unescape(fields[4])), _unescape(fields[3]))
        if fstype == "cgroup2":
            mounts.setdefault("unified", mount)
        elif fstype == "cgroup":
            for option in options:
                if option in V1_CONTROLLERS:
                    mounts.setdefault(option, mount)
    return mounts


def _below(mount: _Mount, cgroup: str) -> Path:
    relative = os.path.relpath(cgroup, mount.root) if cgroup.startswith(mount.root) else "."
    return mount.point / relative if relative != "." else mount.point


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _keyed(path: Path) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in _read(path).splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            values[key] = int(value)
    return values


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _write(path: Path, value: str) -> None:
    with open(path, "w") as handle:  # one write(2), as cgroup files want
        handle.write(value)


def _wait_for(done: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if done():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
