"""A manager running as root runs scripts as an unprivileged user, sandboxed or not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from oscar_manager.backends.sandbox import Sandbox, ScriptRun
from oscar_manager.local_runtime import shared_work_root, unprivileged_user
from tests.support.factories import make_settings

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges only applies to a root manager"),
]

PROBE = (
    "id -u; cat /etc/shadow >/dev/null 2>&1 && echo shadow-readable || echo shadow-denied\n"
    "echo x > output/o\n"
)


def workdir(tmp_path: Path) -> Path:
    root = shared_work_root(make_settings(database_url="sqlite://", data_dir=tmp_path / "data")) / "probe"
    (root / "output").mkdir(parents=True)
    (root / "script.sh").write_text(PROBE)
    for path in (root, root / "output"):
        os.chown(path, *unprivileged_user())
    return root


@pytest.mark.parametrize("bwrap", ["auto", None], ids=["bubblewrap", "plain"])
async def test_scripts_run_as_nobody(tmp_path: Path, bwrap: str | None) -> None:
    if bwrap is None:
        sandbox = Sandbox(bwrap=None, run_as=unprivileged_user(), allow_unsandboxed=True)
    else:
        sandbox = Sandbox(require=True, run_as=unprivileged_user())
    assert sandbox.runs_as == unprivileged_user()
    root = workdir(tmp_path)
    result = await sandbox.run(
        ScriptRun(workdir=root, script="script.sh", env={}, timeout=10, memory_bytes=None)
    )
    lines = result.output.decode().split()
    assert result.exit_code == 0, result.output
    assert lines == [str(unprivileged_user()[0]), "shadow-denied"]
    assert (root / "output" / "o").stat().st_uid == unprivileged_user()[0]


async def test_without_run_as_the_script_keeps_root(tmp_path: Path) -> None:
    root = workdir(tmp_path)
    result = await Sandbox(bwrap=None, allow_unsandboxed=True).run(
        ScriptRun(workdir=root, script="script.sh", env={}, timeout=10, memory_bytes=None)
    )
    assert result.output.decode().split() == ["0", "shadow-readable"]
