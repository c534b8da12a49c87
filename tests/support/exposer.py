"""A test ``Exposer`` whose one "instance" is a real loopback HTTP and websocket server (aiohttp, in the
test's event loop), on TCP and on a Unix socket. A double: the real exposers (local processes, Kubernetes
Deployments) cannot be told on demand to be pending, failed or unreachable; this one can, and records
every call made to it, so the layers above the backends are tested against what they send and receive.

The server's routes:
- ``/info`` (any method): the request as seen (method, path with query, headers, body size) in JSON;
- ``/echo``: the request body sent back as it is read, chunk by chunk;
- ``/download?mib=N``: N MiB (``download_block`` repeated), written as the client takes them;
- ``/gated``: a first chunk, then the rest once ``release`` is set (the test sees the first first);
- ``/upload-gated``: sets ``first_upload_chunk`` on the request body's first chunk, then counts the rest;
- ``/ws``: a websocket echo (text and bytes), ``/ws-close``: closes at once with code 4001;
- ``/ws-refuse``: a plain 403 to the upgrade.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import WSMsgType, web

from oscar_manager.backends.exposed import DeploymentState, Endpoint, ExposedUnavailable
from oscar_manager.domain.service import Service
from tests.support.components import free_port

GATED_FIRST = b"first chunk\n"
GATED_REST = b"rest\n" * 1000
DOWNLOAD_BLOCK = bytes(range(256)) * 4096  # 1 MiB


@dataclass
class LoopbackServer:
    url: str
    unix_socket: str
    release: asyncio.Event = field(default_factory=asyncio.Event)
    first_upload_chunk: asyncio.Event = field(default_factory=asyncio.Event)
    requests: list[dict[str, object]] = field(default_factory=list)


def _app(server: LoopbackServer) -> web.Application:
    async def info(request: web.Request) -> web.Response:
        body = await request.read()
        seen = {
            "method": request.method,
            "path": request.raw_path,
            "headers": {key.lower(): value for key, value in request.headers.items()},
            "body_bytes": len(body),
        }
        server.requests.append(seen)
        return web.json_response(seen, headers={"X-Instance": "loopback", "Set-Cookie": "app=1; Path=/"})

    async def echo(request: web.Request) -> web.StreamResponse:
        answer = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        answer.enable_chunked_encoding()
        await answer.prepare(request)
        async for chunk in request.content.iter_any():
            await answer.write(chunk)
        await answer.write_eof()
        return answer

    async def download(request: web.Request) -> web.StreamResponse:
        answer = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        answer.enable_chunked_encoding()
        await answer.prepare(request)
        for _ in range(int(request.query["mib"])):
            await answer.write(DOWNLOAD_BLOCK)
        await answer.write_eof()
        return answer

    async def gated(request: web.Request) -> web.StreamResponse:
        answer = web.StreamResponse()
        answer.enable_chunked_encoding()
        await answer.prepare(request)
        await answer.write(GATED_FIRST)
        await server.release.wait()
        await answer.write(GATED_REST)
        await answer.write_eof()
        return answer

    async def upload_gated(request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            server.first_upload_chunk.set()
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"bytes": size, "sha256": digest.hexdigest()})

    async def ws_echo(request: web.Request) -> web.StreamResponse:
        if request.headers.get("upgrade", "").lower() != "websocket":
            return web.Response(status=400, text="websocket only")
        socket = web.WebSocketResponse(protocols=("chat", "other"))
        await socket.prepare(request)
        await socket.send_str(f"hello {request.headers.get('host')} {request.raw_path}")
        async for message in socket:
            if message.type == WSMsgType.TEXT:
                await socket.send_str(message.data)
            elif message.type == WSMsgType.BINARY:
                await socket.send_bytes(message.data)
        return socket

    async def ws_close(request: web.Request) -> web.StreamResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        await socket.close(code=4001, message=b"bye")
        return socket

    async def ws_refuse(request: web.Request) -> web.Response:
        return web.Response(status=403, text="no upgrade for you", headers={"X-Refused": "yes"})

    app = web.Application(client_max_size=1024**3)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/gated", gated)
    app.router.add_get("/download", download)
    app.router.add_route("*", "/upload-gated", upload_gated)
    app.router.add_get("/ws", ws_echo)
    app.router.add_get("/ws-close", ws_close)
    app.router.add_get("/ws-refuse", ws_refuse)
    app.router.add_route("*", "/{tail:.*}", info)
    return app


@asynccontextmanager
async def loopback_server() -> AsyncIterator[LoopbackServer]:
    port = free_port()
    # A short folder of its own: a Unix socket's path may not be longer than about 100 bytes.
    with tempfile.TemporaryDirectory(prefix="instance-", dir="/tmp") as folder:
        server = LoopbackServer(url=f"http://127.0.0.1:{port}", unix_socket=str(Path(folder) / "sock"))
        runner = web.AppRunner(_app(server), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
            await web.UnixSite(runner, server.unix_socket).start()
            yield server
        finally:
            await runner.cleanup()


@dataclass
class LoopbackExposer:
    """Every service's instance is ``server`` (or the endpoint set for it in ``endpoints``)."""

    server: LoopbackServer
    calls: list[tuple[str, str]] = field(default_factory=list)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    states: dict[str, DeploymentState] = field(default_factory=dict)
    log_lines: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)
    fail_expose: set[str] = field(default_factory=set)  # names whose expose() raises

    def calls_for(self, name: str) -> list[str]:
        return [call for call, called in self.calls if called == name]

    async def expose(self, service: Service, *, previous: Service | None = None) -> None:
        self.calls.append(("expose" if previous is None else "update", service.name))
        if service.name in self.fail_expose:
            raise RuntimeError(f"cannot expose {service.name}")
        self.running.add(service.name)

    async def unexpose(self, service: Service) -> None:
        self.calls.append(("unexpose", service.name))
        self.running.discard(service.name)

    async def endpoint(self, service: Service) -> Endpoint:
        if service.name not in self.running:
            raise ExposedUnavailable(f"no instance of {service.name} is up")
        return self.endpoints.get(service.name, Endpoint(self.server.url))

    async def state(self, service: Service) -> DeploymentState:
        found = self.states.get(service.name)
        if found is not None:
            return found
        up = int(service.name in self.running)
        return DeploymentState(
            state="ready" if up else "pending", reason="", active_instances=up, affected_instances=0
        )

    async def logs(self, service: Service, *, tail_lines: int) -> list[tuple[str, str]]:
        return self.log_lines.get(service.name, [])[-tail_lines:]

    async def stop(self, service: Service) -> None:
        self.calls.append(("stop", service.name))
        self.running.discard(service.name)

    async def start(self, service: Service) -> None:
        self.calls.append(("start", service.name))
        self.running.add(service.name)

    async def restart(self, service: Service) -> None:
        self.calls.append(("restart", service.name))


@dataclass
class Resolved:
    """The Kubernetes exposer's ``resolve`` hook for tests: every pod address to one loopback server,
    remembering what it was asked."""

    port: int
    asked: list[tuple[str, int]] = field(default_factory=list)

    def __call__(self, address: str, port: int) -> tuple[str, int]:
        self.asked.append((address, port))
        return "127.0.0.1", self.port
