"""The dashboard's Status, Deployment, Volumes, Quotas and Metrics calls: upstream's shapes and codes."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import httpx
import pytest

from oscar_manager.settings import Settings
from tests.support.app import app_client
from tests.support.cluster_view import Cluster, until_async
from tests.support.controlplane import KWOK_NODE
from tests.support.factories import service_body
from tests.support.jobs import all_jobs, wait_for_jobs
from tests.support.kube_api import KubeApiDouble, _node, on_kubernetes

pytestmark = pytest.mark.asyncio

POD_STATES = {"Pending", "Running", "Succeeded", "Failed", "Unknown"}


async def test_status_in_upstream_shape(client: httpx.AsyncClient) -> None:
    assert (await client.post("/system/buckets", json={"bucket_name": "stat"})).status_code == 201
    put = await client.put("/system/buckets/stat/objects/keep/data.txt", content=b"twelve bytes")
    assert put.status_code == 201

    response = await client.get("/system/status")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"cluster", "oscar", "minio"}
    cluster = body["cluster"]
    assert cluster["nodes_count"] == len(cluster["nodes"]) >= 1
    assert set(cluster["metrics"]["cpu"]) == {
        "total_free_cores",
        "max_free_on_node_cores",
        "total_schedulable_cores",
        "total_schedulable_on_node_cores",
    }
    node = cluster["nodes"][0]
    assert node["status"] == "Ready"
    assert {"type": "Ready", "status": True} in node["conditions"]
    assert node["cpu"]["capacity_cores"] >= 1000
    assert node["memory"]["capacity_bytes"] > 0
    assert cluster["metrics"]["cpu"]["total_free_cores"] == sum(
        n["cpu"]["capacity_cores"] - n["cpu"].get("usage_cores", 0) for n in cluster["nodes"]
    )
    oscar = body["oscar"]
    assert oscar["deployment_name"] == "oscar"
    assert oscar["ready"] is True
    assert set(oscar["pods"]["states"]) == POD_STATES  # the admin sees the job counts
    assert oscar["jobs_count"] == oscar["pods"]["total"] == sum(oscar["pods"]["states"].values())
    assert body["minio"]["buckets_count"] >= 1
    assert body["minio"]["total_objects"] >= 1  # the upload; the empty folder markers are not counted


async def test_status_needs_credentials(settings: Settings) -> None:
    async with app_client(settings, auth=False) as anonymous:
        assert (await anonymous.get("/system/status")).status_code == 401


async def test_kubernetes_status_from_nodes_and_metrics(
    settings: Settings, double: tuple[KubeApiDouble, str], tmp_path: Path
) -> None:
    """On the API double: the tests' control plane serves no metrics API (metrics-server needs kubelets
    that measure), so usage figures can only come from the double."""
    api, url = double
    control = _node("control", cpu="2", memory="2Gi")
    control["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] = ""
    api.nodes = [control, _node("node-1"), _node("node-2", ready="False")]
    api.node_usage = {"control": {"cpu": "1", "memory": "1Gi"}, "node-1": {"cpu": "250m", "memory": "1Gi"}}
    async with app_client(on_kubernetes(settings, url, tmp_path)) as client:
        body = (await client.get("/system/status")).json()

    # The control plane is left out, and node-2 with it since the metrics API does not report on it.
    assert [node["name"] for node in body["cluster"]["nodes"]] == ["node-1"]
    node = body["cluster"]["nodes"][0]
    assert node["cpu"] == {"capacity_cores": 4000, "usage_cores": 250}
    assert node["memory"] == {"capacity_bytes": 8 * 2**30, "usage_bytes": 2**30}
    assert body["cluster"]["metrics"]["cpu"]["total_free_cores"] == 3750
    assert body["cluster"]["metrics"]["memory"]["max_free_on_node_bytes"] == 7 * 2**30


async def test_kubernetes_status_without_metrics_api_lists_the_nodes_without_usage(cluster: Cluster) -> None:
    """On the real control plane, which serves no metrics API: upstream answers 500 here and the
    dashboard's Status page spins forever; we answer what is known, the nodes' capacity and what the
    jobs' pods request."""
    async with app_client(cluster.settings) as client:
        body = service_body("busy", cpu="0.5", memory="1Gi")
        assert (await client.post("/system/services", json=body)).status_code == 201
        token = (await client.get("/system/services/busy")).json()["token"]
        answer = await client.post("/job/busy", content=b"e30=", headers={"Authorization": f"Bearer {token}"})
        job_id = answer.headers["X-Oscar-Job-Ids"]
        await until_async(
            lambda: all_jobs(client, "busy"), lambda jobs: jobs.get(job_id, {}).get("status") == "Running"
        )
        response = await client.get("/system/status")
        await cluster.kubelet.finish(job_id, succeeded=True)
    assert response.status_code == 200, response.text
    nodes = {node["name"]: node for node in response.json()["cluster"]["nodes"]}
    assert {cluster.kubelet.node, KWOK_NODE} <= set(nodes)
    # Usage is left out (Go's omitempty of a zero), capacity and requests are there.
    mine = nodes[cluster.kubelet.node]
    assert mine["cpu"] == {"capacity_cores": 8000, "request_cores": 500}
    assert mine["memory"] == {"capacity_bytes": 16 * 2**30, "request_bytes": 2**30}
    metrics = response.json()["cluster"]["metrics"]
    # Free is what the requests leave when nothing measures usage.
    assert metrics["cpu"]["total_free_cores"] == sum(
        node["cpu"]["capacity_cores"] - node["cpu"].get("request_cores", 0) for node in nodes.values()
    )


class TestDeployment:
    async def test_status_of_a_service_that_is_not_exposed(
        self, client: httpx.AsyncClient, backend_settings: Settings
    ) -> None:
        assert (await client.post("/system/services", json=service_body("dep"))).status_code == 201
        response = await client.get("/system/services/dep/deployment")
        assert response.status_code == 200
        assert response.json() == {
            "service_name": "dep",
            "namespace": backend_settings.oscar_services_namespace,
            "state": "unavailable",
            "reason": "Current deployment visibility is unavailable for this service runtime.",
            "active_instances": 0,
            "affected_instances": 0,
            "resource_kind": "unavailable",
        }

    async def test_logs_as_the_dashboard_asks(self, client: httpx.AsyncClient) -> None:
        assert (await client.post("/system/services", json=service_body("dep"))).status_code == 201
        response = await client.get(
            "/system/services/dep/deployment/logs", params={"timestamps": "false", "tailLines": 200}
        )
        assert response.status_code == 200
        assert response.json() == {
            "service_name": "dep",
            "available": False,
            "message": "Deployment logs are unavailable for this service.",
            "entries": [],
        }

    async def test_logs_are_the_last_lines_of_the_finished_jobs(self, client: httpx.AsyncClient) -> None:
        """Upstream's answer on a plain cluster: the logs of the service's finished job pods, the last
        ``tailLines`` lines of them all by time; here from the job logs the registry keeps."""
        body = service_body("dep", script='cat "$INPUT_FILE_PATH"; echo\n', log_level="ERROR")
        assert (await client.post("/system/services", json=body)).status_code == 201
        for count, word in enumerate((b"alpha", b"beta"), start=1):
            assert (await client.post("/job/dep", content=base64.b64encode(word))).status_code == 201
            await wait_for_jobs(client, "dep", count=count)
        newest = await client.get(
            "/system/services/dep/deployment/logs", params={"timestamps": "true", "tailLines": "1"}
        )
        assert newest.status_code == 200
        assert newest.json()["available"] is True
        assert newest.json()["message"] == (
            "Returning recent logs from the last runtime attempt while deployment status remains unavailable."
        )
        ((entry),) = newest.json()["entries"]
        assert entry["message"] == "beta"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry["timestamp"])
        # tailLines that Go cannot read is 200; without timestamps=true entries have none.
        every = (await client.get("/system/services/dep/deployment/logs", params={"tailLines": "x"})).json()
        messages = [item["message"] for item in every["entries"]]
        assert all(set(item) == {"message"} for item in every["entries"])
        assert "" not in messages
        assert messages.index("alpha") < messages.index("beta")

    @pytest.mark.parametrize("path", ["deployment", "deployment/logs"])
    async def test_unknown_service(self, client: httpx.AsyncClient, path: str) -> None:
        assert (await client.get(f"/system/services/nope/{path}")).status_code == 404

    @pytest.mark.parametrize("action", ["stop", "start", "restart"])
    async def test_lifecycle_of_a_service_that_is_not_exposed(
        self, client: httpx.AsyncClient, action: str
    ) -> None:
        assert (await client.post("/system/services", json=service_body("dep"))).status_code == 201
        response = await client.post(f"/system/services/dep/{action}")
        assert response.status_code == 400
        assert "is not exposed" in response.text  # the message, whether the body is text or JSON
        assert (await client.post(f"/system/services/nope/{action}")).status_code == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/system/volumes"),
        ("GET", "/system/volumes/data"),
        ("DELETE", "/system/volumes/data"),
        ("GET", "/system/quotas/user"),
        ("GET", "/system/quotas/user/alice"),
        ("PUT", "/system/quotas/user/alice"),
        ("GET", "/system/metrics"),
        ("GET", "/system/metrics/breakdown"),
        ("GET", "/system/metrics/cowsay"),
    ],
)
async def test_features_off_answer_404_as_upstream(settings: Settings, method: str, path: str) -> None:
    async with app_client(settings) as client:
        response = await client.request(method, path)
        config = (await client.get("/system/config")).json()["config"]
    assert response.status_code == 404
    assert config["volume_enable"] is False
    assert config["kueue_enable"] is False


async def test_no_volumes_are_listed_while_the_feature_is_off(settings: Settings) -> None:
    """The dashboard's Volumes page shows an error for any refusal (it has no "unavailable" state): with the
    feature off the list is empty, and creating one is refused (above)."""
    async with app_client(settings) as client:
        listed = await client.get("/system/volumes")
    assert (listed.status_code, listed.json()) == (200, [])
