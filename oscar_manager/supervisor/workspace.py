"""A job's private working directory: the script, its input folder and its output folder.

The script may rename, replace or link anything in it (it owns the folder: it writes its cwd and $HOME,
which is the job root), while the supervisor reads and writes it with more rights than the script has (the
manager's, or the provider credentials of a pod). So the supervisor never resolves a path through the
workspace once it is made: it holds descriptors on the root, input and output folders, opened without
following links before the script can run, and reaches everything below them one ``openat`` at a time
(``supervisor/outputs.py``). The paths remain for what the script is told (``TMP_OUTPUT_DIR``, ...).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

from oscar_manager.storage.nofollow import DIR_FLAGS

SCRIPT_NAME = "script.sh"
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Workspace:
    """Made by :meth:`create`; :meth:`cleanup` removes it and closes its descriptors."""

    def __init__(self, root: Path, *, root_fd: int, input_fd: int, output_fd: int) -> None:
        self.root = root
        self.root_fd = root_fd
        self.input_fd = input_fd
        self.output_fd = output_fd

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
        fds: list[int] = []
        try:
            fds.append(os.open(root, DIR_FLAGS))
            for name in ("input", "output"):
                os.mkdir(name, dir_fd=fds[0])
                fds.append(os.open(name, DIR_FLAGS, dir_fd=fds[0]))
        except BaseException:
            for fd in fds:
                os.close(fd)
            shutil.rmtree(root, ignore_errors=True)
            raise
        return cls(root, root_fd=fds[0], input_fd=fds[1], output_fd=fds[2])

    def chown(self, uid: int, gid: int) -> None:
        """Give the three folders to the user the script runs as (through the held descriptors)."""
        for fd in (self.root_fd, self.input_fd, self.output_fd):
            os.fchown(fd, uid, gid)

    def write_script(self, script: str) -> None:
        fd = os.open(SCRIPT_NAME, _NEW_FILE_FLAGS, 0o644, dir_fd=self.root_fd)
        with os.fdopen(fd, "w") as out:
            out.write(script)

    def create_input(self, name: str) -> int:
        """A new file in the input folder, open for writing (a name that exists already is refused)."""
        return os.open(name, _NEW_FILE_FLAGS, 0o644, dir_fd=self.input_fd)

    def cleanup(self) -> None:
        """Remove everything below the held root descriptor, then the root itself. Only after the script
        and all it started are gone (``shutil.rmtree`` with ``dir_fd`` does not follow links either)."""
        if self.root_fd < 0:
            return
        with contextlib.suppress(OSError), os.scandir(self.root_fd) as entries:
            names = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
            for name, is_dir in names:
                with contextlib.suppress(OSError):
                    if is_dir:
                        shutil.rmtree(name, dir_fd=self.root_fd)
                    else:
                        os.unlink(name, dir_fd=self.root_fd)
        for fd in (self.input_fd, self.output_fd, self.root_fd):
            os.close(fd)
        self.root_fd = self.input_fd = self.output_fd = -1
        # By path: what is there now may be a link or a folder the script put in its place (in a pod, the
        # script may rename its job folder); rmdir removes neither a link nor a folder that is not empty.
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(os.lstat(self.root).st_mode):
                os.rmdir(self.root)
