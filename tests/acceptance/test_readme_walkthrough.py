"""The README's walkthrough, run verbatim against ``oscar-manager serve`` on the embedded default."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.server import RunningServer

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[2]


def walkthrough() -> str:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- walkthrough:begin -->\n```sh\n(.*?)```\n<!-- walkthrough:end -->", readme, re.S)
    assert block, "README.md has no walkthrough block"
    return block.group(1)


def test_readme_walkthrough_runs_verbatim(server: RunningServer) -> None:
    (server.workdir / "examples").symlink_to(REPO / "examples")
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", walkthrough()],
        cwd=server.workdir,
        env={**os.environ, "OSCAR": server.url},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    out = result.stdout
    assert out.startswith("Ok\n201\n")
    assert out.count("HELLO OSCAR") >= 3  # the output object, the dropped file's output, the presigned URL
    assert "SYNC CALL" in out
    assert '"status":"Succeeded"' in out
    assert "upper-casing notes.txt" in out  # the job log
    assert re.search(r"^[0-9a-f]{64}$", out, re.M)  # the pipeline's checksum of the word count
    assert "\n4" in out
    # oscar-cli's way of editing: the S3 face for its file commands, a duplicate refused in words, the PUT
    # of the whole definition with cluster credentials that are kept but never shown.
    assert re.search(r"^http://127\.0\.0\.1:\d+$", out, re.M)
    assert re.search(r"^a service named 'uppercase' already exists 409$", out, re.M), out
    assert "\n204\n512Mi ''\n" in out
    assert out.rstrip().endswith("204")
