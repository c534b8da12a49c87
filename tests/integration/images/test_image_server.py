"""``oscar-manager serve`` as a real process (as ``make run`` starts it, as root here), with a service
whose image is in a registry: its sync ``/run`` and its job run inside that image, and ``/system/info``
lists it with its size."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.components import free_port
from tests.support.factories import service_body
from tests.support.jobs import wait_for_jobs
from tests.support.oci_registry import Entry, OciImage, Registry, layer
from tests.support.server import start_server, stop_server

pytestmark = pytest.mark.server

SCRIPT = 'echo "$(cat /etc/flavour) $(cat "$INPUT_FILE_PATH")"\n'


@pytest.fixture
def image_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="oscar-images-server-"))
    os.chmod(folder, 0o711)  # noqa: S103 - as /var/cache/oscar-manager: traversable by nobody
    yield folder / "images"
    shutil.rmtree(folder, ignore_errors=True)


async def test_serve_runs_a_service_in_its_pulled_image(
    registry: Registry, busybox_base: bytes, image_dir: Path, tmp_path: Path
) -> None:
    image = OciImage([busybox_base, layer([Entry("etc/flavour", b"from-the-image")])])
    reference = registry.push("server/flavour", "v1", image)
    env = {"OSCAR_LOCAL_IMAGES": "pull", "OSCAR_IMAGE_DIR": str(image_dir)}
    server = start_server(tmp_path, free_port(), env=env)
    try:
        async with httpx.AsyncClient(
            base_url=server.url, auth=("oscar", server.password()), timeout=60
        ) as http:
            created = await http.post(
                "/system/services", json=service_body("flavour", image=reference, script=SCRIPT)
            )
            assert created.status_code == 201, created.text
            ran = await http.post("/run/flavour", content=base64.b64encode(b"hello"))
            assert ran.status_code == 200, ran.text
            assert ran.text.strip() == "from-the-image hello"  # no output file: the script's output
            job = await http.post("/job/flavour", content=base64.b64encode(b"again"))
            assert job.status_code == 201, job.text
            jobs = await wait_for_jobs(http, "flavour", count=1)
            [(name, record)] = jobs.items()
            assert record["status"] == "Succeeded", record
            log = (await http.get(f"/system/logs/flavour/{name}")).text
            assert "from-the-image again" in log
            info = (await http.get("/system/info")).json()["execution"]["images"]
            assert info["mode"] == "pull"
            [cached] = info["cached"]
            assert cached["references"] == [reference]
            assert cached["size"] > 1_000_000
    finally:
        stop_server(server)


async def test_serve_exposes_a_service_from_its_image(
    registry: Registry, busybox_base: bytes, image_dir: Path, tmp_path: Path
) -> None:
    """The exposed service's server is the image's (busybox httpd; the host's is not on the path inside),
    reached through the manager's proxy, without a token as its definition allows."""
    site = layer([Entry("www/index.html", b"an image's web page\n")])
    # Port 80, as a web server's image says: a container's server may bind it, and so may this one.
    image = OciImage([busybox_base, site], entrypoint=["/bin/busybox", "httpd", "-f", "-h", "/www"])
    reference = registry.push("server/site", "v1", image)
    env = {"OSCAR_LOCAL_IMAGES": "pull", "OSCAR_IMAGE_DIR": str(image_dir)}
    server = start_server(tmp_path, free_port(), env=env)
    try:
        async with httpx.AsyncClient(
            base_url=server.url, auth=("oscar", server.password()), timeout=60
        ) as http:
            body = service_body("site", image=reference, script="exit 1\n")
            body["expose"] = {"api_port": 80, "default_command": True, "set_auth": False}
            created = await http.post("/system/services", json=body)
            assert created.status_code == 201, created.text
            page = await eventually_ok(http, "/system/services/site/exposed/")
            assert page.text == "an image's web page\n"
    finally:
        stop_server(server)


async def eventually_ok(http: httpx.AsyncClient, path: str) -> httpx.Response:
    for _ in range(300):
        answer = await http.get(path, auth=None)
        if answer.status_code == 200:
            return answer
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path} never answered 200: {answer.status_code} {answer.text}")
