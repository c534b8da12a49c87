"""What the sandbox is asked to run, with the job's bounds, and what came of it."""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from oscar_manager.backends.cgroups import CgroupUsage
from oscar_manager.domain.logtimes import LineTimes


@dataclass(frozen=True, slots=True)
class ImageRoot:
    """The service's image for a run: its unpacked root becomes the sandbox's read-only ``/``."""

    root: Path  # on the host; a path only the manager can change (see ``backends.images``)
    working_dir: str = ""  # the image's WorkingDir; empty: the job's folder
    # Who the script appears to be inside (the image's User, root by default); it needs a user
    # namespace, and on the host the script keeps the sandbox's unprivileged user either way.
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True, slots=True)
class ScriptRun:
    workdir: Path  # the job's directory, made by the caller; the script's working directory
    script: str  # file name of the script in ``workdir``, run with /bin/sh
    env: Mapping[str, str]  # the script's whole environment (PATH is the manager's if not given)
    timeout: float | None  # seconds, then SIGTERM, a grace period and SIGKILL to everything it started
    # Memory of the job's cgroup (and the size of its tmpfs); without cgroups, each process's RLIMIT_AS.
    memory_bytes: int | None
    network: bool = False  # under bubblewrap, False means no network at all, not even the host's loopback
    stdin: bytes = b""
    cpu_cores: float | None = None  # the cgroup's CFS quota
    max_pids: int | None = None  # processes and threads in the cgroup at once
    disk_bytes: int | None = None  # the job folder's disk use, and RLIMIT_FSIZE
    image: ImageRoot | None = None  # None: the host's tools (its root read-only)


@dataclass(frozen=True, slots=True)
class ScriptResult:
    # The script's exit status; 128+N when a signal N ended it; None when the timeout killed it.
    exit_code: int | None
    timed_out: bool
    output: bytes  # stdout and stderr as one stream; past max_output_bytes, head + marker line + tail
    duration: float
    usage: CgroupUsage | None = None  # what the job's cgroup counted; None without cgroups
    over_disk: bool = False  # killed because the job folder went over ``disk_bytes``
    output_times: LineTimes = ()  # when each line of ``output`` was read

    def bounds_hit(self, run: ScriptRun) -> list[str]:
        """Why the job was stopped by one of its bounds, as sentences for its log (empty if it was not)."""
        reasons = []
        if self.usage is not None and self.usage.oom_kills:
            reasons.append(
                f"Out of memory: the kernel killed {self.usage.oom_kills} process(es) of the job at its"
                f" memory limit of {run.memory_bytes} bytes"
            )
        if self.over_disk:
            reasons.append(f"The job's folder went over its disk bound of {run.disk_bytes} bytes: job killed")
        elif self.exit_code == 128 + signal.SIGXFSZ:
            reasons.append(f"A file reached the job's disk bound of {run.disk_bytes} bytes (SIGXFSZ)")
        return reasons
