"""Exposed services on the real control plane (``tests.support.controlplane``), as the shipped
ServiceAccount: their objects accepted by the apiserver, created, updated (a rollout) and deleted; their
pods (played by the test's manual runner kubelet: Running and Ready, each with an address of its own)
seen ready, stopped, started and restarted through the real Deployment, ReplicaSet, EndpointSlice and HPA
controllers; their logs read through the apiserver's ``pods/log``.

The manager runs outside the cluster here, so :meth:`endpoint` picks a ready pod's address from the
Service's EndpointSlices; the backend's ``resolve`` hook maps it to a loopback server standing in for the
pod (nothing listens at a pod address on this plane). A container in CrashLoopBackOff is reported by the
test as a kubelet would (a pod status patch): the manual kubelet cannot be made to crash-loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aiohttp import web

from oscar_manager.backends import exposed_manifests as objects
from oscar_manager.backends import manifests
from oscar_manager.backends.exposed import ExposedUnavailable
from oscar_manager.backends.exposed_kube import KubeExposer
from oscar_manager.backends.kubernetes import KubernetesBackend
from oscar_manager.domain.service import Service
from tests.support.cluster_view import Cluster, until_async
from tests.support.exposer import Resolved
from tests.support.factories import stored_service
from tests.support.runner_kubelet import PodLog

PLURALS = {
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "Service": "/api/v1/namespaces/{ns}/services",
    "HorizontalPodAutoscaler": "/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers",
    "Ingress": "/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses",
    "Secret": "/api/v1/namespaces/{ns}/secrets",
}


def exposed(namespace: str, name: str = "web", **expose: Any) -> Service:
    return stored_service(
        name,
        namespace=namespace,
        image="nginx",
        script="exec nginx -g 'daemon off;'\n",
        environment={"variables": {"GREETING": "hello"}},
        expose={"api_port": [8080], "min_scale": 2, "max_scale": 4, **expose},
    )


@contextlib.asynccontextmanager
async def loopback_server() -> AsyncIterator[int]:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=f"pod answered {request.path}")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@dataclass
class Exposing:
    cluster: Cluster
    kube: KubernetesBackend
    resolved: Resolved

    @property
    def exposer(self) -> KubeExposer:
        assert isinstance(self.kube.exposed, KubeExposer)
        return self.kube.exposed

    async def get(self, kind: str, name: str) -> dict[str, Any] | None:
        answer = await self.cluster.http.get(f"{PLURALS[kind].format(ns=self.cluster.namespace)}/{name}")
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        found: dict[str, Any] = answer.json()
        return found

    async def pods(self, service: Service) -> list[dict[str, Any]]:
        answer = await self.cluster.http.get(
            f"/api/v1/namespaces/{self.cluster.namespace}/pods",
            params={"labelSelector": objects.pod_selector(service)},
        )
        live = [p for p in answer.json()["items"] if not p["metadata"].get("deletionTimestamp")]
        return sorted(live, key=lambda pod: str(pod["metadata"]["name"]))

    async def running_pods(self, service: Service, count: int) -> list[dict[str, Any]]:
        """Wait for ``count`` pods running, and none other (a rollout's or a stop's done)."""

        def done(pods: list[dict[str, Any]]) -> bool:
            return len(pods) == count and all(p["status"].get("phase") == "Running" for p in pods)

        found: list[dict[str, Any]] = await until_async(lambda: self.pods(service), done, within=60)
        return found


@pytest.fixture
async def exposing(cluster: Cluster) -> AsyncIterator[Exposing]:
    config = cluster.settings.oscar_kubeconfig
    assert config is not None
    cluster_config = manifests.ClusterConfig(
        manager_image="registry.example/oscar-manager:test", ttl_seconds=600
    )
    async with loopback_server() as port:
        resolved = Resolved(port)
        async with KubernetesBackend.connect(
            kubeconfig=config,
            namespace=cluster.namespace,
            cluster=cluster_config,
            concurrency=4,
            resolve=resolved,
        ) as kube:
            yield Exposing(cluster, kube, resolved)


async def test_the_apiserver_accepts_every_object_of_an_exposed_service(cluster: Cluster) -> None:
    """Server-side dry runs (strict field validation) as the admin: every field known and valid."""
    hosted = manifests.ClusterConfig(manager_image="m:1", ttl_seconds=1, ingress_host="oscar.example.org")
    ns = cluster.namespace
    for service in (
        exposed(ns, health_path="/ready", rewrite_target=True, set_auth=True),
        exposed(ns, "nodes", api_port=[8080, 9090], nodePort=[0, 0], default_command=True),
    ):
        for obj in (
            objects.deployment(service, cluster=hosted, replicas=2),
            objects.kube_service(service),
            objects.hpa(service),
            objects.ingress(service, cluster=hosted),
            objects.auth_secret(service),
        ):
            answer = await cluster.http.post(
                PLURALS[obj["kind"]].format(ns=ns),
                params={"dryRun": "All", "fieldValidation": "Strict"},
                json=obj,
            )
            assert answer.status_code == 201, (obj["kind"], answer.text)


async def test_an_exposed_service_is_created_served_updated_and_deleted(exposing: Exposing) -> None:
    ns, kube, exposer = exposing.cluster.namespace, exposing.kube, exposing.exposer
    service = exposed(ns)
    await kube.prepare_service(service)
    await exposer.expose(service)

    deployment = await exposing.get("Deployment", "web-dpl")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 2
    svc = await exposing.get("Service", "web-svc")
    assert svc is not None
    assert svc["spec"]["type"] == "ClusterIP"
    hpa = await exposing.get("HorizontalPodAutoscaler", "web-hpa")
    assert hpa is not None
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
    assert await exposing.get("Ingress", "web-ing") is None  # off unless the operator asks

    # Its pods run and become ready: the service is ready, and a request goes to one of them.
    pods = await exposing.running_pods(service, 2)
    state = await until_async(lambda: exposer.state(service), lambda s: s.state == "ready")
    assert (state.active_instances, state.affected_instances) == (2, 0)
    endpoint = await until_async(
        lambda: _endpoint_or_none(exposing, service), lambda found: found is not None
    )
    assert endpoint.url == f"http://127.0.0.1:{exposing.resolved.port}"
    addresses = {pod["status"]["podIP"] for pod in pods}
    assert {address for address, _ in exposing.resolved.asked} <= addresses
    assert {port for _, port in exposing.resolved.asked} == {8080}
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{endpoint.url}/hello")).text == "pod answered /hello"
    # Spread over the ready pods.
    for _ in range(4):
        await exposer.endpoint(service)
    assert {address for address, _ in exposing.resolved.asked} == addresses

    # The logs of both pods, through the apiserver, merged by time.
    first, second = pods
    exposing.cluster.kubelet.logs[(ns, first["metadata"]["name"])] = PodLog(
        lines=[("2026-01-01T00:00:01.000000000Z", b"one\n"), ("2026-01-01T00:00:03.000000000Z", b"three\n")]
    )
    exposing.cluster.kubelet.logs[(ns, second["metadata"]["name"])] = PodLog(
        lines=[("2026-01-01T00:00:02.000000000Z", b"two\n"), ("2026-01-01T00:00:04.000000000Z", b"four\n")]
    )
    assert await exposer.logs(service, tail_lines=3) == [
        ("2026-01-01T00:00:02.000000000Z", "two"),
        ("2026-01-01T00:00:03.000000000Z", "three"),
        ("2026-01-01T00:00:04.000000000Z", "four"),
    ]

    # An update rolls the pods out with the new definition; the Service and HPA follow it.
    updated = exposed(ns, min_scale=1, max_scale=3, nodePort=[0])
    updated = updated.model_copy(
        update={"environment": service.environment.model_copy(update={"variables": {"GREETING": "bye"}})}
    )
    await exposer.expose(updated, previous=service)
    deployment = await exposing.get("Deployment", "web-dpl")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 2  # what ran, within the new bounds
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GREETING"] == "bye"
    svc = await exposing.get("Service", "web-svc")
    assert svc is not None
    assert svc["spec"]["type"] == "NodePort"
    assert svc["spec"]["ports"][0]["nodePort"] > 0  # picked by the cluster
    hpa = await exposing.get("HorizontalPodAutoscaler", "web-hpa")
    assert hpa is not None
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
    rolled = await until_async(
        lambda: exposing.pods(updated),
        lambda found: (
            len(found) == 2
            and not {p["metadata"]["name"] for p in found} & {p["metadata"]["name"] for p in pods}
        ),
        within=60,
    )
    assert all(
        {e["name"]: e.get("value") for e in p["spec"]["containers"][0]["env"]}["GREETING"] == "bye"
        for p in rolled
    )

    # Deleted: every object goes, and deleting again is nothing.
    await exposer.unexpose(updated)
    for kind, name in (
        ("Deployment", "web-dpl"),
        ("Service", "web-svc"),
        ("HorizontalPodAutoscaler", "web-hpa"),
    ):
        assert await exposing.get(kind, name) is None
    await until_async(lambda: exposing.pods(updated), lambda found: found == [], within=60)
    await exposer.unexpose(updated)


async def _endpoint_or_none(exposing: Exposing, service: Service) -> Any:
    assert exposing.kube.exposed is not None
    try:
        return await exposing.exposer.endpoint(service)
    except ExposedUnavailable:
        return None


async def test_stop_start_and_restart_act_on_the_deployment_and_the_hpa(exposing: Exposing) -> None:
    ns, kube, exposer = exposing.cluster.namespace, exposing.kube, exposing.exposer
    service = exposed(ns, min_scale=1)
    await kube.prepare_service(service)
    await exposer.expose(service)
    (before,) = await exposing.running_pods(service, 1)
    await until_async(lambda: exposer.state(service), lambda s: s.state == "ready")

    await exposer.stop(service)
    deployment = await exposing.get("Deployment", "web-dpl")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 0
    assert await exposing.get("HorizontalPodAutoscaler", "web-hpa") is None  # it would scale it back
    await exposing.running_pods(service, 0)
    state = await exposer.state(service)
    assert (state.state, state.reason) == ("stopped", "Deployment is stopped.")
    with pytest.raises(ExposedUnavailable, match="is stopped"):
        await exposer.endpoint(service)

    # An update of a stopped service keeps it stopped (and without its HPA).
    await exposer.expose(service, previous=service)
    deployment = await exposing.get("Deployment", "web-dpl")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 0
    assert await exposing.get("HorizontalPodAutoscaler", "web-hpa") is None

    await exposer.start(service)
    deployment = await exposing.get("Deployment", "web-dpl")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 1
    assert await exposing.get("HorizontalPodAutoscaler", "web-hpa") is not None
    (started,) = await exposing.running_pods(service, 1)
    await until_async(lambda: exposer.state(service), lambda s: s.state == "ready")
    await exposer.start(service)  # running: nothing changes
    assert [p["metadata"]["name"] for p in await exposing.pods(service)] == [started["metadata"]["name"]]

    # Restart: the rollout-restart annotation on the pod template, and a new pod replaces the old.
    await exposer.restart(service)
    deployment = await exposing.get("Deployment", "web-dpl")
    assert deployment is not None
    assert objects.RESTARTED_AT_ANNOTATION in deployment["spec"]["template"]["metadata"]["annotations"]
    (after,) = await until_async(
        lambda: exposing.pods(service),
        lambda found: len(found) == 1 and found[0]["metadata"]["name"] != started["metadata"]["name"],
        within=60,
    )
    assert after["metadata"]["name"] not in (before["metadata"]["name"], started["metadata"]["name"])


async def test_a_crash_looping_instance_makes_the_service_failed_with_the_reason(exposing: Exposing) -> None:
    ns, kube, exposer = exposing.cluster.namespace, exposing.kube, exposing.exposer
    service = exposed(ns, min_scale=1)
    await kube.prepare_service(service)
    await exposer.expose(service)
    (pod,) = await exposing.running_pods(service, 1)
    await until_async(lambda: exposer.state(service), lambda s: s.state == "ready")

    # What a kubelet reports of a container that keeps exiting.
    waiting = {
        "reason": "CrashLoopBackOff",
        "message": "back-off 20s restarting failed container=oscar-container",
    }
    status = {
        "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
        "containerStatuses": [
            {
                "name": "oscar-container",
                "image": "nginx",
                "imageID": "",
                "ready": False,
                "restartCount": 3,
                "state": {"waiting": waiting},
            }
        ],
    }
    answer = await exposing.cluster.http.patch(
        f"/api/v1/namespaces/{ns}/pods/{pod['metadata']['name']}/status",
        json={"status": status},
        headers={"Content-Type": "application/strategic-merge-patch+json"},
    )
    answer.raise_for_status()
    state = await until_async(lambda: exposer.state(service), lambda s: s.state == "failed")
    assert state.reason == f"CrashLoopBackOff: {waiting['message']}"
    assert (state.active_instances, state.affected_instances) == (0, 1)
    # No instance to send a request to: a 503 saying so.
    with pytest.raises(ExposedUnavailable, match="no instance ready"):
        await exposer.endpoint(service)
    await exposer.unexpose(service)


async def test_state_of_a_service_without_its_deployment_says_so(exposing: Exposing) -> None:
    assert exposing.kube.exposed is not None
    with pytest.raises(ExposedUnavailable, match="no deployment"):
        await exposing.exposer.state(exposed(exposing.cluster.namespace, "missing"))
