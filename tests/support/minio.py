"""A real MinIO server for the tests: built from source by ``scripts/build-minio``, run on loopback.

Binary
    ``scripts/build-minio`` runs ``go install github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c`` (the
    proxy's ``@latest``: MinIO has no semver tags) into ``.cache/bin/minio``; cold about 6 min on 2 cores,
    2.3 GB under ``.cache/``. ``MINIO_BINARY`` points at a prebuilt binary instead. ``minio --version`` of such
    a build says ``DEVELOPMENT.GOGET``; the module version is in ``go version -m .cache/bin/minio``.

Server
    ``minio server <tmpdir> --address 127.0.0.1:<port> --console-address 127.0.0.1:<port2>``: one drive, so
    no erasure coding, ready in well under a second. ``MINIO_API_SYNC_EVENTS=on`` makes bucket-notification
    delivery synchronous: MinIO POSTs the event to each matching webhook target (and waits for its answer)
    *before* it answers the PUT that caused it, so a test can assert right after the upload without polling.
    (With the default ``off`` the event goes through an in-memory queue and arrives some time later.) It does
    not affect ListenBucketNotification streams, which are published separately.

Registering a webhook target at runtime (no ``mc``; admin REST API under ``/minio/admin/v3``, SigV4-signed
like S3, service ``s3``, the root credentials):

1. ``PUT /minio/admin/v3/set-config-kv`` with body ``notify_webhook:<name> endpoint=<url> auth_token=<token>``
   **encrypted** with madmin's ``EncryptData(secret_key, ...)`` (sio DARE format: 32-byte salt, 1-byte AEAD
   id, 8-byte nonce, then 16 KiB AES-256-GCM chunks; key = Argon2id(secret_key, salt, t=1, m=64 MiB,
   p=4)). ``minio.minioadmin.MinioAdmin.config_set`` and ``miniopy_async.minioadmin.MinioAdmin.config_set``
   do exactly this (``minio.crypto.encrypt``). MinIO *dials the endpoint* (TCP connect) while validating,
   so the listener must already be up, else 400 ``XMinioAdminConfigBadJSON``. Encrypted in this MinIO
   version: the request bodies of set-config-kv, del-config-kv, set-config, add-user, add/update service
   account, set-remote-target, tier add/edit, IDP config; the responses of get-config-kv, get-config,
   list-config-history, list users/service accounts, info-access-key. Not encrypted: service restart/stop,
   put/get bucket notification (plain S3 XML).
2. ``notify_webhook`` is **not** a dynamic subsystem (``config.SubSystemsDynamic`` has no notify_*): the
   target is saved but not loaded until a restart; ``PutBucketNotification`` naming its ARN fails with
   ``InvalidArgument`` ("A specified destination ARN does not exist or is not well-formed") until then.
3. ``POST /minio/admin/v3/service?action=restart`` (``MinioAdmin.service_restart``; ``&type=2`` selects the
   V2 handler with per-peer results). The server ``execve``s itself: **same PID**, same arguments and
   environment, so the ``subprocess.Popen`` handle stays valid. See :meth:`MinioServer.restart`.
4. Then ``PutBucketNotification`` with a ``QueueConfiguration`` whose ``Queue`` is
   ``arn:minio:sqs::<name>:webhook`` (empty region unless the server sets one).

Alternatively, targets can be configured at start-up without any admin call, via the environment:
``MINIO_NOTIFY_WEBHOOK_ENABLE_<NAME>=on``, ``MINIO_NOTIFY_WEBHOOK_ENDPOINT_<NAME>=<url>``,
``MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_<NAME>=<token>`` (pass them as ``env`` to :meth:`MinioServer.start`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.components import free_port

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "scripts" / "build-minio"
DEFAULT_BINARY = ROOT / ".cache" / "bin" / "minio"


def locate_minio_binary(*, build: bool = True, timeout: float = 3600) -> Path:
    """The MinIO binary: ``$MINIO_BINARY``, else ``.cache/bin/minio``, else (if ``build``) build it.

    Raises ``RuntimeError`` with the reason when there is none.
    """
    configured = os.environ.get("MINIO_BINARY")
    if configured:
        path = Path(configured)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise RuntimeError(f"MINIO_BINARY={configured} is not an executable file")
        return path
    if DEFAULT_BINARY.is_file() and os.access(DEFAULT_BINARY, os.X_OK):
        return DEFAULT_BINARY
    if not build:
        raise RuntimeError(f"{DEFAULT_BINARY} does not exist (run scripts/build-minio)")
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"scripts/build-minio failed (exit {result.returncode}):\n{tail}")
    return Path(result.stdout.strip().splitlines()[-1])


@dataclass
class MinioServer:
    """One MinIO process on loopback with a throwaway data directory (single drive)."""

    binary: Path
    datadir: Path
    port: int
    console_port: int
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(repr=False)

    @property
    def address(self) -> str:
        """``host:port``, as the ``minio`` clients want it."""
        return f"127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL, as boto clients want it."""
        return f"http://{self.address}"

    @classmethod
    def start(
        cls,
        binary: Path,
        *,
        access_key: str = "oscar-test",
        secret_key: str = "oscar-test-secret",
        env: Mapping[str, str] | None = None,
        timeout: float = 30,
    ) -> MinioServer:
        """Start the server and wait until ``/minio/health/live`` answers 200.

        ``env`` adds to (and overrides) the defaults, e.g. ``MINIO_NOTIFY_WEBHOOK_*`` targets.
        """
        datadir = Path(tempfile.mkdtemp(prefix="oscar-minio-"))
        port = free_port()
        console_port = free_port()
        while console_port == port:
            console_port = free_port()
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(datadir),
            "MINIO_ROOT_USER": access_key,
            "MINIO_ROOT_PASSWORD": secret_key,
            # Deliver bucket notifications to targets before answering the request that caused them.
            "MINIO_API_SYNC_EVENTS": "on",
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
            "MINIO_CI_CD": "1",
            **(env or {}),
        }
        log_path = datadir.with_name(datadir.name + ".log")
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    str(binary.resolve()),
                    "server",
                    str(datadir / "data"),
                    "--address",
                    f"127.0.0.1:{port}",
                    "--console-address",
                    f"127.0.0.1:{console_port}",
                    "--quiet",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                start_new_session=True,
            )
        server = cls(
            binary=binary,
            datadir=datadir,
            port=port,
            console_port=console_port,
            access_key=access_key,
            secret_key=secret_key,
            process=process,
            log_path=log_path,
            env=full_env,
        )
        try:
            server.wait_live(timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def is_live(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/minio/health/live", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_live(self, timeout: float = 30) -> float:
        """Block until the liveness probe answers 200; returns the seconds waited."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"minio exited with code {self.process.returncode}:\n{self.log_tail()}"
                )
            if self.is_live():
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise TimeoutError(f"minio not live after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Terminate (then kill) the process and remove the data directory and log."""
        try:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=10)
        finally:
            shutil.rmtree(self.datadir, ignore_errors=True)
            self.log_path.unlink(missing_ok=True)
