"""A real MinIO server for the tests: built from source by ``scripts/build-minio``, run on loopback.

Binary
    ``scripts/build-minio`` builds ``github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c`` (the only
    version the module proxy serves: MinIO has no semver tags, older commits answer 403) plus a one-method
    patch (below) into ``.cache/bin/minio``: cold 3.5-6 min on 2 cores, 2.3 GB under ``.cache/``.
    ``MINIO_BINARY`` points at a prebuilt binary instead. ``minio --version`` reports
    ``commit-id=<version>+oscar-flush``.

Server
    ``minio server <tmpdir>/data --address 127.0.0.1:<port> --console-address 127.0.0.1:<port2>``: one drive,
    S3-ready in 0.4-0.5 s. ``/minio/health/live`` answers 200 as soon as HTTP listens; until the object
    layer is up it adds ``x-minio-server-status: offline`` (S3 calls: 503), so :meth:`MinioServer.is_live`
    requires that header to be absent. Notification targets are loaded a little later still (a goroutine
    after the object layer): a PutBucketNotification naming one may fail with ``InvalidArgument`` for a
    moment after (re)start, so retry it briefly.

``MINIO_API_SYNC_EVENTS=on`` (set here): MinIO POSTs each event to the matching webhook targets and waits for
their answers *before* it answers the request that caused it (a 0.5 s webhook makes the PUT take 0.5 s), so
tests need no polling. With the default ``off`` delivery goes through an in-memory queue. Either way, without
``queue_dir`` a failed delivery (non-2xx, refused) is logged and dropped: not retried, and the PUT still
succeeds. ListenBucketNotification streams are published separately and are not affected.

Webhook targets at start-up (no admin call): ``MINIO_NOTIFY_WEBHOOK_ENABLE_<NAME>=on``,
``MINIO_NOTIFY_WEBHOOK_ENDPOINT_<NAME>=<url>``, ``MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_<NAME>=<token>``
(:func:`webhook_env`). The ARN is ``arn:minio:sqs::<NAME>:webhook``, case-sensitive; a region in the ARN is
accepted and stored without it. The endpoint need not be up at start.

Webhook targets at runtime (no ``mc``): the admin REST API ``/minio/admin/v3/...``, SigV4-signed like S3
(service ``s3``, root credentials), see :class:`MinioAdmin`:

1. ``PUT set-config-kv``, body ``notify_webhook:<name> endpoint=<url> auth_token=<token>`` encrypted with
   madmin's ``EncryptData(secret_key)`` (:func:`madmin_encrypt`). MinIO TCP-dials the endpoint while
   validating: unreachable -> 400 ``XMinioAdminConfigBadJSON`` "... connect: connection refused". The answer
   (200, empty) has no ``x-minio-config-applied: true`` header: notify_* are not dynamic subsystems, the
   target is saved (``list-config-history-kv`` shows it) but not running (``get-config-kv`` of it: 400 "there
   is no target"; the ARN is rejected with ``InvalidArgument``) until a restart.
2. ``POST service?action=restart`` (no body; ``&type=2`` answers per-node JSON). MinIO answers, then
   ``execve``s itself: same PID, arguments and environment, so the ``Popen`` handle stays valid. S3 is back
   about 0.4-0.5 s later (1.3-1.6 s on a busy machine) and the target usable at once
   (:meth:`MinioServer.wait_restarted`). ``get-config-kv`` then shows the endpoint but never the auth_token.
3. ``PutBucketNotification`` with a QueueConfiguration ``arn:minio:sqs::<name>:webhook``.

Encrypted admin payloads in this version: request bodies carrying config or credentials (set-config-kv,
del-config-kv, set-config, add-user, add/update-service-account, IDP config, set-remote-target, tier
add/edit, builtin policy attach/detach) and responses carrying them (get-config-kv, get-config,
list-config-history-kv, user and service-account listings/info). Plain: service restart/stop, and of
course the S3 bucket-notification calls. ``minio.minioadmin.MinioAdmin`` and
``miniopy_async.minioadmin.MinioAdmin`` (PyPI) implement the same calls; this module needs neither.

What MinIO POSTs: ``Content-Type: application/json``, ``User-Agent: Go-http-client/1.1``, ``Authorization:
Bearer <token>`` (a token with a space, e.g. ``Token abc``, is sent as is; none without a token), body
``{"EventName": "s3:ObjectCreated:Put", "Key": "<bucket>/<key>", "Records": [<one S3 event record>]}``.
``Key`` is the plain key; ``Records[0].s3.object.key`` is Go's ``url.QueryEscape`` of it ("/" -> ``%2F``,
space -> ``+``, "+" -> ``%2B``, UTF-8 bytes %-escaped) = Python's ``quote_plus(key, safe="")``; decode it
with ``unquote_plus``. ``s3.configurationId`` is always ``"Config"``, ``awsRegion`` is ``""``.

ListenBucketNotification (``GET /<bucket>?events=...&prefix=&suffix=&ping=N``, :func:`listen`): one JSON
``{"Records": [...]}`` per line, keys *not* encoded; needs no bucket configuration. Unpatched, this MinIO
version never sends anything (``trackingResponseWriter``, minio/minio#21651, hides ``http.Flusher``);
``scripts/build-minio`` adds the missing ``Flush``. Headers come with the first write: 0.5 s (keep-alive
space) without ``ping``, N s with ``ping=N``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import boto3
from aiohttp import web
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from yarl import URL

from tests.support.components import free_port, unavailable

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "scripts" / "build-minio"
DEFAULT_BINARY = ROOT / ".cache" / "bin" / "minio"
ROOT_USER = "oscar-test"
ROOT_PASSWORD = "oscar-test-secret"


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
        access_key: str = ROOT_USER,
        secret_key: str = ROOT_PASSWORD,
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
        process = _spawn(binary, datadir, port, console_port, full_env, log_path)
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

    def kill(self) -> None:
        """SIGKILL the server (its data stays), as a crash would."""
        self.process.kill()
        self.process.wait(timeout=10)

    def revive(self, timeout: float = 30) -> None:
        """Start the killed server again: same port, data and environment."""
        self.process = _spawn(
            self.binary, self.datadir, self.port, self.console_port, self.env, self.log_path
        )
        self.wait_live(timeout)

    def is_live(self) -> bool:
        """Whether ``GET /minio/health/live`` answers 200 *without* ``x-minio-server-status: offline``.

        The probe answers 200 as soon as the HTTP server listens, flagging with that header that the object
        layer is not up yet (S3 calls then fail with 503 ``XMinioServerNotInitialized``). Blocking, <= 1 s.
        """
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
        try:
            connection.request("GET", "/minio/health/live")
            response = connection.getresponse()
            return response.status == 200 and response.getheader("x-minio-server-status") is None
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def wait_live(self, timeout: float = 30) -> float:
        """Block until the liveness probe answers 200; returns the seconds waited."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"minio exited with code {self.process.returncode}:\n{self.log_tail()}")
            if self.is_live():
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise TimeoutError(f"minio not live after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.02)

    def wait_restarted(self, timeout: float = 30) -> float:
        """After an admin ``service restart``: wait until the old process stops answering, then until the
        re-exec'd one is live. Returns the seconds from the call until live again."""
        started = time.monotonic()
        deadline = started + 5
        while self.is_live():
            if time.monotonic() > deadline:
                raise TimeoutError("minio still answering 5 s after a restart request: did it restart?")
            time.sleep(0.005)
        self.wait_live(timeout)
        return time.monotonic() - started

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


def boto3_client(endpoint: str, access_key: str, secret_key: str) -> Any:
    """A plain synchronous S3 client, as a user's own tool would be; no retries, so errors show."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(retries={"total_max_attempts": 1}),
    )


def _spawn(
    binary: Path, datadir: Path, port: int, console_port: int, env: dict[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
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
            env=env,
            start_new_session=True,
        )


async def start_minio(binary: Path, env: Mapping[str, str] | None = None) -> MinioServer:
    """A server for a test; skipped (failed in strict mode) with the reason if it cannot start."""
    try:
        return await asyncio.to_thread(MinioServer.start, binary, env=env)
    except (RuntimeError, OSError, TimeoutError) as exc:
        unavailable(f"cannot start MinIO ({binary}): {exc}")


# --- madmin payload encryption (github.com/minio/madmin-go/v3 encrypt.go + secure-io/sio-go) -------------

_SALT_LEN = 32
_NONCE_LEN = 8
_CHUNK = 16 * 1024
_TAG_LEN = 16
_ARGON2ID_AES_GCM = 0x00
_ARGON2ID_CHACHA20_POLY1305 = 0x01
_PBKDF2_AES_GCM = 0x02


def _madmin_key(password: str, salt: bytes, algorithm: int) -> bytes:
    secret = password.encode()
    if algorithm == _PBKDF2_AES_GCM:  # FIPS builds
        return PBKDF2HMAC(algorithm=SHA256(), length=32, salt=salt, iterations=8192).derive(secret)
    return Argon2id(salt=salt, length=32, iterations=1, lanes=4, memory_cost=64 * 1024).derive(secret)


def _aead(algorithm: int, key: bytes) -> AESGCM | ChaCha20Poly1305:
    if algorithm in (_ARGON2ID_AES_GCM, _PBKDF2_AES_GCM):
        return AESGCM(key)
    if algorithm == _ARGON2ID_CHACHA20_POLY1305:
        return ChaCha20Poly1305(key)
    raise ValueError(f"unknown madmin encryption algorithm id {algorithm:#04x}")


def _chunk_nonce(nonce: bytes, seq: int) -> bytes:
    return nonce + seq.to_bytes(4, "little")


def madmin_encrypt(plaintext: bytes, password: str) -> bytes:
    """``madmin.EncryptData``: what MinIO's encrypted admin calls expect as body (``password`` = secret key).

    ``salt(32) | algorithm id(1) | nonce(8) | chunks``; the key is Argon2id(password, salt, t=1, m=64 MiB,
    p=4, 32 bytes); each chunk is at most 16 KiB of plaintext sealed with AES-256-GCM under nonce|seq
    (seq = 1, 2, ... little-endian uint32) and associated data ``flag | tag``, where tag seals nothing under
    nonce|0 and flag is 0x80 on the last chunk, 0x00 before it.
    """
    salt, nonce = os.urandom(_SALT_LEN), os.urandom(_NONCE_LEN)
    algorithm = _ARGON2ID_AES_GCM
    aead = _aead(algorithm, _madmin_key(password, salt, algorithm))
    associated = b"\x00" + aead.encrypt(_chunk_nonce(nonce, 0), b"", None)
    chunks = [plaintext[i : i + _CHUNK] for i in range(0, len(plaintext), _CHUNK)] or [b""]
    sealed = [salt, bytes([algorithm]), nonce]
    for seq, chunk in enumerate(chunks, start=1):
        if seq == len(chunks):
            associated = b"\x80" + associated[1:]
        sealed.append(aead.encrypt(_chunk_nonce(nonce, seq), chunk, associated))
    return b"".join(sealed)


def madmin_decrypt(ciphertext: bytes, password: str) -> bytes:
    """``madmin.DecryptData``: the plaintext of an encrypted admin response (any of the three algorithms)."""
    header = _SALT_LEN + 1 + _NONCE_LEN
    if len(ciphertext) < header + _TAG_LEN:
        raise ValueError("madmin ciphertext too short")
    salt, algorithm, nonce = ciphertext[:_SALT_LEN], ciphertext[_SALT_LEN], ciphertext[_SALT_LEN + 1 : header]
    aead = _aead(algorithm, _madmin_key(password, salt, algorithm))
    associated = b"\x00" + aead.encrypt(_chunk_nonce(nonce, 0), b"", None)
    body = ciphertext[header:]
    size = _CHUNK + _TAG_LEN
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    plain = []
    for seq, piece in enumerate(pieces, start=1):
        if seq == len(pieces):
            associated = b"\x80" + associated[1:]
        plain.append(aead.decrypt(_chunk_nonce(nonce, seq), piece, associated))
    return b"".join(plain)


def sigv4_headers(method: str, url: str, body: bytes, access_key: str, secret_key: str) -> dict[str, str]:
    """SigV4 headers (service ``s3``, region ``us-east-1``) for a request to MinIO, signed by botocore.

    ``url`` must be exactly what is sent (already percent-encoded): pass it to aiohttp as
    ``yarl.URL(url, encoded=True)``. Over plain http botocore signs the payload hash
    (``x-amz-content-sha256`` = SHA-256 of ``body``).
    """
    request = AWSRequest(method=method, url=url, data=body)
    S3SigV4Auth(Credentials(access_key, secret_key), "s3", "us-east-1").add_auth(request)
    return dict(request.headers.items())


# --- the admin REST API ------------------------------------------------------------------------------------


class MinioAdminError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: bytes) -> None:
        super().__init__(f"{method} {path} -> {status}: {body.decode(errors='replace')}")
        self.status = status
        self.body = body


@dataclass
class AdminResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


class MinioAdmin:
    """The few ``/minio/admin/v3`` calls the tests need: SigV4 (botocore) + madmin encryption, over aiohttp.

    Signing: ``S3SigV4Auth`` with service ``s3``, region ``us-east-1`` (MinIO accepts it when the server has
    no region set), ``x-amz-content-sha256`` = SHA-256 of the (encrypted) body.
    """

    API = "/minio/admin/v3"

    def __init__(
        self, session: aiohttp.ClientSession, endpoint: str, access_key: str, secret_key: str
    ) -> None:
        self._session = session
        self._endpoint = endpoint.rstrip("/")
        self._access_key = access_key
        self._secret_key = secret_key

    async def request(
        self, method: str, command: str, query: Mapping[str, str] | None = None, body: bytes = b""
    ) -> AdminResponse:
        path = f"{self.API}/{command}"
        url = self._endpoint + path
        if query:
            url += "?" + urlencode(sorted(query.items()), quote_via=quote)
        headers = sigv4_headers(method, url, body, self._access_key, self._secret_key)
        headers["Content-Type"] = "application/octet-stream"
        async with self._session.request(
            method, URL(url, encoded=True), data=body or None, headers=headers
        ) as response:
            content = await response.read()
            if response.status // 100 != 2:
                raise MinioAdminError(method, path, response.status, content)
            lowered = {name.lower(): value for name, value in response.headers.items()}
            return AdminResponse(response.status, lowered, content)

    async def set_config_kv(self, line: str) -> bool:
        """``PUT set-config-kv`` (encrypted body), e.g. ``notify_webhook:oscar endpoint=... auth_token=...``.

        Returns whether MinIO applied it at once (``x-minio-config-applied: true``); ``False`` means it is
        saved but needs a restart.
        """
        body = await asyncio.to_thread(madmin_encrypt, line.encode(), self._secret_key)
        response = await self.request("PUT", "set-config-kv", body=body)
        return response.headers.get("x-minio-config-applied", "").lower() == "true"

    async def get_config_kv(self, key: str) -> str:
        """``GET get-config-kv?key=...``: the *running* config (encrypted response; secrets left out)."""
        response = await self.request("GET", "get-config-kv", {"key": key})
        return (await asyncio.to_thread(madmin_decrypt, response.body, self._secret_key)).decode()

    async def config_history(self, count: int = 10) -> str:
        """``GET list-config-history-kv`` (encrypted JSON response): the saved ``set-config-kv`` inputs."""
        response = await self.request("GET", "list-config-history-kv", {"count": str(count)})
        return (await asyncio.to_thread(madmin_decrypt, response.body, self._secret_key)).decode()

    async def service_restart(self) -> None:
        """``POST service?action=restart``: answered first, then the server re-``execve``s itself."""
        await self.request("POST", "service", {"action": "restart"})


# --- a webhook endpoint for MinIO to POST events to -----------------------------------------------------


@dataclass
class Delivery:
    """One POST MinIO made to the webhook."""

    path: str
    headers: dict[str, str]  # lower-case names
    body: dict[str, Any]
    received_at: float  # time.monotonic()

    @property
    def record(self) -> dict[str, Any]:
        """The (only) entry of ``Records``."""
        records: list[dict[str, Any]] = self.body["Records"]
        assert len(records) == 1, records
        return records[0]

    @property
    def bucket(self) -> str:
        return str(self.record["s3"]["bucket"]["name"])


class WebhookReceiver:
    """An aiohttp server on loopback that records every POST (any path) and answers ``status``."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.status = 200
        self.delay = 0.0
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._arrived = asyncio.Condition()

    def url(self, path: str = "/events") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        headers = {name.lower(): value for name, value in request.headers.items()}
        if self.delay:
            await asyncio.sleep(self.delay)
        async with self._arrived:
            self.deliveries.append(Delivery(request.path, headers, body, time.monotonic()))
            self._arrived.notify_all()
        return web.Response(status=self.status)

    def for_bucket(self, bucket: str) -> list[Delivery]:
        return [delivery for delivery in self.deliveries if delivery.bucket == bucket]

    async def wait_for(self, bucket: str, count: int, within: float = 10) -> list[Delivery]:
        """Wait until at least ``count`` deliveries for ``bucket`` arrived; returns them all."""
        async with asyncio.timeout(within), self._arrived:
            await self._arrived.wait_for(lambda: len(self.for_bucket(bucket)) >= count)
        return self.for_bucket(bucket)


def webhook_env(name: str, endpoint: str, auth_token: str = "") -> dict[str, str]:
    """Environment that makes MinIO load webhook target ``name`` at start-up (ARN
    ``arn:minio:sqs::<name>:webhook``; the name is used as written, case-sensitive)."""
    env = {f"MINIO_NOTIFY_WEBHOOK_ENABLE_{name}": "on", f"MINIO_NOTIFY_WEBHOOK_ENDPOINT_{name}": endpoint}
    if auth_token:
        env[f"MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_{name}"] = auth_token
    return env


def notify_webhook(s3: Any, bucket: str, arn: str, within: float = 10) -> None:
    """Object-created events under ``in/`` of ``bucket`` to the webhook ``arn``, retried while a starting
    MinIO has not loaded its targets yet (``InvalidArgument``)."""
    deadline = time.monotonic() + within
    while True:
        try:
            s3.put_bucket_notification_configuration(
                Bucket=bucket,
                NotificationConfiguration={
                    "QueueConfigurations": [
                        {
                            "QueueArn": arn,
                            "Events": ["s3:ObjectCreated:*"],
                            "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "in/"}]}},
                        }
                    ]
                },
            )
            return
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "InvalidArgument" or time.monotonic() >= deadline:
                raise
        time.sleep(0.05)


# --- ListenBucketNotification, raw -------------------------------------------------------------------------


class ListenStream:
    """An open ``GET /<bucket>?events=...`` stream: one JSON document per line, ``{"Records": [...]}``.

    With ``ping=N`` MinIO writes ``{"Records":null}`` every N seconds; without it, a single space every
    0.5 s (so lines may start with blanks). Both are skipped here.
    """

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next_record(self, within: float = 10) -> dict[str, Any]:
        async with asyncio.timeout(within):
            while True:
                line = await self.response.content.readline()
                if not line:
                    raise EOFError("the listen stream ended")
                if not line.strip():
                    continue
                document = json.loads(line)
                records: list[dict[str, Any]] | None = document.get("Records")
                if records:
                    assert len(records) == 1, records
                    return records[0]


@contextlib.asynccontextmanager
async def listen(
    session: aiohttp.ClientSession,
    server: MinioServer,
    bucket: str,
    *,
    events: tuple[str, ...] = ("s3:ObjectCreated:*",),
    prefix: str = "",
    suffix: str = "",
    ping: int | None = None,
) -> AsyncIterator[ListenStream]:
    """Subscribe to ``bucket``'s events; yields once MinIO sent the response headers, which happens only at
    its first write (the 0.5 s keep-alive, the first ping, or an event) and after the subscription is in
    place, so no event of a later upload is missed."""
    query = [("events", event) for event in events]
    query += [(name, value) for name, value in (("prefix", prefix), ("suffix", suffix)) if value]
    if ping is not None:
        query.append(("ping", str(ping)))
    url = f"{server.endpoint}/{quote(bucket)}?{urlencode(query, quote_via=quote)}"
    headers = sigv4_headers("GET", url, b"", server.access_key, server.secret_key)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None)
    async with session.get(URL(url, encoded=True), headers=headers, timeout=timeout) as response:
        if response.status != 200:
            raise MinioAdminError("GET", url, response.status, await response.read())
        yield ListenStream(response)
