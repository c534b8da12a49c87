"""bubblewrap's side of the sandbox: the mounts and namespaces a script gets, and the probe that tells
whether this bubblewrap works on this machine (once per process)."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final

from oscar_manager.backends.script import ImageRoot

# Both inside the sandbox only: its private tmpfs /tmp, and the job's working directory under it (mount
# points must exist, and the root is read-only).
SANDBOX_TMP: Final = "/tmp"  # noqa: S108
JOB_DIR: Final = PurePosixPath(SANDBOX_TMP, "job")
HOSTNAME: Final = "oscar-job"
SHELL: Final = "/bin/sh"
PAGE: Final = 4096
MiB: Final = 1 << 20
# bubblewrap writes its --info-fd as soon as the sandbox's first process exists.
INFO_SECONDS: Final = 10.0


@dataclass(frozen=True, slots=True)
class Bwrap:
    path: str
    # Optional hardening flags that work with this bubblewrap on this machine.
    extra_flags: tuple[str, ...]
    sized: bool = False  # takes --size (bubblewrap 0.5 and later): the sandbox's tmpfs are bounded


def tmpfs_sizes(memory_bytes: int | None) -> tuple[int, int, int] | None:
    """Sizes of /tmp, /dev/shm and /run: together under the job's memory (tmpfs pages are RAM, charged to
    the writer's memory cgroup), so a script filling them gets ENOSPC rather than the OOM killer, and
    stays bounded even without a cgroup. At least a page each: size 0 would mean unbounded."""
    if memory_bytes is None:
        return None
    return max(memory_bytes // 2, PAGE), max(memory_bytes // 4, PAGE), max(min(memory_bytes // 8, MiB), PAGE)


def _tmpfs(target: str, size: int | None) -> list[str]:
    return ["--size", str(size), "--tmpfs", target] if size else ["--tmpfs", target]


def sandbox_flags(
    *,
    workdir: Path,
    extra: tuple[str, ...],
    network: bool,
    hidden: list[str],
    sizes: tuple[int, int, int] | None = None,
    image: ImageRoot | None = None,
) -> list[str]:
    """``image``: its root as ``/`` (the host's otherwise), its working directory, and who the script
    appears to be when this bubblewrap makes a user namespace."""
    tmp, shm, run = sizes or (None, None, None)
    root = "/" if image is None else str(image.root)
    flags = ["--unshare-all", *(["--share-net"] if network else []), *extra]
    flags += [
        # Run as root, bwrap would otherwise leave the script every capability in its namespaces (enough
        # to remount / read-write).
        "--cap-drop", "ALL",
        "--die-with-parent",
        "--new-session",
        "--hostname", HOSTNAME,
        "--ro-bind", root, "/",
        "--dev", "/dev",
        # --dev's own /dev (with its /dev/shm folder) is an unbounded tmpfs the script owns: a bounded
        # /dev/shm on top, and /dev itself read-only (device nodes stay usable).
        *_tmpfs("/dev/shm", shm),  # noqa: S108 - inside the sandbox
        "--remount-ro", "/dev",
        "--proc", "/proc",
        # Host daemons' Unix sockets live here, and a read-only mount does not stop connect().
        *_tmpfs("/run", run),
    ]  # fmt: skip
    if network:
        flags.extend(_resolver_binds() if image is None else _image_resolver_binds())
    if image is not None:
        hidden = []  # nothing of the host is visible to hide
        if "--unshare-user" in extra:
            flags += ["--uid", str(image.uid), "--gid", str(image.gid)]
    flags += [*hidden, *_tmpfs(SANDBOX_TMP, tmp), "--bind", str(workdir), str(JOB_DIR)]
    chdir = image.working_dir if image is not None and image.working_dir else str(JOB_DIR)
    flags += ["--chdir", chdir, "--clearenv"]
    return flags


@functools.cache
def _image_resolver_binds() -> tuple[str, ...]:
    # The host's resolver settings on the image's /etc/resolv.conf (made a plain file when unpacked).
    return ("--ro-bind-try", os.path.realpath("/etc/resolv.conf"), "/etc/resolv.conf")


@functools.cache
def _resolver_binds() -> tuple[str, ...]:
    # Where /etc/resolv.conf links into /run (systemd-resolved, resolvconf), the tmpfs on /run would hide it.
    real = os.path.realpath("/etc/resolv.conf")
    return ("--ro-bind-try", real, real) if real.startswith("/run/") else ()


def needs_hiding(path: Path, *, dropped: bool) -> bool:
    """Paths under /tmp are hidden by the sandbox's private /tmp already; a script running as another
    user cannot reach a path below a folder closed to others (and bwrap, running as that user, could not
    mount over it either)."""
    absolute = path.absolute()
    if absolute.is_relative_to(SANDBOX_TMP):
        return False
    if dropped:
        for ancestor in absolute.parents:
            try:
                if not os.stat(ancestor).st_mode & 0o001:
                    return False
            except OSError:
                return False
    return True


def hide_flags(paths: Iterable[Path]) -> list[str]:
    flags: list[str] = []
    for path in paths:
        target = str(path.absolute())
        if path.is_dir():
            # Read-only: an empty mask, not a writable tmpfs that would count against nothing.
            flags += ["--tmpfs", target, "--remount-ro", target]
        elif path.exists():
            flags += ["--ro-bind", "/dev/null", target]
    return flags


@functools.cache
def probe(path: str, drop: tuple[str, ...] = ()) -> Bwrap | str:
    """Run the strictest sandbox once: a Bwrap if it works here, else why not."""
    try:
        usage = subprocess.run([path, "--help"], capture_output=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{path}: {exc}"
    # --disable-userns (bubblewrap 0.8) keeps the script from making user namespaces of its own; where it
    # cannot work (a setuid bwrap without unprivileged user namespaces) the sandbox goes on without it.
    candidates = [("--unshare-user", "--disable-userns"), ()] if b"--disable-userns" in usage else [()]
    sized = b"--size" in usage
    reason = ""
    for extra in candidates:
        reason = _try_bwrap(path, extra, drop, sized=sized)
        if not reason:
            return Bwrap(path=path, extra_flags=extra, sized=sized)
    return reason


def _try_bwrap(path: str, extra: tuple[str, ...], drop: tuple[str, ...], *, sized: bool) -> str:
    try:
        with tempfile.TemporaryDirectory(prefix="oscar-bwrap-probe-") as workdir:
            os.chmod(workdir, 0o755)  # noqa: S103 - reachable by the user scripts run as
            flags = sandbox_flags(
                workdir=Path(workdir),
                extra=extra,
                network=False,
                hidden=[],
                sizes=tmpfs_sizes(64 * MiB) if sized else None,
            )
            done = subprocess.run(
                [*drop, path, *flags, "--", SHELL, "-c", "exit 0"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=30,
                check=False,
            )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{path}: {exc}"
    if done.returncode == 0:
        return ""
    detail = (done.stderr or done.stdout).decode(errors="replace").strip()
    return f"{path} exited with {done.returncode}: {detail}"


async def child_pid(fd: int, *, within: float) -> int | None:
    """The ``child-pid`` of bubblewrap's ``--info-fd`` JSON read from ``fd`` (closed here); None if bwrap
    ended or said nothing within ``within`` seconds. Not passed into the sandbox by bwrap: only bwrap
    writes it."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    data = b""
    try:
        async with asyncio.timeout(within):
            while chunk := await reader.read(4096):
                data += chunk
                try:
                    return int(json.loads(data)["child-pid"])
                except (ValueError, KeyError, TypeError):
                    continue  # not all of it yet
    except TimeoutError:
        pass
    finally:
        transport.close()
    return None
