"""A job's private working directory: the script, its input folder and its output folder."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

SCRIPT_NAME = "script.sh"


@dataclass(frozen=True, slots=True)
class Workspace:
    root: Path

    @property
    def input_dir(self) -> Path:
        return self.root / "input"

    @property
    def output_dir(self) -> Path:
        return self.root / "output"

    @property
    def script(self) -> Path:
        return self.root / SCRIPT_NAME

    @classmethod
    def create(cls, parent: Path | None = None, *, prefix: str = "job-") -> Workspace:
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        workspace = cls(root)
        workspace.input_dir.mkdir()
        workspace.output_dir.mkdir()
        return workspace

    def write_script(self, script: str) -> None:
        self.script.write_text(script)

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
