"""Websockets to an exposed service (Jupyter's kernels, Node-RED's editor, terminals): the caller's
upgrade is first made to the instance, with the caller's headers, subprotocols and ``Host``; only if the
instance accepts is the caller's accepted, with the subprotocol the instance chose, and messages then go
both ways as they come until either side closes. An upgrade the instance refuses is answered to the
caller as the instance answered it (status, headers, body), where the server can (the ASGI websocket
denial extension); else closed before it is accepted (a 403).

The ``websockets`` library (uvicorn's own for websockets) is imported on the first one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from fastapi import WebSocket, WebSocketDisconnect
from fastapi.responses import Response

from oscar_manager.api.proxy import CONNECT_TIMEOUT, end_to_end, forwarded, unreachable
from oscar_manager.backends.exposed import Endpoint

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

log = logging.getLogger(__name__)

# What the websocket library writes itself for the upgrade to the instance.
_HANDSHAKE = (
    "host",
    "origin",
    "user-agent",
    "content-length",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "sec-websocket-accept",
)
NORMAL_CLOSURE = 1000
INTERNAL_ERROR = 1011
# Codes that only say what happened locally and may never be sent in a close frame (RFC 6455 §7.4.1).
_RESERVED = frozenset({1004, 1005, 1006, 1015})


class Refused(Exception):
    """The instance answered the upgrade with a plain HTTP answer."""

    def __init__(self, answer: Response) -> None:
        super().__init__(answer.status_code)
        self.answer = answer


async def relay(
    websocket: WebSocket,
    *,
    name: str,
    port: int,
    endpoint: Endpoint,
    target: str,
    set_cookies: Iterable[str] = (),
    withheld: Iterable[str] = (),
) -> None:
    """Connect to the instance, then accept the caller and pass messages until either side closes; the
    headers ``withheld`` are not passed on."""
    try:
        upstream = await _connect(
            websocket, name=name, port=port, endpoint=endpoint, target=target, withheld=withheld
        )
    except Refused as refused:
        await deny(websocket, refused.answer)
        return
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(upstream.close)
        cookies = [(b"set-cookie", cookie.encode("latin-1")) for cookie in set_cookies]
        await websocket.accept(subprotocol=upstream.subprotocol, headers=cookies)
        await _both_ways(websocket, upstream)


async def deny(websocket: WebSocket, answer: Response) -> None:
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(answer)
    else:
        await websocket.close(code=1008, reason=f"refused: {answer.status_code}")


async def _connect(
    websocket: WebSocket, *, name: str, port: int, endpoint: Endpoint, target: str, withheld: Iterable[str]
) -> ClientConnection:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake, InvalidStatus

    class Connect(connect):
        def process_redirect(self, exc: Exception) -> Exception | str:
            return exc  # the caller gets the redirect, as an answer: the instance's Location is for it

    # The URI gives the Host header (the caller's); where to connect is given apart.
    host = websocket.headers.get("host") or "localhost"
    uri = f"ws://{host}{target}"
    headers = end_to_end(websocket.headers.items(), also=[*_HANDSHAKE, *withheld]) + forwarded(websocket)
    options: dict[str, Any] = {
        "additional_headers": headers,
        "user_agent_header": websocket.headers.get("user-agent"),
        "origin": websocket.headers.get("origin"),
        "subprotocols": websocket.scope.get("subprotocols") or None,
        "open_timeout": CONNECT_TIMEOUT,
        "max_size": None,  # the instance and its caller agree on sizes; the relay imposes none
        "compression": None,  # messages are passed as they are, not recompressed
        "ping_interval": None,  # each side keeps its own connection alive
        "proxy": None,
    }
    if endpoint.unix_socket is not None:
        options.update(unix=True, path=endpoint.unix_socket)
    else:
        address = _split(endpoint.url)
        options.update(host=address[0], port=address[1])
    try:
        return await Connect(uri, **options)
    except InvalidStatus as refused:
        answer = refused.response
        response = Response(bytes(answer.body or b""), status_code=answer.status_code)
        response.raw_headers = [
            (key.lower().encode("latin-1"), value.encode("latin-1"))
            for key, value in end_to_end(answer.headers.raw_items())
        ]
        raise Refused(response) from None
    except (OSError, InvalidHandshake, TimeoutError, EOFError) as error:
        failure = unreachable(name, port, error)
        raise Refused(Response(failure.message, status_code=failure.status_code)) from None


def _sendable(code: int) -> int:
    """A close code passed on; one that may not be sent becomes a normal closure."""
    return NORMAL_CLOSURE if code in _RESERVED or not 1000 <= code <= 4999 else code


def _split(url: str) -> tuple[str, int]:
    """``http://host:port`` as (host, port)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname or "localhost", parts.port or 80


async def _both_ways(websocket: WebSocket, upstream: ClientConnection) -> None:
    from websockets.exceptions import ConnectionClosed

    async def from_caller() -> None:
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    code = _sendable(message.get("code", NORMAL_CLOSURE))
                    await upstream.close(code=code, reason=message.get("reason") or "")
                    return
                if message.get("bytes") is not None:
                    await upstream.send(message["bytes"])
                elif message.get("text") is not None:
                    await upstream.send(message["text"])
        except (ConnectionClosed, WebSocketDisconnect):
            return

    async def to_caller() -> None:
        try:
            async for message in upstream:
                if isinstance(message, str):
                    await websocket.send_text(message)
                else:
                    await websocket.send_bytes(message)
        except ConnectionClosed:
            pass
        except WebSocketDisconnect:
            return
        close = upstream.protocol.close_rcvd
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            # An instance that vanished without a close frame is an error on the caller's side.
            code = _sendable(close.code) if close is not None else INTERNAL_ERROR
            await websocket.close(code=code, reason=close.reason if close is not None else "")

    tasks = [asyncio.create_task(from_caller()), asyncio.create_task(to_caller())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
