"""interLink offload on the real control plane: a virtual node as interLink makes one (labelled
``virtual-node.interlink/type=virtual-kubelet``, tainted ``virtual-node.interlink/no-schedule``), played by
kwok (``tests.support.kwok_stages``). The Jobs of a service naming it are admitted by the apiserver,
scheduled there by the real scheduler past its taint, and Succeed; other services' Jobs stay off it."""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from oscar_manager.backends import interlink
from oscar_manager.settings import Settings
from tests.support.app import NO_AUTH, app_client
from tests.support.controlplane import KWOK_NODE, ControlPlane
from tests.support.jobs import settle, wait_for_jobs
from tests.support.kube_cluster import MOTO_KEYS, create_namespace, manager_settings
from tests.support.kwok_stages import KWOK_NODE_LABEL

pytestmark = pytest.mark.asyncio

# What a remote side re-creating the environment in a shell could mangle: quotes, ``$``, a newline.
BODY = b'{"note": "it\'s \\"quoted\\" in $HOME",\n "n": 1}'


@dataclass(frozen=True)
class Offload:
    manager: httpx.AsyncClient
    kube: httpx.AsyncClient
    namespace: str
    node: str  # the virtual node's name


async def _wait_ready(kube: httpx.AsyncClient, node: str) -> None:
    async with asyncio.timeout(30):
        while True:
            node_status = (await kube.get(f"/api/v1/nodes/{node}")).json().get("status", {})
            if any(
                c["type"] == "Ready" and c["status"] == "True" for c in node_status.get("conditions") or []
            ):
                return
            await asyncio.sleep(0.1)


@pytest.fixture
async def virtual_node(kube_admin: httpx.AsyncClient) -> AsyncIterator[str]:
    """A node like interLink's virtual kubelet, whose pods kwok plays; in the namespaces' ``type=kwok``."""
    name = f"vk-{secrets.token_hex(4)}"
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                KWOK_NODE_LABEL: "kwok",
                "type": "kwok",
                "kubernetes.io/hostname": name,
                interlink.NODE_TYPE_LABEL: interlink.NODE_TYPE,
            },
        },
    }
    (await kube_admin.post("/api/v1/nodes", json=node)).raise_for_status()
    try:
        await _wait_ready(kube_admin, name)
        # Ready: its taints are interLink's alone (the "not-ready" one it was created with goes, as the node
        # lifecycle controller, off here, would lift it).
        taint = {"key": interlink.TAINT_KEY, "value": "true", "effect": "NoSchedule"}
        (
            await kube_admin.patch(
                f"/api/v1/nodes/{name}",
                json={"spec": {"taints": [taint]}},
                headers={"Content-Type": "application/merge-patch+json"},
            )
        ).raise_for_status()
        yield name
    finally:
        await kube_admin.delete(f"/api/v1/nodes/{name}")


@pytest.fixture
async def offload(
    settings: Settings,
    control_plane: ControlPlane,
    kube_admin: httpx.AsyncClient,
    manager_token: str,
    virtual_node: str,
    tmp_path: Path,
) -> AsyncIterator[Offload]:
    namespace = await create_namespace(kube_admin, node="kwok", credentials=MOTO_KEYS)
    async with app_client(
        manager_settings(settings, control_plane, manager_token, namespace.name, tmp_path)
    ) as http:
        yield Offload(manager=http, kube=kube_admin, namespace=namespace.name, node=virtual_node)


def definition(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": "docker://ghcr.io/grycap/imagemagick",
        "script": "echo hi\n",
        "input": [{"path": f"{name}/in"}],
        **fields,
    }


async def invoke(http: httpx.AsyncClient, name: str, body: bytes) -> str:
    token = (await http.get(f"/system/services/{name}")).json()["token"]
    answer = await http.post(
        f"/job/{name}", content=body, headers={"Authorization": f"Bearer {token}"}, auth=NO_AUTH
    )
    assert answer.status_code == 201, answer.text
    job_id: str = answer.headers["X-Oscar-Job-Ids"]
    return job_id


async def pod_of(offload: Offload, job_id: str) -> dict[str, Any]:
    pods = await offload.kube.get(
        f"/api/v1/namespaces/{offload.namespace}/pods", params={"labelSelector": f"job-id={job_id}"}
    )
    (pod,) = pods.json()["items"]
    return dict(pod)


async def test_an_offloaded_service_runs_its_jobs_on_the_virtual_node(offload: Offload) -> None:
    annotations = {"slurm-job.vk.io/flags": "--job-name=thermal --time=02:30:00"}
    created = await offload.manager.post(
        "/system/services",
        json=definition("offloaded", interlink_node_name=offload.node, annotations=annotations),
    )
    assert created.status_code == 201, created.text
    shown = (await offload.manager.get("/system/services/offloaded")).json()
    assert shown["interlink_node_name"] == offload.node
    job_id = await invoke(offload.manager, "offloaded", BODY)

    assert (await wait_for_jobs(offload.manager, "offloaded", count=1))[job_id]["status"] == "Succeeded"
    pod = await pod_of(offload, job_id)
    assert pod["spec"]["nodeName"] == offload.node
    assert pod["metadata"]["annotations"] == annotations
    env = {item["name"]: item.get("value") for item in pod["spec"]["containers"][0]["env"]}
    assert base64.b64decode(env["EVENT"]) == BODY
    assert (await offload.manager.get(f"/system/logs/offloaded/{job_id}")).text == "a pod that kwok played\n"


async def test_other_services_jobs_stay_off_the_virtual_node(offload: Offload) -> None:
    """The node's taint keeps them off, though it is in their namespace's ``type=kwok`` too."""
    for index in range(3):
        name = f"plain-{index}"
        assert (await offload.manager.post("/system/services", json=definition(name))).status_code == 201
        job_id = await invoke(offload.manager, name, base64.b64encode(b"plain"))
        assert (await wait_for_jobs(offload.manager, name, count=1))[job_id]["status"] == "Succeeded"
        assert (await pod_of(offload, job_id))["spec"]["nodeName"] == KWOK_NODE


async def test_jobs_for_a_node_that_is_not_there_wait_pending(offload: Offload) -> None:
    """As upstream's would on a cluster that has interLink (see ``backends.interlink``)."""
    body = definition("elsewhere", interlink_node_name="no-such-node")
    assert (await offload.manager.post("/system/services", json=body)).status_code == 201
    job_id = await invoke(offload.manager, "elsewhere", base64.b64encode(b"x"))
    await settle(1.5)
    pod = await pod_of(offload, job_id)
    assert pod["status"]["phase"] == "Pending"
    assert "nodeName" not in pod["spec"]
    (condition,) = [c for c in pod["status"].get("conditions", []) if c["type"] == "PodScheduled"]
    assert condition["reason"] == "Unschedulable"


async def test_a_node_name_no_selector_could_hold_is_400_and_changes_nothing(offload: Offload) -> None:
    good = definition("renamed", interlink_node_name=offload.node)
    assert (await offload.manager.post("/system/services", json=good)).status_code == 201
    refused = await offload.manager.put("/system/services", json={**good, "interlink_node_name": "vk node"})
    assert refused.status_code == 400
    assert "interlink_node_name" in refused.text
    assert (await offload.manager.get("/system/services/renamed")).json()[
        "interlink_node_name"
    ] == offload.node
    created = await offload.manager.post(
        "/system/services", json=definition("never", interlink_node_name="-vk")
    )
    assert created.status_code == 400
    assert "interlink_node_name" in created.text
    assert (await offload.manager.get("/system/services/never")).status_code == 404


async def test_the_status_page_says_which_node_is_interlinks(offload: Offload) -> None:
    status = (await offload.manager.get("/system/status")).json()
    nodes = {node["name"]: node for node in status["cluster"]["nodes"]}
    assert nodes[offload.node]["is_interlink"] is True
    assert nodes[KWOK_NODE]["is_interlink"] is False
