"""A real WebDAV server on loopback for the tests (``webdav_program``: wsgidav on cheroot, in its own
process), and a self-signed certificate for it when TLS is wanted."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.components import free_port, unavailable

USER = "dcache-user"
PASSWORD = "dav-secret"
_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class WebDavServer:
    root: Path  # what the server serves: the files it was sent land here
    port: int
    process: subprocess.Popen[bytes]
    tls: bool
    log: Path

    @property
    def hostname(self) -> str:
        """The ``hostname`` of a ``webdav.<id>`` provider for this server."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def provider(self, *, password: str = PASSWORD, verify: bool = True) -> dict[str, object]:
        return {"hostname": self.hostname, "login": USER, "password": password, "verify": verify}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def _wait_listening(server: WebDavServer, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            output = server.log.read_text(errors="replace")
            raise RuntimeError(f"the WebDAV server exited: {output[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", server.port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError("the WebDAV server did not listen in time")


@contextlib.contextmanager
def webdav_server(*, tls: bool = False) -> Iterator[WebDavServer]:
    """A WebDAV server serving an empty folder, stopped (and its folder removed) at the end; skips (fails
    under ``OSCAR_TEST_STRICT=1``) when wsgidav or cheroot is not installed."""
    try:
        import cheroot  # noqa: F401
        import wsgidav  # noqa: F401
    except ImportError as exc:
        unavailable(f"the WebDAV test server needs wsgidav and cheroot (the test extra): {exc}")
    work = Path(tempfile.mkdtemp(prefix="oscar-webdav-"))
    root = work / "served"
    root.mkdir()
    tls_args: list[str] = [str(path) for path in _self_signed(work)] if tls else []
    port = free_port()
    log = work / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.webdav_program", str(root), str(port), USER, PASSWORD]
            + tls_args,
            cwd=_ROOT,
            env={**os.environ, "PYTHONPATH": str(_ROOT)},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    server = WebDavServer(root=root, port=port, process=process, tls=tls, log=log)
    try:
        _wait_listening(server)
        yield server
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
