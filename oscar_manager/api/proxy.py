"""HTTP requests to an exposed service, passed to one of its instances and its answer passed back, both
bodies streamed (neither is held whole in memory: a model's upload or a long answer goes through in
chunks as they come).

What an ingress does to them, as upstream's nginx and Traefik routes do: hop-by-hop headers dropped both
ways, ``X-Forwarded-For``/``-Host``/``-Proto`` set, the ``Host`` the caller used kept (servers such as
Jupyter check it against ``Origin``). httpx is imported on the first proxied request: a manager with no
exposed service never loads it (issue 17's idle memory).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask
from starlette.requests import HTTPConnection

from oscar_manager.backends.exposed import Endpoint, ExposedUnreachable

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

# RFC 9110 §7.6.1, and what proxies drop with them (``Proxy-Connection``, ``Keep-Alive``).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
CONNECT_TIMEOUT = 10.0  # seconds to reach an instance; the answer itself may take as long as it takes


def unreachable(name: str, port: int, error: BaseException) -> ExposedUnreachable:
    return ExposedUnreachable(
        f"exposed service {name!r} did not answer on port {port} ({type(error).__name__}): most likely "
        "the port its server listens on does not match expose.api_port"
    )


def end_to_end(headers: Iterable[tuple[str, str]], *, also: Iterable[str] = ()) -> list[tuple[str, str]]:
    """The headers without the hop-by-hop ones (and those ``Connection`` names, and ``also``)."""
    pairs = list(headers)
    dropped = set(HOP_BY_HOP) | {name.lower() for name in also}
    for name, value in pairs:
        if name.lower() == "connection":
            dropped |= {token.strip().lower() for token in value.split(",") if token.strip()}
    return [(name, value) for name, value in pairs if name.lower() not in dropped]


def forwarded(connection: HTTPConnection) -> list[tuple[str, str]]:
    """``X-Forwarded-*`` for the instance: the caller's address appended to what came with the request."""
    client = connection.client.host if connection.client else ""
    before = connection.headers.get("x-forwarded-for", "")
    return [
        ("X-Forwarded-For", f"{before}, {client}" if before and client else before or client),
        ("X-Forwarded-Host", connection.headers.get("host", "")),
        ("X-Forwarded-Proto", connection.headers.get("x-forwarded-proto") or connection.url.scheme),
    ]


class ExposedClients:
    """HTTP clients to instances, kept for their connection pools: one for TCP, one a Unix socket."""

    def __init__(self) -> None:
        self._tcp: httpx.AsyncClient | None = None
        self._unix: dict[str, httpx.AsyncClient] = {}

    def client(self, endpoint: Endpoint) -> httpx.AsyncClient:
        import httpx

        def make(transport: httpx.AsyncHTTPTransport | None = None) -> httpx.AsyncClient:
            return httpx.AsyncClient(
                transport=transport,
                timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT),
                # No cap of its own on streams at once (httpx's default is 100): the server's is the cap.
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
                follow_redirects=False,
                trust_env=False,  # never through the environment's HTTP_PROXY
            )

        if endpoint.unix_socket is None:
            if self._tcp is None:
                self._tcp = make()
            return self._tcp
        found = self._unix.get(endpoint.unix_socket)
        if found is None:
            if len(self._unix) >= 256:  # instances come and go: sockets of gone ones are not kept forever
                self._unix.clear()  # their in-flight streams keep their own connections until they end
            found = self._unix[endpoint.unix_socket] = make(
                httpx.AsyncHTTPTransport(uds=endpoint.unix_socket)
            )
        return found

    async def aclose(self) -> None:
        clients = [self._tcp, *self._unix.values()]
        self._tcp, self._unix = None, {}
        for client in clients:
            if client is not None:
                await client.aclose()


async def _body(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk


async def forward(
    request: Request,
    clients: ExposedClients,
    *,
    name: str,
    port: int,
    endpoint: Endpoint,
    target: str,
    set_cookies: Iterable[str] = (),
    withheld: Iterable[str] = (),
) -> StreamingResponse:
    """Send ``request`` to ``endpoint`` at ``target`` (path and query), stream the answer back; the
    headers ``withheld`` are not passed on."""
    import httpx

    client = clients.client(endpoint)
    also = [*withheld, *(("content-length",) if _chunked(request) else ())]
    headers = end_to_end(request.headers.items(), also=also)
    headers += forwarded(request)
    has_body = "content-length" in request.headers or _chunked(request)
    outgoing = client.build_request(
        request.method,
        endpoint.url + target,
        headers=headers,
        content=_body(request) if has_body else None,
    )
    try:
        answer = await client.send(outgoing, stream=True)
    except (
        httpx.ConnectError,
        httpx.ConnectTimeout,
        httpx.RemoteProtocolError,
        httpx.ReadError,
        httpx.WriteError,
    ) as error:
        # A relay that closes without a byte (nothing on the port) is a RemoteProtocolError here, or a
        # WriteError when it closed before the request was all sent.
        raise unreachable(name, port, error) from None
    response = StreamingResponse(_relay(answer, name), status_code=answer.status_code)
    raw = [(key.lower(), value) for key, value in end_to_end(answer.headers.multi_items())]
    raw += [("set-cookie", cookie) for cookie in set_cookies]
    response.raw_headers = [(key.encode("latin-1"), value.encode("latin-1")) for key, value in raw]
    response.background = BackgroundTask(answer.aclose)
    return response


def _chunked(request: Request) -> bool:
    return "chunked" in request.headers.get("transfer-encoding", "").lower()


async def _relay(answer: httpx.Response, name: str) -> AsyncIterator[bytes]:
    """The instance's bytes as they come (``Content-Encoding`` untouched: passed on as it is)."""
    import httpx

    try:
        async for chunk in answer.aiter_raw():
            yield chunk
    except httpx.HTTPError as error:
        # The status line is out: all that can be done is to end the answer early.
        log.warning("the answer of exposed service %s broke off: %s", name, error)
        raise
    finally:
        await answer.aclose()
