"""Issue 12, item 1: a script that swaps the folders of its job for links never makes the supervisor read
through them.

The supervisor reads the job folder with more rights than the script (the manager as root, or a pod's
mounted provider credentials), after the script ran. Each attack script replaces what it owns (the output
folder, a folder below it, the input folder, the job root's entries) with a link to what it must not
read: ``/etc`` and the manager's data directory on the local backend (scripts run as ``nobody`` under
bubblewrap, stage-out runs in the manager as root), the mounted credentials in a Kubernetes pod (the real
supervisor executable in a busybox root). Then nothing of the target reaches the output bucket (async
jobs) or the answer (``/run``).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from oscar_manager.domain.service import parse_service
from oscar_manager.settings import Settings
from oscar_manager.storage.local import LocalObjectStore
from oscar_manager.storage.providers import Stores
from oscar_manager.supervisor import stage
from oscar_manager.supervisor.log import SupervisorLog
from oscar_manager.supervisor.workspace import Workspace
from tests.support.app import app_client, create_io_service
from tests.support.factories import service_body
from tests.support.jobs import wait_for_jobs

pytestmark = pytest.mark.asyncio

CREDENTIALS = "/var/run/secrets/providers/minio.default"

# {target}: where the link points. Each ends with "echo done" (the answer when there is no output).
ATTACKS = {
    "output-swapped": 'rm -rf "$TMP_OUTPUT_DIR" && ln -s {target} "$TMP_OUTPUT_DIR"\necho done\n',
    # The held folder is the renamed one: its file is the script's own output.
    "output-renamed": (
        'mv "$TMP_OUTPUT_DIR" "$HOME/mine" && echo mine > "$HOME/mine/mine.txt"\n'
        'ln -s {target} "$TMP_OUTPUT_DIR"\necho done\n'
    ),
    "subfolder-linked": (
        'mkdir "$TMP_OUTPUT_DIR/sub" && echo kept > "$TMP_OUTPUT_DIR/sub/kept.txt"\n'
        'mv "$TMP_OUTPUT_DIR/sub" "$HOME/away" && ln -s {target} "$TMP_OUTPUT_DIR/sub"\necho done\n'
    ),
    "input-and-root-entries": (
        'rm -rf "$TMP_INPUT_DIR" && ln -s {target} "$TMP_INPUT_DIR"\n'
        'rm -f "$HOME/script.sh" && ln -s {target} "$HOME/script.sh" && ln -s {target} "$HOME/extra"\n'
        "echo done\n"
    ),
}
# What each attack may legitimately upload and answer: its own files, never the target's. The renamed
# output folder is still the one the supervisor holds: its file is the script's own output.
EXPECTED: dict[str, tuple[set[str], bytes]] = {
    "output-swapped": (set(), b"done\n"),
    "output-renamed": ({"mine.txt"}, base64.b64encode(b"mine\n")),
    "subfolder-linked": (set(), b"done\n"),
    "input-and-root-entries": (set(), b"done\n"),
}


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


async def make_service(client: httpx.AsyncClient, name: str, script: str) -> str:
    await create_io_service(client, name, script)
    return name


async def outputs(client: httpx.AsyncClient, bucket: str) -> set[str]:
    listed = await client.get(f"/system/buckets/{bucket}")
    assert listed.status_code == 200, listed.text
    names = [item["object_name"] for item in listed.json()["objects"]]
    return {name.removeprefix("out/") for name in names if not name.endswith("/")}  # markers are no outputs


async def attack(client: httpx.AsyncClient, name: str, script: str, *, within: float) -> dict[str, Any]:
    """Run the attack as an async job, then as /run; return what came out."""
    await make_service(client, name, script)
    started = await client.post(f"/job/{name}", content=b64(b"x"))
    assert started.status_code == 201, started.text
    ((job_name, job),) = (await wait_for_jobs(client, name, count=1, within=within)).items()
    log = await client.get(f"/system/logs/{name}/{job_name}")
    after_job = await outputs(client, name)
    answer = await client.post(f"/run/{name}", content=b64(b"x"))
    return {
        "job": job,
        "log": log.text,
        "after_job": after_job,
        "answer": answer,
        "after_run": await outputs(client, name),
    }


def assert_nothing_leaked(name: str, result: dict[str, Any], attack_name: str) -> None:
    own, answer_expected = EXPECTED[attack_name]
    assert result["job"]["status"] == "Succeeded", (result["job"], result["log"])
    assert "done" in result["log"]  # the attack script ran to its end
    assert result["after_job"] == own, f"{name}: the job uploaded {sorted(result['after_job'])}"
    assert result["after_run"] == own, f"{name}: the run uploaded {sorted(result['after_run'])}"
    answer: httpx.Response = result["answer"]
    assert answer.status_code == 200, answer.text[:2000]
    assert answer.content == answer_expected, f"{name}: /run answered {answer.content[:200]!r}"


def local_targets(settings: Settings) -> dict[str, str]:
    return {"etc": "/etc", "data": str(settings.oscar_data_dir.absolute())}


@pytest.mark.skipif(os.geteuid() != 0, reason="the attack matters where the manager is root")
@pytest.mark.parametrize("target", ["etc", "data"])
@pytest.mark.parametrize("attack_name", sorted(ATTACKS))
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_local_backend_never_reads_through_a_swapped_folder(
    settings: Settings, bwrap: str, attack_name: str, target: str
) -> None:
    settings = settings.model_copy(update={"oscar_require_sandbox": True})
    script = ATTACKS[attack_name].format(target=local_targets(settings)[target])
    name = f"{attack_name[:20]}-{target}"
    async with app_client(settings) as client:
        result = await attack(client, name, script, within=30)
    assert_nothing_leaked(name, result, attack_name)


@pytest.mark.parametrize("attack_name", sorted(ATTACKS))
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_kubernetes_supervisor_never_uploads_the_mounted_credentials(
    kubernetes_settings: Settings, attack_name: str
) -> None:
    script = ATTACKS[attack_name].format(target=CREDENTIALS)
    name = f"{attack_name[:20]}-creds"
    async with app_client(kubernetes_settings) as client:
        result = await attack(client, name, script, within=90)
    assert_nothing_leaked(name, result, attack_name)


async def test_a_folder_swapped_after_the_listing_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a pod, a process the script left behind can swap a folder while the supervisor uploads: here it
    happens, deterministically, right after the outputs were listed."""
    store = LocalObjectStore(tmp_path / "buckets")
    await store.ensure_bucket("svc")
    workspace = Workspace.create(tmp_path / "work")
    sub = workspace.output_dir / "sub"
    sub.mkdir()
    (sub / "secretKey").write_text("the script's own file")
    providers = tmp_path / "providers"
    providers.mkdir()
    (providers / "secretKey").write_text("the provider's secret")
    listed = vars(stage)["output_files"]  # what stage_out lists with (patched below)

    def list_then_swap(*args: Any) -> list[str]:
        names: list[str] = listed(*args)
        sub.rename(tmp_path / "away")
        sub.symlink_to(providers)
        return names

    monkeypatch.setattr(stage, "output_files", list_then_swap)
    service = parse_service(service_body("svc", output=[{"storage_provider": "minio", "path": "svc/out"}]))
    try:
        await stage.stage_out(
            service=service,
            invocation=stage.Invocation(b"", None),
            stores=Stores(store),
            workspace=workspace,
            log=SupervisorLog(),
        )
    finally:
        workspace.cleanup()
    uploaded = {
        info.key: b"".join([chunk async for chunk in store.read_stream("svc", info.key)])
        for info in await store.list_objects("svc")
    }
    leaked = [key for key, content in uploaded.items() if content == b"the provider's secret"]
    assert leaked == []
    assert (providers / "secretKey").read_text() == "the provider's secret"
