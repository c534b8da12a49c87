"""The exposed services' proxy over real sockets (the app served by uvicorn): bodies streamed both ways,
never held whole, and websockets passed both ways, with their refusals and close codes."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from oscar_manager.settings import Settings
from tests.support.app import give_local_backend, served_app
from tests.support.exposer import (
    DOWNLOAD_BLOCK,
    GATED_FIRST,
    GATED_REST,
    LoopbackExposer,
    LoopbackServer,
    loopback_server,
)
from tests.support.factories import ADMIN_PASSWORD, service_body

MIB = 1024 * 1024


@pytest.fixture
async def instance() -> AsyncIterator[LoopbackServer]:
    async with loopback_server() as server:
        yield server


@pytest.fixture
async def manager(
    settings: Settings, instance: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    """The manager's URL, with services ``web`` (public) and ``nb`` (forward auth) exposed."""
    give_local_backend(monkeypatch, LoopbackExposer(instance))
    async with served_app(settings) as (_app, url):
        async with httpx.AsyncClient(base_url=url, auth=("oscar", ADMIN_PASSWORD)) as http:
            for name, expose in (("web", {}), ("nb", {"set_auth": True, "auth_type": "forward"})):
                body = service_body(name, expose={"api_port": 8080, **expose})
                assert (await http.post("/system/services", json=body)).status_code == 201
        yield url


async def test_the_answer_streams_as_the_instance_sends_it(manager: str, instance: LoopbackServer) -> None:
    async with (
        httpx.AsyncClient(base_url=manager, timeout=10) as http,
        http.stream("GET", "/system/services/web/exposed/gated") as answer,
    ):
        chunks = answer.aiter_raw()
        # The instance holds the rest back until the first chunk is through: a proxy that waited for
        # the whole answer would never pass it.
        first = await asyncio.wait_for(anext(chunks), 5)
        assert first == GATED_FIRST
        instance.release.set()
        rest = b"".join([chunk async for chunk in chunks])
    assert rest == GATED_REST


async def test_the_request_body_streams_to_the_instance(manager: str, instance: LoopbackServer) -> None:
    block = os.urandom(MIB)
    digest = hashlib.sha256()

    async def upload() -> AsyncIterator[bytes]:
        digest.update(block)
        yield block
        # The rest is sent only once the instance has the first MiB: a proxy that read the whole body
        # before passing it on would wait here forever.
        await asyncio.wait_for(instance.first_upload_chunk.wait(), 5)
        for _ in range(31):
            digest.update(block)
            yield block

    async with httpx.AsyncClient(base_url=manager, timeout=30) as http:
        answer = await http.post("/system/services/web/exposed/upload-gated", content=upload())
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"bytes": 32 * MIB, "sha256": digest.hexdigest()}


async def test_a_large_answer_goes_through(manager: str) -> None:
    # Up and down apart: httpx sends a whole request before it reads the answer, so an echo of a body
    # larger than the sockets' buffers would wait on itself (a proxy that streams cannot help that).
    expected = hashlib.sha256(DOWNLOAD_BLOCK * 64).hexdigest()
    received = hashlib.sha256()
    size = 0
    async with (
        httpx.AsyncClient(base_url=manager, timeout=60) as http,
        http.stream("GET", "/system/services/web/exposed/download", params={"mib": 64}) as answer,
    ):
        assert answer.status_code == 200
        async for chunk in answer.aiter_raw():
            received.update(chunk)
            size += len(chunk)
    assert (size, received.hexdigest()) == (64 * MIB, expected)


async def test_a_body_is_echoed_as_it_comes(manager: str) -> None:
    async with (
        httpx.AsyncClient(base_url=manager, timeout=10) as http,
        http.stream("POST", "/system/services/web/exposed/echo", content=b"abc" * 1000) as answer,
    ):
        assert answer.status_code == 200
        assert await answer.aread() == b"abc" * 1000


async def test_websockets_go_both_ways(manager: str) -> None:
    host = manager.removeprefix("http://")
    uri = f"ws://{host}/system/services/web/exposed/ws?x=1"
    async with connect(uri, subprotocols=["chat"]) as socket:  # type: ignore[list-item]
        assert socket.subprotocol == "chat"
        # The instance saw the caller's Host, and the path without the prefix.
        assert await socket.recv() == f"hello {host} /ws?x=1"
        await socket.send("text")
        assert await socket.recv() == "text"
        await socket.send(b"\x00\x01" * 100_000)
        assert await socket.recv() == b"\x00\x01" * 100_000

    async with connect(f"ws://{host}/system/services/web/exposed/ws-close") as socket:
        with pytest.raises(ConnectionClosed) as closed:
            await socket.recv()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "bye")


async def test_a_refused_upgrade_is_passed_on(manager: str) -> None:
    host = manager.removeprefix("http://")
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"ws://{host}/system/services/web/exposed/ws-refuse"):
            pass
    answer = refused.value.response
    assert (answer.status_code, answer.body, answer.headers["X-Refused"]) == (
        403,
        b"no upgrade for you",
        "yes",
    )

    with pytest.raises(InvalidStatus) as missing:
        async with connect(f"ws://{host}/system/services/nothing/exposed/ws"):
            pass
    assert missing.value.response.status_code == 404


async def test_websockets_of_a_service_with_forward_auth(manager: str) -> None:
    host = manager.removeprefix("http://")
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"ws://{host}/system/services/nb/exposed/ws"):
            pass
    assert refused.value.response.status_code == 401

    async with httpx.AsyncClient(base_url=manager, auth=("oscar", ADMIN_PASSWORD)) as http:
        token = (await http.get("/system/services/nb")).json()["token"]
    async with connect(f"ws://{host}/system/services/nb/exposed/ws?token={token}") as socket:
        assert socket.response is not None
        assert f"oscar_service_nb_auth={token}" in socket.response.headers["Set-Cookie"]
        assert str(await socket.recv()).startswith("hello")
    cookie = {"Cookie": f"oscar_service_nb_auth={token}"}
    async with connect(f"ws://{host}/system/services/nb/exposed/ws", additional_headers=cookie) as socket:
        assert str(await socket.recv()).startswith("hello")
