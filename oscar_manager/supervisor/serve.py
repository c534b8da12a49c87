"""``oscar-supervisor serve``: the supervisor as a warm pod's server, one sync run at a time.

A service with ``synchronous.min_scale`` > 0 keeps that many warm pods on Kubernetes
(``backends.warm_kube``): each runs this server inside the user's image, so a ``/run`` costs an HTTP
request instead of a pod. Each run is what a sync Job does (``cli.supervise``: stage in, the script, stage
out, the rendered response) with the pod's files, credentials and environment; only the body and the
per-run settings come with the request.

The contract (HTTP/1.1, one request per connection, stdlib only: the executable carries no web framework):

- ``GET /ready``: 200 while idle, 503 while a run is under way or once retired (the readiness probe: a
  busy pod takes no other run).
- ``GET /idle``: ``{"busy": bool, "idle_seconds": float, "retired": bool}``, what the leader's scale-down
  (``backends.warm_scaling``) reads: the pod alone knows every manager replica's runs on it. Idle since
  the last run ended, or since the server started.
- ``POST /retire`` with the key and :data:`IDLE_AT_LEAST_HEADER` (seconds): 200 and the pod takes no run
  from then on (``/run`` 503, ``/ready`` 503) when it is idle and has been for that long; 409 otherwise.
  Checked and set in one step of the event loop, so no run can slip in between: a retired pod is safe to
  remove.
- ``POST /run`` with the body (``Content-Length``), the pod's key in :data:`KEY_HEADER`, and optionally
  :data:`TIMEOUT_HEADER` (seconds), :data:`ANY_BUCKET_HEADER` (``true``), :data:`MAX_RESPONSE_HEADER`
  (bytes), :data:`RUN_ID_HEADER`. Answers: 200 and the response (what the Job path unframes from its
  log); 503 busy (nothing was run: try another pod); 403 a wrong key; 422 the script failed (its exit
  code in :data:`EXIT_CODE_HEADER`, the log as the body); 504 past the time limit; 413 an answer over
  the limit (its size in :data:`RESPONSE_SIZE_HEADER`); 500 the supervisor itself failed (its message).

The key (:data:`KEY_ENV`, set in the pod's environment by the manager) keeps whoever else reaches the
pod's address from running the service's script without the manager's authentication.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

from oscar_manager.errors import OscarError
from oscar_manager.supervisor import cli, reads, response_frame
from oscar_manager.supervisor import deadline as deadlines
from oscar_manager.supervisor.answer import ResponseTooLarge, SyncAnswer

PORT_ENV = "OSCAR_WARM_PORT"
KEY_ENV = "OSCAR_WARM_KEY"
DEFAULT_PORT = 8118
KEY_HEADER = "x-oscar-warm-key"
TIMEOUT_HEADER = "x-oscar-timeout"
ANY_BUCKET_HEADER = "x-oscar-any-bucket"
MAX_RESPONSE_HEADER = "x-oscar-max-response"
RUN_ID_HEADER = "x-oscar-run-id"
EXIT_CODE_HEADER = "x-oscar-exit-code"
RESPONSE_SIZE_HEADER = "x-oscar-response-size"
IDLE_AT_LEAST_HEADER = "x-oscar-idle-at-least"
# Request line and headers: the manager sends a handful.
_MAX_HEAD = 64 * 1024
_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 409: "Conflict"}
_REASONS |= {411: "Length Required"}
_REASONS |= {413: "Payload Too Large", 422: "Unprocessable Content", 500: "Internal Server Error"}
_REASONS |= {503: "Service Unavailable", 504: "Gateway Timeout"}


class _Reply:
    """A status, headers and the body (an answer the caller closes once sent)."""

    def __init__(self, status: int, body: bytes | SyncAnswer = b"", **headers: str) -> None:
        self.status = status
        self.answer = body if isinstance(body, SyncAnswer) else SyncAnswer.of_bytes(body)
        self.headers = headers


class WarmServer:
    """One pod's server: :meth:`handle` each connection; a second run while one is under way is 503."""

    def __init__(
        self,
        *,
        env: Mapping[str, str],
        config_file: Path = cli.CONFIG_FILE,
        script_file: Path = cli.SCRIPT_FILE,
        credentials_dir: Path = cli.CREDENTIALS_DIR,
        live: BinaryIO | None = None,
    ) -> None:
        self._env = dict(env)
        self._key = env.get(KEY_ENV, "")
        self._config_file = config_file
        self._script_file = script_file
        self._credentials_dir = credentials_dir
        self._live = live  # where each run's log and script output also go (the pod log)
        self.busy = False
        self.retired = False
        self.runs = 0
        self._idle_since = time.monotonic()

    def idle_seconds(self) -> float:
        return 0.0 if self.busy else time.monotonic() - self._idle_since

    def retire(self, *, idle_at_least: float) -> bool:
        """Take no run from now on, if idle for ``idle_at_least`` seconds (no await: atomic in the loop)."""
        if self.busy or self.idle_seconds() < idle_at_least:
            return False
        self.retired = True
        return True

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await self._answer(reader)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            reply = None  # the caller went away, or sent no complete request
        try:
            if reply is not None:
                await _send(writer, reply)
        except ConnectionError:
            pass
        finally:
            if reply is not None:
                reply.answer.close()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> _Reply:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > _MAX_HEAD:
            return _Reply(400, b"request head too large\n")
        method, path, headers = _parse_head(head)
        if (method, path) == ("GET", "/ready"):
            if self.retired:
                return _Reply(503, b"retired\n")
            return _Reply(503, b"busy\n") if self.busy else _Reply(200, b"idle\n")
        if (method, path) == ("GET", "/idle"):
            state = {
                "busy": self.busy,
                "idle_seconds": round(self.idle_seconds(), 3),
                "retired": self.retired,
            }
            return _Reply(200, json.dumps(state).encode(), **{"Content-Type": "application/json"})
        if (method, path) not in (("POST", "/run"), ("POST", "/retire")):
            return _Reply(
                404, f"no {method} {path} here: GET /ready, GET /idle, POST /run or /retire\n".encode()
            )
        if not hmac.compare_digest(headers.get(KEY_HEADER, "").encode(), self._key.encode()) or not self._key:
            return _Reply(403, b"not the manager's key\n")
        if path == "/retire":
            at_least = _positive(headers.get(IDLE_AT_LEAST_HEADER, "")) or 0.0
            if self.retire(idle_at_least=at_least):
                return _Reply(200, b"retired\n")
            return _Reply(409, b"busy, or not idle long enough\n")
        length = headers.get("content-length", "")
        if not length.isdigit():
            return _Reply(411, b"Content-Length required\n")
        body = await reader.readexactly(int(length))
        if (
            self.busy or self.retired
        ):  # checked after the body is read: the caller sees an answer, not a reset
            return _Reply(503, b"retired: being removed\n" if self.retired else b"busy with another run\n")
        self.busy = True
        try:
            return await self._run(body, headers)
        finally:
            self.busy = False
            self.runs += 1
            self._idle_since = time.monotonic()

    async def _run(self, body: bytes, headers: Mapping[str, str]) -> _Reply:
        env = dict(self._env)
        env[reads.READ_ANY_BUCKET_ENV] = "true" if headers.get(ANY_BUCKET_HEADER) == "true" else "false"
        env["JOB_UUID"] = headers.get(RUN_ID_HEADER, "")
        env.pop(deadlines.DEADLINE_ENV, None)
        env.pop(response_frame.MAX_ENV, None)
        timeout = _positive(headers.get(TIMEOUT_HEADER, ""))
        if timeout is not None:
            env[deadlines.DEADLINE_ENV] = f"{timeout:g}"
        if headers.get(MAX_RESPONSE_HEADER, "").isdigit():
            env[response_frame.MAX_ENV] = headers[MAX_RESPONSE_HEADER]
        started = time.monotonic()
        try:
            code, answer, log = await cli.supervise(
                body,
                env=env,
                config_file=self._config_file,
                script_file=self._script_file,
                credentials_dir=self._credentials_dir,
                live=self._live,
            )
        except ResponseTooLarge as exc:
            return _Reply(413, exc.message.encode(), **{RESPONSE_SIZE_HEADER: str(exc.size)})
        except deadlines.StagingTimeout as exc:
            return _Reply(504, exc.message.encode())
        except OscarError as exc:
            return _Reply(500, f"supervisor: {type(exc).__name__}: {exc.message}".encode())
        if code == 0:
            return _Reply(200, answer, **{EXIT_CODE_HEADER: "0"})
        answer.close()
        if timeout is not None and time.monotonic() - started >= timeout:
            return _Reply(504, log.encode(), **{EXIT_CODE_HEADER: str(code)})
        return _Reply(422, log.encode(), **{EXIT_CODE_HEADER: str(code)})


def _positive(value: str) -> float | None:
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds > 0 else None


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    request_line, *lines = head.decode("latin-1").split("\r\n")
    method, _, rest = request_line.partition(" ")
    path = rest.partition(" ")[0].partition("?")[0]
    headers = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return method, path, headers


async def _send(writer: asyncio.StreamWriter, reply: _Reply) -> None:
    lines = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Unknown')}"]
    lines += [f"{name}: {value}" for name, value in reply.headers.items()]
    lines += [f"Content-Length: {reply.answer.length}", "Connection: close", "", ""]
    writer.write("\r\n".join(lines).encode("latin-1"))
    for chunk in reply.answer.chunks():
        writer.write(chunk)
        await writer.drain()
    await writer.drain()


async def serve(
    server: WarmServer,
    *,
    port: int,
    host: str = "0.0.0.0",  # noqa: S104 - the pod's own address: the manager reaches it there
    listening: Callable[[int], None] | None = None,
) -> None:
    """Serve until cancelled; ``listening`` is told the port once bound (0: one the system picks)."""
    listener = await asyncio.start_server(server.handle, host, port, limit=_MAX_HEAD)
    async with listener:
        if listening is not None:
            listening(listener.sockets[0].getsockname()[1])
        await listener.serve_forever()


def port_of(env: Mapping[str, str]) -> int:
    value = env.get(PORT_ENV, "")
    return int(value) if value.isdigit() else DEFAULT_PORT
