"""Exposed services on the local backend in their service's image: the server is the image's (busybox's
httpd from a real registry on loopback), run in the image's root under the real sandbox, reached through
the relay that stays on the host; ``default_command`` runs the image's Entrypoint and Cmd."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from oscar_manager.backends.exposed import ExposedUnavailable
from oscar_manager.backends.exposed_policy import ExposeTimings
from oscar_manager.backends.images.service_images import ImageMode, ServiceImages
from oscar_manager.backends.images.store import ImageStore
from oscar_manager.backends.local import LocalBackend
from oscar_manager.domain.service import Service
from oscar_manager.storage.local import LocalObjectStore
from oscar_manager.storage.providers import Stores
from tests.integration.images.test_image_runs import sandbox, service
from tests.support.oci_registry import Entry, OciImage, Registry, layer

TIMINGS = ExposeTimings(
    probe_interval=0.1,
    probe_timeout=1.0,
    startup_timeout=30.0,
    crash_threshold=2,
    backoff_base=0.2,
    backoff_cap=1.0,
    ready_wait=20.0,
)

# Says what the server's world is, then serves it: the image's file, its Env, the host's python or not.
SERVER = """mkdir -p /tmp/www
{ cat /etc/flavour
  echo "greeting=$GREETING"
  command -v python3 >/dev/null && echo "host python visible" || echo "no python"
} > /tmp/www/index.html
exec busybox httpd -f -p 127.0.0.1:8080 -h /tmp/www
"""


def exposed(reference: str, script: str = SERVER, **expose: Any) -> Service:
    return service(reference, script, expose={"api_port": 8080, **expose})


@pytest.fixture
async def backend(shared_dir: Path, tmp_path: Path) -> AsyncIterator[LocalBackend]:
    found = sandbox()
    store = ImageStore(shared_dir / "images", max_bytes=64 << 20)
    store.open()
    work = shared_dir / "work"
    work.mkdir()
    work.chmod(0o711)
    backend = LocalBackend(
        stores=Stores(LocalObjectStore(tmp_path / "buckets")),
        sandbox=found,
        work_root=work,
        concurrency=1,
        job_timeout=60,
        expose_timings=TIMINGS,
        images=ServiceImages(store, mode=ImageMode.PULL, sandboxed=found.sandboxed),
    )
    yield backend
    await backend.stop()


async def get(backend: LocalBackend, svc: Service, path: str = "/") -> httpx.Response:
    assert backend.exposed is not None
    endpoint = await backend.exposed.endpoint(svc)
    transport = httpx.AsyncHTTPTransport(uds=endpoint.unix_socket)
    async with httpx.AsyncClient(transport=transport, base_url=endpoint.url, timeout=10) as client:
        return await client.get(path)


async def served(backend: LocalBackend, svc: Service, within: float = 30.0) -> httpx.Response:
    """The first 200 the instance answers (its server may take a moment after its port opens)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            answer = await get(backend, svc)
            if answer.status_code == 200:
                return answer
        except (httpx.HTTPError, ExposedUnavailable):
            pass
        assert asyncio.get_running_loop().time() < deadline, "the exposed service never answered"
        await asyncio.sleep(0.1)


async def test_an_exposed_service_runs_its_server_in_its_image(
    registry: Registry, busybox_base: bytes, backend: LocalBackend
) -> None:
    image = OciImage(
        [busybox_base, layer([Entry("etc/flavour", b"served-from-the-image\n")])],
        env=["PATH=/bin", "GREETING=hello from the config"],
    )
    svc = exposed(registry.push("exposed/probe", "v1", image))
    assert backend.exposed is not None
    await backend.exposed.expose(svc)
    text = (await served(backend, svc)).text
    assert "served-from-the-image" in text  # a file only the image has
    assert "greeting=hello from the config" in text  # the image's Env
    assert "no python" in text  # the host's tools are not there (the relay needs none inside)
    logs = "\n".join(line for _, line in await backend.exposed.logs(svc, tail_lines=100))
    assert f"Pulled image {svc.image}" in logs


async def test_default_command_runs_the_images_entrypoint_and_cmd(
    registry: Registry, busybox_base: bytes, backend: LocalBackend
) -> None:
    image = OciImage(
        [busybox_base, layer([Entry("www/index.html", b"the image's own server\n")])],
        entrypoint=["/bin/busybox", "httpd", "-f"],
        cmd=["-p", "127.0.0.1:8080", "-h", "/www"],
    )
    svc = exposed(registry.push("exposed/entrypoint", "v1", image), script="exit 3\n", default_command=True)
    assert backend.exposed is not None
    await backend.exposed.expose(svc)
    assert (await served(backend, svc)).text == "the image's own server\n"


async def test_default_command_of_an_image_without_one_fails_saying_so(
    registry: Registry, busybox_base: bytes, backend: LocalBackend
) -> None:
    svc = exposed(registry.push("exposed/nocommand", "v1", OciImage([busybox_base])), default_command=True)
    assert backend.exposed is not None
    await backend.exposed.expose(svc)
    deadline = asyncio.get_running_loop().time() + 30
    while (state := await backend.exposed.state(svc)).state != "failed":
        assert asyncio.get_running_loop().time() < deadline, state
        await asyncio.sleep(0.1)
    assert "has no Entrypoint or Cmd" in state.reason


async def test_an_image_that_does_not_exist_fails_the_deployment_with_the_registrys_answer(
    registry: Registry, backend: LocalBackend
) -> None:
    svc = exposed(f"{registry.host}/exposed/missing:v1")
    assert backend.exposed is not None
    await backend.exposed.expose(svc)
    deadline = asyncio.get_running_loop().time() + 30
    while (state := await backend.exposed.state(svc)).state != "failed":
        assert asyncio.get_running_loop().time() < deadline, state
        await asyncio.sleep(0.1)
    assert "exposed/missing" in state.reason
    with pytest.raises(ExposedUnavailable):
        await backend.exposed.endpoint(svc)
