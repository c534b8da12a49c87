"""An exposed service end to end through the manager on Kubernetes (issue 18): created with
``POST /system/services`` on a manager whose backend is the real control plane's (as the shipped
ServiceAccount), its Deployment's pods played Running and Ready by the test's manual kubelet, and
``/system/services/{name}/exposed/...`` answered through the manager's proxy, HTTP and websockets; the
deployment status the dashboard shows going from pending to ready; stop, start, restart, update and
delete acting on the cluster's objects.

Nothing listens at a pod's address on this plane (the kubelet runs no container), so the backend's
``resolve`` hook (``tests.support.app.give_kubernetes_resolve``) maps every pod address to a loopback
server standing in for the pods (``tests.support.exposer``); the test checks the hook was asked for the
addresses of the ready pods, so what the proxy reaches is chosen from the cluster's EndpointSlices.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.support.app import NO_AUTH, give_kubernetes_resolve, served_app
from tests.support.cluster_view import Cluster, until_async
from tests.support.exposer import LoopbackServer, Resolved, loopback_server
from tests.support.factories import ADMIN_PASSWORD, service_body

# The Kubernetes variants run on SQLite only (as ``conftest`` does for the API tests' other ones).
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

# Upstream's ServiceDeploymentStatus, every field the dashboard reads (``models/deployment.ts``).
STATUS_FIELDS = {
    "service_name",
    "namespace",
    "state",
    "reason",
    "last_transition_time",
    "active_instances",
    "affected_instances",
    "resource_kind",
}
# What it may leave out (Go's omitempty; optional in the dashboard's model).
OPTIONAL_FIELDS = {"reason", "last_transition_time"}
# Go's metav1.Time: UTC, seconds (the dashboard gives it to ``new Date``).
GO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
NODE_PATCH = {"Content-Type": "application/merge-patch+json"}


@dataclass
class Manager:
    cluster: Cluster
    instance: LoopbackServer
    resolved: Resolved
    url: str  # the served manager's
    http: httpx.AsyncClient  # to it, as the admin

    async def deployment(self) -> dict[str, Any]:
        answer = await self.http.get("/system/services/web/deployment")
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    async def until_state(self, state: str, *, within: float = 60) -> dict[str, Any]:
        found: dict[str, Any] = await until_async(
            self.deployment, lambda status: status["state"] == state, within=within
        )
        return found

    async def kube(self, kind: str, name: str) -> dict[str, Any] | None:
        paths = {
            "deployments": "/apis/apps/v1",
            "services": "/api/v1",
            "horizontalpodautoscalers": "/apis/autoscaling/v2",
        }
        answer = await self.cluster.http.get(
            f"{paths[kind]}/namespaces/{self.cluster.namespace}/{kind}/{name}"
        )
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        found: dict[str, Any] = answer.json()
        return found

    async def pods(self) -> list[dict[str, Any]]:
        answer = await self.cluster.http.get(
            f"/api/v1/namespaces/{self.cluster.namespace}/pods",
            params={"labelSelector": "app=oscar-svc-exp-web"},  # upstream's label
        )
        answer.raise_for_status()
        live = [p for p in answer.json()["items"] if not p["metadata"].get("deletionTimestamp")]
        return sorted(live, key=lambda pod: str(pod["metadata"]["name"]))

    async def schedulable(self, allowed: bool) -> None:
        """Cordon or uncordon the test's node: while cordoned, new pods wait to be scheduled."""
        answer = await self.cluster.http.patch(
            f"/api/v1/nodes/{self.cluster.kubelet.node}",
            json={"spec": {"unschedulable": not allowed}},
            headers=NODE_PATCH,
        )
        answer.raise_for_status()


@pytest.fixture
async def manager(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Manager]:
    """The manager on the Kubernetes backend, served on a loopback port (websockets need a server)."""
    async with loopback_server() as instance:
        port = urlsplit(instance.url).port
        assert port is not None
        resolved = Resolved(port)
        give_kubernetes_resolve(monkeypatch, resolved)
        async with (
            served_app(cluster.settings) as (_app, url),
            httpx.AsyncClient(base_url=url, auth=("oscar", ADMIN_PASSWORD), timeout=30) as http,
        ):
            yield Manager(cluster, instance, resolved, url, http)


def exposed_body(**changes: Any) -> dict[str, Any]:
    return service_body(
        "web",
        script="exec my-server --port 8080\n",
        environment={"variables": {"GREETING": "hello"}},
        expose={"api_port": [8080], "min_scale": 1, "max_scale": 2, "cpu_threshold": 80},
        **changes,
    )


async def test_an_exposed_service_is_served_through_the_manager_once_its_pod_is_ready(
    manager: Manager,
) -> None:
    # Cordoned: the pod waits to be scheduled, and the service is pending (as the dashboard shows it).
    await manager.schedulable(False)
    created = await manager.http.post("/system/services", json=exposed_body())
    assert created.status_code == 201, created.text
    pending = await manager.deployment()
    assert pending["state"] == "pending"
    assert (pending["active_instances"], pending["resource_kind"]) == (0, "exposed_service")
    early = await manager.http.get("/system/services/web/exposed/", auth=NO_AUTH)
    assert early.status_code == 503
    assert "no instance ready" in early.text

    await manager.schedulable(True)
    ready = await manager.until_state("ready")
    assert set(ready) == STATUS_FIELDS
    assert ready["service_name"] == "web"
    assert ready["namespace"] == manager.cluster.namespace
    assert (ready["active_instances"], ready["affected_instances"]) == (1, 0)
    assert ready["resource_kind"] == "exposed_service"
    assert GO_TIME.fullmatch(ready["last_transition_time"]), ready["last_transition_time"]

    # Through the proxy to "the pod": the address the cluster gave it, on api_port.
    answer = await until_async(
        lambda: manager.http.get("/system/services/web/exposed/hello?x=1", auth=NO_AUTH),
        lambda found: found.status_code == 200,
    )
    assert answer.json()["path"] == "/hello?x=1"
    (pod,) = await manager.pods()
    assert set(manager.resolved.asked) == {(pod["status"]["podIP"], 8080)}
    # The dashboard's liveness probe of the exposed URL (HEAD, no credentials).
    head = await manager.http.head("/system/services/web/exposed/", auth=NO_AUTH)
    assert head.status_code == 200

    host = manager.url.removeprefix("http://")
    async with connect(f"ws://{host}/system/services/web/exposed/ws?x=1") as socket:
        assert await socket.recv() == f"hello {host} /ws?x=1"
        await socket.send("over the cluster")
        assert await socket.recv() == "over the cluster"

    # The pod's log through the apiserver, as the dashboard's Deployment page asks for it.
    manager.cluster.kubelet.logs[(manager.cluster.namespace, pod["metadata"]["name"])].lines = [
        ("2026-01-01T00:00:01.123456789Z", b"listening on 8080\n"),
        ("2026-01-01T00:00:02.000000000Z", b"GET /hello\n"),
    ]
    logs = await manager.http.get(
        "/system/services/web/deployment/logs", params={"timestamps": "true", "tailLines": "200"}
    )
    assert logs.status_code == 200, logs.text
    assert logs.json() == {
        "service_name": "web",
        "available": True,
        "entries": [
            {"timestamp": "2026-01-01T00:00:01Z", "message": "listening on 8080"},
            {"timestamp": "2026-01-01T00:00:02Z", "message": "GET /hello"},
        ],
    }


async def test_stop_start_restart_update_and_delete_act_on_the_cluster(manager: Manager) -> None:
    created = await manager.http.post("/system/services", json=exposed_body())
    assert created.status_code == 201, created.text
    await manager.until_state("ready")
    (first,) = await manager.pods()

    stopped = await manager.http.post("/system/services/web/stop")
    assert stopped.status_code == 200, stopped.text
    assert STATUS_FIELDS - OPTIONAL_FIELDS <= set(stopped.json()) <= STATUS_FIELDS
    assert (stopped.json()["state"], stopped.json()["resource_kind"]) == ("stopped", "exposed_service")
    deployment = await manager.kube("deployments", "web-dpl")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 0
    assert await manager.kube("horizontalpodautoscalers", "web-hpa") is None
    refused = await manager.http.get("/system/services/web/exposed/", auth=NO_AUTH)
    assert refused.status_code == 503
    assert "is stopped" in refused.text
    await until_async(manager.pods, lambda pods: pods == [], within=60)
    logs = (await manager.http.get("/system/services/web/deployment/logs")).json()
    assert (logs["available"], logs["entries"]) == (False, [])

    started = await manager.http.post("/system/services/web/start")
    assert started.status_code == 200, started.text
    assert started.json()["state"] in ("pending", "ready")
    await manager.until_state("ready")
    assert await manager.kube("horizontalpodautoscalers", "web-hpa") is not None
    await until_async(
        lambda: manager.http.get("/system/services/web/exposed/", auth=NO_AUTH),
        lambda found: found.status_code == 200,
    )
    (second,) = await manager.pods()
    assert second["metadata"]["name"] != first["metadata"]["name"]

    restarted = await manager.http.post("/system/services/web/restart")
    assert restarted.status_code == 200, restarted.text
    (third,) = await until_async(
        manager.pods,
        lambda pods: len(pods) == 1 and pods[0]["metadata"]["name"] != second["metadata"]["name"],
        within=60,
    )
    await manager.until_state("ready")

    # An update (the dashboard's "restart" in its app pages is a PUT of the service as listed) rolls
    # the pods out with the new definition.
    listed = {s["name"]: s for s in (await manager.http.get("/system/services")).json()}["web"]
    listed["environment"]["variables"]["GREETING"] = "bye"
    updated = await manager.http.put("/system/services", json=listed)
    assert updated.status_code == 204, updated.text
    rolled = await until_async(
        manager.pods,
        lambda pods: len(pods) == 1 and pods[0]["metadata"]["name"] != third["metadata"]["name"],
        within=60,
    )
    env = {e["name"]: e.get("value") for e in rolled[0]["spec"]["containers"][0]["env"]}
    assert env["GREETING"] == "bye"
    await manager.until_state("ready")

    assert (await manager.http.delete("/system/services/web")).status_code == 204
    for kind, name in (
        ("deployments", "web-dpl"),
        ("services", "web-svc"),
        ("horizontalpodautoscalers", "web-hpa"),
    ):
        assert await manager.kube(kind, name) is None, kind
    gone = await manager.http.get("/system/services/web/exposed/", auth=NO_AUTH)
    assert gone.status_code == 404
    await until_async(manager.pods, lambda pods: pods == [], within=60)
