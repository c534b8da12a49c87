"""Warm pods on the real control plane for the tests (``backends.warm_kube``): the backend as the shipped
ServiceAccount with exactly the shipped RBAC, and the test's node the runner kubelet, running pods in this
process (``SupervisorKubelet`` without an image): a warm pod's container runs the real supervisor server
(``supervisor serve``) on a loopback port, which the backend reaches through its ``resolve`` hook, and
the kubelet probes its readiness as a kubelet would; a Job's pod runs the real supervisor once."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from oscar_manager.backends import manifests
from oscar_manager.backends import warm_manifests as objects
from oscar_manager.backends.base import SyncRequest
from oscar_manager.backends.kubernetes import KubernetesBackend
from oscar_manager.domain.service import Service
from tests.support.cluster_view import until
from tests.support.controlplane import ControlPlane
from tests.support.factories import stored_service
from tests.support.kube_cluster import JobNamespace, manager_kubeconfig
from tests.support.kubelet import SupervisorKubelet
from tests.support.runner_kubelet import ApiObjects, RunnerKubelet

# Pods above min_scale go after a second idle (the scale-down runs only when a test asks for a round).
CLUSTER = manifests.ClusterConfig(
    manager_image="registry.example/oscar-manager:test", ttl_seconds=600, warm_idle_seconds=1.0
)
SHOUT = 'echo "log line"\ntr a-z A-Z < "$INPUT_FILE_PATH"\n'


def warm(namespace: str, name: str = "shout", script: str = SHOUT, min_scale: int = 1) -> Service:
    return stored_service(
        name,
        namespace=namespace,
        script=script,
        input=[],
        synchronous={"min_scale": min_scale, "max_scale": 3},
    )


@dataclass
class Warm:
    kube: KubernetesBackend
    pods: SupervisorKubelet
    kubelet: RunnerKubelet
    http: httpx.AsyncClient  # the apiserver, as the admin
    namespace: str

    async def deployment(self, service: Service) -> dict[str, Any] | None:
        path = f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{objects.deployment_name(service)}"
        answer = await self.http.get(path)
        return None if answer.status_code == 404 else answer.json()

    async def live_pods(self, service: Service) -> list[dict[str, Any]]:
        answer = await self.http.get(
            f"/api/v1/namespaces/{self.namespace}/pods",
            params={"labelSelector": objects.pod_selector(service)},
        )
        return [p for p in answer.json()["items"] if not p["metadata"].get("deletionTimestamp")]

    async def serving(self, count: int) -> None:
        """Until ``count`` warm pods' servers listen."""
        await until(lambda: len(self.pods.serve_ports) == count, within=60)

    async def jobs(self) -> list[str]:
        answer = await self.http.get(f"/apis/batch/v1/namespaces/{self.namespace}/jobs")
        return [job["metadata"]["name"] for job in answer.json()["items"]]

    def runs(self) -> int:
        return sum(server.runs for server in self.pods.warm_servers.values())


@asynccontextmanager
async def warm_backend(
    control_plane: ControlPlane,
    kube_admin: httpx.AsyncClient,
    manager_token: str,
    kube_namespace: JobNamespace,
    tmp_path: Path,
) -> AsyncIterator[Warm]:
    """The backend and the runner kubelet of a warm test (``tests.conftest.warm_cluster``)."""
    node = kube_namespace.node
    pods = SupervisorKubelet(ApiObjects(kube_admin), tmp_path / "pods", node=node)
    serving = control_plane.pki.node_server(node)
    config = manager_kubeconfig(control_plane, manager_token, kube_namespace.name, tmp_path)
    async with (
        RunnerKubelet.running(http=kube_admin, node=node, serving=serving, runner=pods) as kubelet,
        KubernetesBackend.connect(
            kubeconfig=config,
            namespace=kube_namespace.name,
            cluster=CLUSTER,
            concurrency=4,
            resolve=pods.resolve,
        ) as kube,
    ):
        try:
            yield Warm(kube, pods, kubelet, kube_admin, kube_namespace.name)
        finally:
            await kube.stop()


def request(service: Service, text: str, timeout: float = 20) -> SyncRequest:
    return SyncRequest(service=service, body=base64.b64encode(text.encode()), timeout=timeout)
