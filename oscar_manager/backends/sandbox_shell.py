"""What the sandbox runs a script with: its environment checked, and the shell that sets its limits."""

from __future__ import annotations

import os
from collections.abc import Mapping

from oscar_manager.backends.bwrap import SHELL


def script_env(env: Mapping[str, str]) -> dict[str, str]:
    result = dict(env)
    for key, value in result.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise ValueError(f"invalid environment variable for the script: {key!r}")
    result.setdefault("PATH", os.environ.get("PATH", os.defpath))
    return result


def shell_command(
    script: str, *, memory_bytes: int | None, file_bytes: int | None, gated: bool = False
) -> list[str]:
    """``gated``: the script starts once a line is read on stdin (not at all if stdin ends first), and
    then runs with /dev/null as its stdin."""
    # Limits are set by the shell in the child, then the script runs exactly as with `sh script`. No
    # preexec_fn: it would run Python in a fork of the threaded manager (unsafe) and rule out vfork.
    # A failing ulimit means a stricter hard limit is already in place, or an OS without that limit.
    # umask 022: the script's files as before, whatever umask keeps the manager's data directory private.
    steps = ["umask 022"]
    if file_bytes is not None:
        steps.append(f"ulimit -f {max(file_bytes // 512, 1)} 2>/dev/null")  # POSIX sh: 512-byte blocks
    if memory_bytes is not None:
        steps.append(f"ulimit -v {max(memory_bytes // 1024, 1)} 2>/dev/null")
    if gated:
        steps += ["read -r _ || exit 125", f'exec {SHELL} "$0" </dev/null']
    else:
        steps.append(f'exec {SHELL} "$0"')
    return [SHELL, "-c", "; ".join(steps), script]
