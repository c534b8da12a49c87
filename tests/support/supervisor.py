"""The supervisor as a program: the Python entry point, or the self-contained executable that
``scripts/build-supervisor`` builds, run in a root filesystem holding nothing but a static busybox.

That root is the smallest image a user may bring (``/bin/sh`` and nothing else: no Python, no C library,
no dynamic loader). It is laid out as a Job's container is (``oscar_manager/backends/manifests.py``): the
executable at ``/oscar/bin/supervisor``, the service's files under ``/oscar/config``, the MinIO credentials
under ``/var/run/secrets/providers/minio.default``. bubblewrap makes it the whole file system of the run:
nothing of the host is mounted but a fresh ``/proc`` and a minimal ``/dev``; the network is the host's, so
the supervisor reaches S3 servers on loopback.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from oscar_manager.backends import manifests
from oscar_manager.domain.events import ObjectEvent, notification
from oscar_manager.storage.base import ObjectInfo

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build-supervisor"
SUPERVISOR = f"{manifests.SUPERVISOR_DIR}/supervisor"
CONFIG_FILE = f"{manifests.CONFIG_DIR}/function_config.yaml"
SCRIPT_FILE = f"{manifests.CONFIG_DIR}/script.sh"
ACCESS_KEY_FILE = f"{manifests.CREDENTIALS_DIR}/accessKey"
SECRET_KEY_FILE = f"{manifests.CREDENTIALS_DIR}/secretKey"

UPPER = 'tr a-z A-Z < "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/$(basename "$INPUT_FILE_PATH")"\necho done\n'

# (event on stdin, extra environment) -> the finished process.
Runner = Callable[[bytes, Mapping[str, str]], "subprocess.CompletedProcess[bytes]"]


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def definition(**fields: Any) -> dict[str, Any]:
    """A service definition as the supervisor reads it (the script comes on its own)."""
    return {"name": "svc", "image": "img", "script": "", "log_level": "INFO", **fields}


def config(**fields: Any) -> str:
    """The definition as ``FUNCTION_CONFIG`` carries it: base64 YAML."""
    return b64(yaml.safe_dump(definition(**fields)))


def s3_definition(endpoint: str, bucket: str, **provider: Any) -> dict[str, Any]:
    """A service whose input is ``<bucket>/in`` and output ``<bucket>/out`` on ``minio.default`` at
    ``endpoint``; ``provider`` adds to its storage_providers entry (keys, when not mounted as files)."""
    entry = {"endpoint": endpoint, "region": "us-east-1", "verify": False, **provider}
    return definition(
        input=[{"storage_provider": "minio.default", "path": f"{bucket}/in"}],
        output=[{"storage_provider": "minio.default", "path": f"{bucket}/out"}],
        storage_providers={"minio": {"default": entry}},
    )


def storage_event(info: ObjectInfo) -> bytes:
    """The notification MinIO would send for the upload ``info``."""
    event = ObjectEvent(bucket=info.bucket, key=info.key, etag=info.etag, size=info.size, event_time="t")
    return json.dumps(notification(event)).encode()


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


def run_python(event: bytes, env: Mapping[str, str]) -> subprocess.CompletedProcess[bytes]:
    """``python -m oscar_manager.supervisor`` with this test process's environment plus ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in ("EVENT", "FUNCTION_CONFIG", "SCRIPT")}
    return subprocess.run(
        [sys.executable, "-m", "oscar_manager.supervisor"],
        input=event,
        env={**base, **env},
        capture_output=True,
        timeout=60,
        check=False,
    )


def build_executable() -> Path:
    """The executable, built by the same script as the image's (a no-op when its inputs are unchanged)."""
    done = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{BUILD_SCRIPT.name} exited with {done.returncode}: {done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def elf_interpreter(path: Path) -> str | None:
    """The dynamic loader an ELF file asks for (its PT_INTERP), None for a static one. ELF64 LSB only."""
    with path.open("rb") as elf:
        header = elf.read(64)
        if header[:4] != b"\x7fELF" or header[4:6] != b"\x02\x01":
            raise ValueError(f"{path} is not a 64-bit little-endian ELF file")
        (phoff,) = struct.unpack_from("<Q", header, 32)
        phentsize, phnum = struct.unpack_from("<HH", header, 54)
        for index in range(phnum):
            elf.seek(phoff + index * phentsize)
            p_type, _flags, offset, _vaddr, _paddr, size = struct.unpack("<IIQQQQ", elf.read(40))
            if p_type == 3:  # PT_INTERP
                elf.seek(offset)
                return elf.read(size).rstrip(b"\0").decode()
    return None


def static_busybox() -> Path:
    """A statically linked busybox (Debian: busybox-static), else RuntimeError saying what is missing."""
    found = shutil.which("busybox")
    if found is None:
        raise RuntimeError("busybox is not installed (Debian package busybox-static)")
    path = Path(found).resolve()
    if elf_interpreter(path) is not None:
        raise RuntimeError(f"{path} is dynamically linked: install busybox-static")
    return path


def is_elf(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(4) == b"\x7fELF"


@dataclass(frozen=True)
class BusyboxRoot:
    """A root file system with a static busybox, the supervisor executable and what a Job mounts."""

    path: Path
    bwrap: str

    @classmethod
    def create(cls, path: Path, *, busybox: Path, bwrap: str, supervisor: Path | None = None) -> BusyboxRoot:
        (path / "bin").mkdir(parents=True)
        shutil.copy2(busybox, path / "bin" / "busybox")
        applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True)
        for applet in applets.stdout.split():
            if applet != "busybox":
                (path / "bin" / applet).symlink_to("busybox")
        for directory in ("proc", "dev", "etc", "tmp"):
            (path / directory).mkdir()
        (path / "tmp").chmod(0o1777)
        root = cls(path, bwrap)
        if supervisor is not None:
            # Copied, as the init container does (a link would let a run change the cached build).
            root.write(SUPERVISOR, supervisor.read_bytes(), mode=0o755)
        return root

    def host_path(self, path: str) -> Path:
        return self.path / path.lstrip("/")

    def write(self, path: str, content: str | bytes, *, mode: int = 0o644) -> None:
        target = self.host_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.encode() if isinstance(content, str) else content)
        target.chmod(mode)

    def command(self, *argv: str) -> list[str]:
        return [
            self.bwrap,
            "--bind", str(self.path), "/",
            "--proc", "/proc",
            "--dev", "/dev",
            "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--die-with-parent",
            "--chdir", "/",
            *argv,
        ]  # fmt: skip

    def execute(
        self,
        argv: list[str],
        *,
        stdin: bytes = b"",
        env: Mapping[str, str] | None = None,
        merge_output: bool = False,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` inside the root with only ``PATH=/bin`` plus ``env`` (no host environment);
        ``merge_output``: standard error into standard output, as a container runtime keeps a pod's log."""
        return subprocess.run(
            self.command(*argv),
            input=stdin,
            env={"PATH": "/bin", **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_output else subprocess.PIPE,
            timeout=120,
            check=False,
        )

    def run(
        self, event: bytes, env: Mapping[str, str], *, merge_output: bool = False
    ) -> subprocess.CompletedProcess[bytes]:
        """The supervisor, started as a Job's container starts it."""
        return self.execute([SUPERVISOR], stdin=event, env=env, merge_output=merge_output)
