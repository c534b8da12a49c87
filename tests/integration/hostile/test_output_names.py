"""Issue 12, item 8 (its output-name part): an output file whose name is not UTF-8 can be neither an
object key nor a zip entry. It is skipped, with a warning in the job's log, in stage-out and in the sync
answer; the other outputs go on as usual, never a 500.
"""

from __future__ import annotations

import base64

import httpx
import pytest

from oscar_manager.settings import Settings
from tests.support.app import app_client
from tests.support.factories import service_body
from tests.support.jobs import wait_for_jobs

pytestmark = pytest.mark.asyncio

# One good output and one named with the byte 0xff (and a folder named so, with a file in it).
SCRIPT = (
    'printf ok > "$TMP_OUTPUT_DIR/ok.txt"\n'
    "printf x > \"$TMP_OUTPUT_DIR/bad$(printf '\\377')name\"\n"
    "bad_dir=\"$TMP_OUTPUT_DIR/dir$(printf '\\376')\"\n"
    'mkdir "$bad_dir" && printf y > "$bad_dir/in.txt"\n'
    "echo done\n"
)


async def check(client: httpx.AsyncClient, name: str, *, within: float) -> None:
    body = service_body(
        name,
        script=SCRIPT,
        input=[{"storage_provider": "minio", "path": f"{name}/in"}],
        output=[{"storage_provider": "minio", "path": f"{name}/out"}],
    )
    assert (await client.post("/system/services", json=body)).status_code == 201

    answer = await client.post(f"/run/{name}", content=base64.b64encode(b"x"))
    assert answer.status_code == 200, answer.text[:500]
    assert answer.content == base64.b64encode(b"ok")  # the one output that has a name

    assert (await client.post(f"/job/{name}", content=base64.b64encode(b"x"))).status_code == 201
    ((job_name, job),) = (await wait_for_jobs(client, name, count=1, within=within)).items()
    log = (await client.get(f"/system/logs/{name}/{job_name}")).text
    assert job["status"] == "Succeeded", log
    assert "not valid UTF-8" in log
    listed = (await client.get(f"/system/buckets/{name}")).json()["objects"]
    assert [item["object_name"] for item in listed] == ["in/", "out/", "out/ok.txt"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_local_backend_skips_names_that_are_not_utf8(settings: Settings, bwrap: str) -> None:
    async with app_client(settings) as client:
        await check(client, "bad-names", within=30)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_kubernetes_supervisor_skips_names_that_are_not_utf8(kubernetes_settings: Settings) -> None:
    async with app_client(kubernetes_settings) as client:
        await check(client, "bad-names-kube", within=90)
