"""The Role and ClusterRole in deploy/kubernetes/rbac.yaml are least privilege, on the real control plane
(``tests.support.controlplane``): the Kubernetes backend, as the shipped ServiceAccount with exactly the
shipped RBAC, driven through its whole lifecycle and the cluster status, is never refused, and every
(apiGroup, resource, verb) the rules grant shows up in the apiserver's audit log. A Role or ClusterRole
edited on the apiserver to lack a verb makes the refusal reach the caller with the apiserver's reason.

This plane serves no metrics API (``metrics.k8s.io``: no metrics-server). The ClusterRole's rule for it
is still exercised: RBAC authorises a request before the apiserver finds no API group to serve it, so an
allowed one is answered 404 and a refused one 403 (both audited with the group, resource and verb).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes_asyncio import config
from kubernetes_asyncio.client import BatchV1Api, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from oscar_manager.backends import manifests, warm_manifests
from oscar_manager.backends.base import JobRequest, SyncRequest
from oscar_manager.backends.exposed import Endpoint, ExposedUnavailable, Exposer
from oscar_manager.backends.exposed_kube import Resolve
from oscar_manager.backends.kube_answers import KubernetesError
from oscar_manager.backends.kubernetes import KubernetesBackend
from oscar_manager.domain.jobs import JobStatus
from oscar_manager.domain.service import Service
from oscar_manager.settings import Settings
from oscar_manager.supervisor.response_frame import frame
from oscar_manager.supervisor.stage import EVENT_ENV_MAX_BYTES
from tests.support.app import app_client
from tests.support.cluster_view import Cluster, until, until_async
from tests.support.controlplane import AuditRecord, ControlPlane, audit_records
from tests.support.deploy import find
from tests.support.exposer import Resolved
from tests.support.factories import stored_service
from tests.support.kube_cluster import (
    MANAGER_USER,
    manager_settings,
    until_authorised,
    without_verb,
)
from tests.support.offering_nodes import GPU, offering_node
from tests.support.reporter import RecordingReporter
from tests.support.runner_kubelet import RunnerKubelet

CLUSTER_ROLE_PATH = "/apis/rbac.authorization.k8s.io/v1/clusterroles/oscar-status"
Triple = tuple[str, str, str]  # (apiGroup, resource, verb)


def granted() -> set[Triple]:
    """Every (apiGroup, resource, verb) the shipped Role and ClusterRole name."""
    rules = [*find("Role", "oscar-controller")["rules"], *find("ClusterRole", "oscar-status")["rules"]]
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def triples(records: list[AuditRecord]) -> set[Triple]:
    return {(r.group, r.resource, r.verb) for r in records}


@dataclass
class Plane:
    """The test's part of the control plane (``cluster``, with a manual kubelet), seen as the backend
    needs it."""

    cluster: Cluster

    @property
    def control(self) -> ControlPlane:
        return self.cluster.plane

    @property
    def admin(self) -> httpx.AsyncClient:
        return self.cluster.http

    @property
    def namespace(self) -> str:
        return self.cluster.namespace

    @property
    def kubelet(self) -> RunnerKubelet:
        return self.cluster.kubelet

    @property
    def kubeconfig(self) -> Path:
        config = self.cluster.settings.oscar_kubeconfig
        assert config is not None
        return config

    @property
    def audit_start(self) -> int:
        return self.cluster.audit_start

    def requests(self) -> list[AuditRecord]:
        """What the manager asked for in the test's namespace, or cluster-wide, in order (dry runs too)."""
        return self.cluster.all_requests()

    def backend(
        self, resolve: Resolve | None = None
    ) -> contextlib.AbstractAsyncContextManager[KubernetesBackend]:
        # With Ingresses for exposed services: the Role must allow them too.
        cluster = manifests.ClusterConfig(
            manager_image="registry.example/oscar-manager:test", ttl_seconds=600, exposed_ingress=True
        )
        return KubernetesBackend.connect(
            kubeconfig=self.kubeconfig,
            namespace=self.namespace,
            cluster=cluster,
            concurrency=8,
            resolve=resolve,
        )

    async def not_ready(self, pod: str) -> None:
        """What the kubelet's readiness probe would report of a retired warm pod (this one runs none)."""
        answer = await self.admin.patch(
            f"/api/v1/namespaces/{self.namespace}/pods/{pod}/status",
            json={"status": {"conditions": [{"type": "Ready", "status": "False"}]}},
            headers={"Content-Type": "application/strategic-merge-patch+json"},
        )
        answer.raise_for_status()

    async def items(self, group_version: str, plural: str, **params: str) -> list[dict[str, Any]]:
        """The namespace's objects of a kind, as the admin sees them now."""
        answer = await self.admin.get(f"{group_version}/namespaces/{self.namespace}/{plural}", params=params)
        answer.raise_for_status()
        found: list[dict[str, Any]] = answer.json()["items"]
        return found

    async def jobs(self) -> list[dict[str, Any]]:
        return await self.items("/apis/batch/v1", "jobs")

    async def secrets(self, selector: str) -> list[dict[str, Any]]:
        return await self.items("/api/v1", "secrets", labelSelector=selector)


@contextlib.asynccontextmanager
async def idle_warm_pod() -> AsyncIterator[Resolved]:
    """A stand-in for a warm pod's server (the manual kubelet runs none): idle for long, and retired
    when asked; what ``resolve`` sends every pod address to."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"GET /idle "):
            body = json.dumps({"busy": False, "idle_seconds": 3600, "retired": False}).encode()
        else:
            body = b"retired\n" if head.startswith(b"POST /retire ") else b""
        status = b"200 OK" if body else b"404 Not Found"
        writer.write(
            b"HTTP/1.1 " + status + b"\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        writer.write(body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield Resolved(server.sockets[0].getsockname()[1])


@pytest.fixture
def plane(cluster: Cluster) -> Plane:
    return Plane(cluster)


async def test_the_backend_lifecycle_needs_exactly_the_shipped_rbac(plane: Plane) -> None:
    ns = plane.namespace
    async with idle_warm_pod() as resolve, plane.backend(resolve) as kube:
        reporter = RecordingReporter()
        await kube.start(reporter)
        following = asyncio.create_task(kube.follow_jobs(lambda: None))  # the job watcher: list, watch
        try:
            await asyncio.wait_for(kube.watching.wait(), timeout=20)

            # A service with secrets: created, created again (409 -> update), then updated without them.
            secretive = stored_service("secretive", namespace=ns, environment={"secrets": {"TOKEN": "x"}})
            await kube.prepare_service(secretive)
            await kube.prepare_service(secretive)
            await kube.prepare_service(stored_service("secretive", namespace=ns), previous=secretive)
            plain = stored_service("plain", namespace=ns)
            await kube.prepare_service(plain)

            # A job runs: the watcher sees it start and end, and copies its pod's log.
            ran = JobRequest(job_id="plain-00000000000000aa", service=plain, payload=b"{}", attempt=1)
            await kube.submit(ran)
            await until(lambda: ran.job_id in reporter.started_jobs)
            await plane.kubelet.finish(ran.job_id, succeeded=True, log="done\n")
            await until(lambda: ran.job_id in reporter.outcomes)
            outcome = reporter.outcomes[ran.job_id]
            assert (outcome.status, outcome.log) == (JobStatus.SUCCEEDED, "done\n")

            # A body too large for EVENT travels in Secrets owned by the Job. Submitted again (a crash
            # before the dispatch was recorded): the Job is there (409), read for its uid.
            big = JobRequest(
                job_id="plain-00000000000000bb",
                service=plain,
                payload=b"x" * (EVENT_ENV_MAX_BYTES + 1),
                attempt=1,
            )
            await kube.submit(big)
            await kube.submit(big)
            (job,) = [j for j in await plane.jobs() if j["metadata"]["name"] == big.job_id]
            body_secrets = await plane.secrets(f"job-id={big.job_id}")
            assert body_secrets, "the body's Secrets were not created"
            for secret in body_secrets:
                (owner,) = secret["metadata"]["ownerReferences"]
                assert (owner["kind"], owner["uid"]) == ("Job", job["metadata"]["uid"])
            # Cancelled: the Job goes, and the garbage collector takes its Secrets with it.
            await kube.cancel(big.job_id)
            await until_async(lambda: plane.secrets(f"job-id={big.job_id}"), lambda found: found == [])

            # A sync run: its own Job, watched alone, its pod's log read for the answer, then deleted.
            run = asyncio.create_task(kube.run_sync(SyncRequest(service=plain, body=b"hello", timeout=30)))
            jobs = await until_async(
                plane.jobs, lambda jobs: any("-run-" in j["metadata"]["name"] for j in jobs)
            )
            (sync_job,) = [j["metadata"]["name"] for j in jobs if "-run-" in j["metadata"]["name"]]
            await plane.kubelet.finish(sync_job, succeeded=True, log="ran\n" + frame(b"HELLO").decode())
            assert (await run).read() == b"HELLO"

            # /system/status: the nodes (this plane has no metrics API: no usage), the namespace's pods.
            nodes = {node.name: node for node in await kube.nodes()}
            mine = nodes[plane.kubelet.node]
            assert (mine.cpu_millis, mine.cpu_used_millis) == (8000, None)

            # An exposed service (with its Ingress and basic-auth Secret): created, exposed again (409 ->
            # read and replaced), served from a ready pod, its state and logs read, stopped, started,
            # restarted, and deleted.
            exposer = kube.exposed
            assert exposer is not None
            web = stored_service(
                "web", namespace=ns, expose={"api_port": [8080], "set_auth": True}, labels={}
            )
            await kube.prepare_service(web)
            await exposer.expose(web)
            await exposer.expose(web, previous=web)
            await until_async(lambda: exposer.state(web), lambda state: state.state == "ready")
            await until_async(lambda: _endpoint(exposer, web), lambda found: found is not None)
            assert await exposer.logs(web, tail_lines=10) == []
            await exposer.stop(web)
            await exposer.start(web)
            await exposer.restart(web)
            await exposer.unexpose(web)
            await kube.remove_service(web)

            # Warm pods (scaled to zero when idle): a run finds none and asks for one (the Deployment read,
            # its pods listed, its count patched); the leader's scale-down lists the Deployments, retires
            # the idle pod, lowers its deletion cost and the count, and deletes it.
            warm = stored_service(
                "warm", namespace=ns, input=[], annotations={warm_manifests.WARM_ANNOTATION: "true"}
            )
            await kube.prepare_service(warm)
            assert await kube.warm.scaler.want_more(warm)
            (pod,) = await until_async(
                lambda: plane.items("/api/v1", "pods", labelSelector=warm_manifests.pod_selector(warm)),
                lambda pods: len(pods) == 1 and pods[0]["status"].get("phase") == "Running",
            )
            shrinking = asyncio.create_task(kube.scale_down_warm_pods())
            await until(lambda: any((r.verb, r.resource) == ("patch", "pods") for r in plane.requests()))
            await plane.not_ready(pod["metadata"]["name"])
            await shrinking
            await until_async(
                lambda: plane.items("/api/v1", "pods", labelSelector=warm_manifests.pod_selector(warm)),
                lambda pods: pods == [],
            )
            await kube.remove_service(warm)

            # The services go, with their objects and the Jobs left (the one that ran).
            await kube.remove_service(plain)
            await kube.remove_service(stored_service("secretive", namespace=ns))
            await until_async(plane.jobs, lambda jobs: jobs == [])
        finally:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
            await kube.stop()

    # A watch is audited when it ends: the job watcher's once the backend stopped, so wait for it.
    # (Up to 30 s; past that the assertions below say what is missing.)
    records = plane.requests()
    for _ in range(300):
        if granted() <= triples(records):
            break
        await asyncio.sleep(0.1)
        records = plane.requests()
    assert [r for r in records if r.code == 403] == []
    # Every rule was needed: nothing granted that the backend never asked for.
    assert granted() - triples(records) == set()
    # No wildcards either, and the only answers other than success are the expected ones.
    assert not any("*" in part for triple in granted() for part in triple)
    unsuccessful = {(r.group, r.resource, r.verb, r.code) for r in records if r.code >= 300}
    # Replacing a Deployment the controllers just wrote to is a 409 Conflict, read again; deleting a
    # retired warm pod the ReplicaSet already removed is a 404: or not, by timing.
    by_timing = {("apps", "deployments", "update", 409), ("", "pods", "delete", 404)}
    assert unsuccessful - by_timing == {
        ("", "configmaps", "create", 409),  # a service stored again: replaced
        ("", "secrets", "create", 409),  # its Secret too; and the resubmitted job's body
        ("batch", "jobs", "create", 409),  # the resubmitted job
        ("apps", "deployments", "create", 409),  # an exposed service exposed again: replaced
        ("", "services", "create", 409),
        ("autoscaling", "horizontalpodautoscalers", "create", 409),
        ("networking.k8s.io", "ingresses", "create", 409),
        ("metrics.k8s.io", "nodes", "list", 404),  # allowed; not served by this plane
    }


async def _endpoint(exposer: Exposer, service: Service) -> Endpoint | None:
    try:
        return await exposer.endpoint(service)
    except ExposedUnavailable:
        return None


async def test_a_request_the_role_does_not_allow_is_forbidden_as_the_api_server_words_it(
    plane: Plane,
) -> None:
    ns = plane.namespace
    await without_verb(plane.admin, ns, "jobs", "create")
    api = await config.new_client_from_config(config_file=str(plane.kubeconfig))
    async with api:
        batch, core = BatchV1Api(api), CoreV1Api(api)
        cluster = manifests.ClusterConfig(manager_image="oscar-manager:test", ttl_seconds=600)
        job = manifests.job(
            stored_service("plain", namespace=ns),
            job_id="plain-00000000000000cc",
            event=b"{}",
            cluster=cluster,
        )
        with pytest.raises(ApiException) as refused:
            await batch.create_namespaced_job(ns, job)  # type: ignore[arg-type]
        with pytest.raises(ApiException) as elsewhere:
            await core.list_namespaced_pod("default")
        assert (await batch.list_namespaced_job(ns)).items == []  # still allowed
    assert refused.value.status == 403
    status = json.loads(str(refused.value.body))
    assert (status["reason"], status["details"]) == ("Forbidden", {"group": "batch", "kind": "jobs"})
    assert status["message"] == (
        f'jobs.batch is forbidden: User "{MANAGER_USER}" cannot create resource "jobs" in API group '
        f'"batch" in the namespace "{ns}"'
    )
    assert elsewhere.value.status == 403  # a Role grants nothing outside its namespace
    forbidden = audit_records(plane.control.audit_log, user=MANAGER_USER, start=plane.audit_start)
    assert [(r.verb, r.resource, r.namespace) for r in forbidden if r.code == 403] == [
        ("create", "jobs", ns),
        ("list", "pods", "default"),
    ]
    assert await plane.jobs() == []


async def test_a_service_whose_config_map_is_forbidden_is_a_502_naming_the_reason_and_not_recorded(
    plane: Plane, settings: Settings, control_plane: ControlPlane, manager_token: str, tmp_path: Path
) -> None:
    await without_verb(plane.admin, plane.namespace, "configmaps", "create")
    kube_settings = manager_settings(settings, control_plane, manager_token, plane.namespace, tmp_path)
    body = {"name": "denied", "image": "alpine", "script": "echo hi\n", "input": [{"path": "denied/in"}]}
    async with app_client(kube_settings) as manager:
        answer = await manager.post("/system/services", json=body)
        assert answer.status_code == 502
        # The detail passes on the API server's own message, after the HTTP status and reason.
        assert answer.text.endswith(
            f'403 Forbidden: configmaps is forbidden: User "{MANAGER_USER}" cannot create resource '
            f'"configmaps" in API group "" in the namespace "{plane.namespace}"'
        )
        assert (await manager.get("/system/services/denied")).status_code == 404
    answer = await plane.admin.get(f"/api/v1/namespaces/{plane.namespace}/configmaps/denied")
    assert answer.status_code == 404
    assert [(r.verb, r.resource) for r in plane.requests() if r.code == 403] == [("create", "configmaps")]


async def put_cluster_role_rules(http: httpx.AsyncClient, rules: list[dict[str, Any]]) -> None:
    current = (await http.get(CLUSTER_ROLE_PATH)).json()
    (await http.put(CLUSTER_ROLE_PATH, json={**current, "rules": rules})).raise_for_status()


@pytest.fixture
async def cluster_role_rules(kube_admin: httpx.AsyncClient) -> AsyncIterator[list[dict[str, Any]]]:
    """The shipped ClusterRole's rules as on the apiserver, put back after the test (the ClusterRole is
    the session's: every test's manager has it)."""
    shipped: list[dict[str, Any]] = (await kube_admin.get(CLUSTER_ROLE_PATH)).json()["rules"]
    try:
        yield copy.deepcopy(shipped)
    finally:
        await put_cluster_role_rules(kube_admin, shipped)
        for group in ("", "metrics.k8s.io"):
            await until_authorised(kube_admin, allowed=True, verb="list", resource="nodes", group=group)


async def keep_only(http: httpx.AsyncClient, rules: list[dict[str, Any]], *, group: str) -> None:
    """The ClusterRole with only its rule for the nodes of ``group``, in force."""
    await put_cluster_role_rules(http, [rule for rule in rules if rule["apiGroups"] == [group]])
    dropped = "metrics.k8s.io" if group == "" else ""
    await until_authorised(http, allowed=False, verb="list", resource="nodes", group=dropped)


async def test_the_status_without_the_metrics_rule_has_no_usage_and_without_the_nodes_rule_says_why(
    plane: Plane, cluster_role_rules: list[dict[str, Any]]
) -> None:
    await keep_only(plane.admin, cluster_role_rules, group="")
    async with plane.backend() as kube:
        nodes = {node.name: node for node in await kube.nodes()}
        assert (nodes[plane.kubelet.node].cpu_millis, nodes[plane.kubelet.node].cpu_used_millis) == (
            8000,
            None,
        )
        # Refused now (403), where the shipped rule lets it through to the 404 of an API not served.
        assert [(r.group, r.resource, r.verb) for r in plane.requests() if r.code == 403] == [
            ("metrics.k8s.io", "nodes", "list")
        ]

        await keep_only(plane.admin, cluster_role_rules, group="metrics.k8s.io")
        with pytest.raises(
            KubernetesError, match='cannot list resource "nodes" in API group "" at the cluster'
        ):
            await kube.nodes()


async def test_config_says_nothing_is_offered_when_the_nodes_rule_is_gone_and_still_answers(
    plane: Plane, cluster_role_rules: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    """``/system/config`` (asked on every dashboard page) never fails for the node list: refused, the GPU
    node there is not reported, and the refusal is logged."""
    async with offering_node(plane.admin, allocatable={GPU: "1"}):
        await keep_only(plane.admin, cluster_role_rules, group="metrics.k8s.io")
        async with app_client(plane.cluster.settings) as http:
            answer = await http.get("/system/config")
    assert answer.status_code == 200, answer.text
    config = answer.json()["config"]
    assert (config["gpu_available"], config["interLink_available"]) == (False, False)
    assert [(r.group, r.resource, r.verb) for r in plane.requests() if r.code == 403] == [
        ("", "nodes", "list")
    ]
    assert "no GPUs nor interLink reported: Kubernetes refused to list the nodes" in caplog.text
    assert 'cannot list resource "nodes" in API group "" at the cluster scope' in caplog.text
