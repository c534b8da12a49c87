"""A real Registry v2 server on loopback (Debian's ``docker-registry``, the CNCF distribution registry) and
images written by the tests as OCI manifests with tar layers built here, pushed over the registry's API."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import httpx

from tests.support.components import free_port

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
CONFIG = "application/vnd.oci.image.config.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _gzipped(blob: bytes) -> bool:
    return blob[:2] == b"\x1f\x8b"


def diff_id(blob: bytes) -> str:
    """The digest of a layer's uncompressed tar (what a configuration's rootfs.diff_ids lists)."""
    return sha256(gzip.decompress(blob) if _gzipped(blob) else blob)


@dataclass
class Entry:
    """One tar member: a file (``data``), folder, symlink or hard link (``link``), or whiteout file."""

    name: str
    data: bytes | None = None
    kind: str = "file"  # file | dir | symlink | hardlink
    link: str = ""
    mode: int = 0o644


def layer(entries: Iterable[Entry], *, compress: bool = True) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.mode = entry.mode
            info.mtime = 1_700_000_000
            content = None
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = entry.mode if entry.mode != 0o644 else 0o755
            elif entry.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, entry.link
            elif entry.kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, entry.link
            else:
                content = entry.data or b""
                info.size = len(content)
            archive.addfile(info, io.BytesIO(content) if content is not None else None)
    raw = buffer.getvalue()
    return gzip.compress(raw, mtime=0) if compress else raw


def busybox_layer(
    busybox: Path, *, tools: Iterable[str] = ("sh", "cat", "ls", "echo", "id", "pwd", "env")
) -> bytes:
    """A static busybox as /bin/busybox with its applets as links: a whole userland in one file."""
    entries = [Entry("bin", kind="dir"), Entry("bin/busybox", busybox.read_bytes(), mode=0o755)]
    entries += [Entry(f"bin/{tool}", kind="symlink", link="busybox") for tool in tools]
    return layer(entries)


@dataclass
class OciImage:
    layers: list[bytes]
    env: list[str] = field(default_factory=lambda: ["PATH=/usr/local/bin:/usr/bin:/bin"])
    working_dir: str = ""
    user: str = ""
    architecture: str = "amd64"
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    diff_ids: list[str] | None = None  # None: the layers' own (tests of refused images set others)

    def config(self) -> bytes:
        return json.dumps(
            {
                "architecture": self.architecture,
                "os": "linux",
                "config": {
                    "Env": self.env,
                    "WorkingDir": self.working_dir,
                    "User": self.user,
                    "Entrypoint": self.entrypoint,
                    "Cmd": self.cmd,
                },
                "rootfs": {
                    "type": "layers",
                    "diff_ids": [diff_id(blob) for blob in self.layers]
                    if self.diff_ids is None
                    else self.diff_ids,
                },
            }
        ).encode()

    def manifest(self) -> bytes:
        config = self.config()
        return json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": CONFIG, "digest": sha256(config), "size": len(config)},
                "layers": [
                    {
                        "mediaType": LAYER_GZIP if _gzipped(blob) else LAYER_TAR,
                        "digest": sha256(blob),
                        "size": len(blob),
                    }
                    for blob in self.layers
                ],
            }
        ).encode()


class Registry:
    """``docker-registry`` serving a temporary folder on a loopback port, optionally behind basic auth."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, root: Path, auth: tuple[str, str] | None):
        self.process = process
        self.host = f"127.0.0.1:{port}"
        self.root = root
        self.auth = auth

    @classmethod
    def start(cls, folder: Path, *, auth: tuple[str, str] | None = None) -> Registry:
        binary = shutil.which("docker-registry")
        if binary is None:
            raise RuntimeError("docker-registry is not installed (Debian package docker-registry)")
        port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        lines = [
            "version: 0.1",
            "log: {level: error}",
            f"storage: {{filesystem: {{rootdirectory: {folder / 'data'}}}, delete: {{enabled: true}}}}",
            f"http: {{addr: '127.0.0.1:{port}'}}",
        ]
        if auth is not None:
            htpasswd = folder / "htpasswd"
            hashed = bcrypt.hashpw(auth[1].encode(), bcrypt.gensalt(4)).decode()
            htpasswd.write_text(f"{auth[0]}:{hashed}\n")
            lines.append(f"auth: {{htpasswd: {{realm: test, path: {htpasswd}}}}}")
        config = folder / "config.yml"
        config.write_text("\n".join(lines) + "\n")
        with (folder / "log").open("wb") as log:
            process = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=log)
        registry = cls(process, port, folder, auth)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://{registry.host}/v2/", timeout=1)
                return registry
            except httpx.TransportError:
                if process.poll() is not None:
                    break
                time.sleep(0.05)
        registry.stop()
        raise RuntimeError(f"docker-registry did not start: {(folder / 'log').read_text()[-500:]}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _client(self) -> httpx.Client:
        return httpx.Client(base_url=f"http://{self.host}", auth=self.auth, timeout=30)

    def push_blob(self, repository: str, blob: bytes, *, digest: str | None = None) -> None:
        with self._client() as client:
            start = client.post(f"/v2/{repository}/blobs/uploads/")
            start.raise_for_status()
            # The upload URL carries the registry's own state in its query: the digest is added to it.
            location = httpx.URL(start.headers["location"]).copy_merge_params(
                {"digest": digest or sha256(blob)}
            )
            done = client.put(location, content=blob)
            done.raise_for_status()

    def push_manifest(
        self, repository: str, tag: str, manifest: bytes, media_type: str = OCI_MANIFEST
    ) -> str:
        with self._client() as client:
            answer = client.put(
                f"/v2/{repository}/manifests/{tag}", content=manifest, headers={"Content-Type": media_type}
            )
            answer.raise_for_status()
        return sha256(manifest)

    def push(self, repository: str, tag: str, image: OciImage) -> str:
        """The image's blobs and manifest; returns ``host/repository:tag``."""
        for blob in [image.config(), *image.layers]:
            self.push_blob(repository, blob)
        self.push_manifest(repository, tag, image.manifest())
        return f"{self.host}/{repository}:{tag}"
