"""The Role and ClusterRole in deploy/kubernetes/rbac.yaml are least privilege: the Kubernetes backend,
driven through its whole lifecycle (and the cluster status) against the API double enforcing them, is never
refused and uses every rule, namespaced and cluster-scoped; and a Role lacking a verb the backend needs makes
the API answer the refusal with its reason.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from oscar_manager.backends import manifests
from oscar_manager.backends.base import JobRequest, SyncRequest
from oscar_manager.backends.kube_answers import KubernetesError
from oscar_manager.backends.kubernetes import KubernetesBackend
from oscar_manager.domain.jobs import JobStatus
from oscar_manager.settings import Settings
from oscar_manager.supervisor.response_frame import frame
from tests.support.app import app_client
from tests.support.deploy import find
from tests.support.factories import stored_service
from tests.support.kube_api import KubeApiDouble, Rbac, kubeconfig
from tests.support.reporter import RecordingReporter

NS = "oscar-svc"
CLUSTER = manifests.ClusterConfig(manager_image="oscar-manager:test", ttl_seconds=600)
SA_USER = "system:serviceaccount:oscar:oscar-sa"


def role() -> dict[str, Any]:
    return find("Role", "oscar-controller")


def cluster_role() -> dict[str, Any]:
    return find("ClusterRole", "oscar-status")


def without(role: dict[str, Any], group: str, resource: str, verb: str) -> dict[str, Any]:
    """The Role with one (group, resource, verb) taken out of its rules."""
    reduced = copy.deepcopy(role)
    rules = []
    for rule in reduced["rules"]:
        if group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]:
            others = [r for r in rule["resources"] if r != resource]
            if others:
                rules.append({**rule, "resources": others})
            fewer = [v for v in rule["verbs"] if v != verb]
            if fewer:
                rules.append({**rule, "resources": [resource], "verbs": fewer})
        else:
            rules.append(rule)
    reduced["rules"] = rules
    return reduced


async def until(check: Callable[[], bool], within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "gave up waiting"
        await asyncio.sleep(0.02)


@pytest.fixture
async def backend(
    double: tuple[KubeApiDouble, str],
) -> AsyncIterator[tuple[KubernetesBackend, RecordingReporter]]:
    configuration = client.Configuration(host=double[1])
    async with client.ApiClient(configuration) as api_client:
        kube = KubernetesBackend(api_client, namespace=NS, cluster=CLUSTER)
        reporter = RecordingReporter()
        await kube.start(reporter)
        try:
            yield kube, reporter
        finally:
            await kube.stop()


async def test_the_backend_lifecycle_needs_exactly_the_role(
    double: tuple[KubeApiDouble, str], backend: tuple[KubernetesBackend, RecordingReporter]
) -> None:
    api, _url = double
    rbac = api.rbac = Rbac.from_role(role(), user=SA_USER, cluster_role=cluster_role())
    kube, reporter = backend
    await asyncio.wait_for(kube.watching.wait(), timeout=10)

    # A service with secrets: created, then updated (409 -> replace), then updated without its secrets.
    secretive = stored_service("secretive", environment={"secrets": {"TOKEN": "x"}})
    await kube.prepare_service(secretive)
    await kube.prepare_service(secretive)
    assert api.get("Secret", NS, "secretive") is not None
    await kube.prepare_service(stored_service("secretive"), previous=secretive)
    assert api.get("Secret", NS, "secretive") is None
    plain = stored_service("plain")
    await kube.prepare_service(plain)

    # A job runs: the watcher sees it start and end, and copies its pod's log.
    await kube.submit(JobRequest(job_id="plain-00000000000000aa", service=plain, payload=b"{}", attempt=1))
    await until(lambda: "plain-00000000000000aa" in reporter.started_jobs)
    await api.finish_pod(NS, "plain-00000000000000aa", succeeded=True, log="done\n")
    await until(lambda: "plain-00000000000000aa" in reporter.outcomes)
    outcome = reporter.outcomes["plain-00000000000000aa"]
    assert (outcome.status, outcome.log) == (JobStatus.SUCCEEDED, "done\n")

    # A sync run whose watch expires (410 Gone): it reads its Job, watches again, reads the pod's log for
    # the response, and deletes the Job.
    api.fail_next = [("GET", f"/namespaces/{NS}/jobs", 410)]
    run = asyncio.create_task(kube.run_sync(SyncRequest(service=plain, body=b"hello", timeout=30)))
    await until(lambda: any("-run-" in job["metadata"]["name"] for job in api.of_kind("Job")))
    (sync_job,) = [
        job["metadata"]["name"] for job in api.of_kind("Job") if "-run-" in job["metadata"]["name"]
    ]
    await until(lambda: ("batch", "jobs", "get") in rbac.asked_for())
    await api.finish_pod(NS, sync_job, succeeded=True, log="ran\n" + frame(b"HELLO").decode())
    assert (await run).read() == b"HELLO"
    assert api.get("Job", NS, sync_job) is None

    # Another is cancelled; then the service goes, with its objects and jobs.
    await kube.submit(JobRequest(job_id="plain-00000000000000bb", service=plain, payload=b"{}", attempt=1))
    await kube.cancel("plain-00000000000000bb")
    assert api.get("Job", NS, "plain-00000000000000bb") is None
    await kube.remove_service(plain)
    await kube.remove_service(secretive)
    assert api.of_kind("ConfigMap") == []
    assert api.of_kind("Job") == []

    # /system/status: the nodes and their usage, cluster-scoped.
    api.node_usage = {"node-1": {"cpu": "100m", "memory": "1Gi"}}
    (node,) = await kube.nodes()
    assert node.cpu_used_millis == 100

    assert rbac.forbidden == []
    assert {access.triple for access in rbac.asked if access.namespace == ""} == {
        ("", "nodes", "list"),
        ("metrics.k8s.io", "nodes", "list"),
    }
    # Every rule was needed: nothing granted that the backend never asked for (no wildcards either).
    assert rbac.granted() - rbac.asked_for() == set()
    assert not any("*" in value for value in _rule_values(rbac))


def _rule_values(rbac: Rbac) -> list[str]:
    return [value for rule in rbac.rules for values in rule.values() for value in values]


async def test_a_request_the_role_does_not_allow_is_forbidden_as_the_api_server_words_it(
    double: tuple[KubeApiDouble, str],
) -> None:
    api, url = double
    api.rbac = Rbac.from_role(without(role(), "batch", "jobs", "create"), user=SA_USER)
    async with client.ApiClient(client.Configuration(host=url)) as api_client:
        batch, core = client.BatchV1Api(api_client), client.CoreV1Api(api_client)
        job = manifests.job(
            stored_service("plain"), job_id="plain-00000000000000cc", event=b"{}", cluster=CLUSTER
        )
        with pytest.raises(ApiException) as refused:
            await batch.create_namespaced_job(NS, job)  # type: ignore[arg-type]
        with pytest.raises(ApiException) as elsewhere:
            await core.list_namespaced_pod("default")
        assert (await batch.list_namespaced_job(NS)).items == []  # still allowed
    assert refused.value.status == 403
    body = refused.value.body
    assert isinstance(body, str)
    assert '"reason": "Forbidden"' in body or '"reason":"Forbidden"' in body
    assert (
        f'jobs.batch is forbidden: User \\"{SA_USER}\\" cannot create resource \\"jobs\\" in API group '
        f'\\"batch\\" in the namespace \\"{NS}\\"'
    ) in body
    assert elsewhere.value.status == 403  # a Role grants nothing outside its namespace
    assert ("batch", "jobs", "create") in api.rbac.asked_for()
    assert [access.triple for access in api.rbac.forbidden] == [
        ("batch", "jobs", "create"),
        ("", "pods", "list"),
    ]
    assert api.of_kind("Job") == []


@pytest.fixture
async def manager(
    settings: Settings, double: tuple[KubeApiDouble, str], tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    config = tmp_path / "kubeconfig"
    config.write_text(kubeconfig(double[1]))
    kube_settings = settings.model_copy(
        update={"oscar_backend": "kubernetes", "oscar_kubeconfig": config, "oscar_dispatch_interval": 0.05}
    )
    async with app_client(kube_settings) as http:
        yield http


async def test_a_service_whose_config_map_is_forbidden_is_a_502_naming_the_reason_and_not_recorded(
    manager: httpx.AsyncClient, double: tuple[KubeApiDouble, str]
) -> None:
    api, _url = double
    api.rbac = Rbac.from_role(without(role(), "", "configmaps", "create"), user=SA_USER)
    body = {"name": "denied", "image": "alpine", "script": "echo hi\n", "input": [{"path": "denied/in"}]}
    answer = await manager.post("/system/services", json=body)
    assert answer.status_code == 502
    # The detail passes on the API server's own message, after the HTTP status and reason.
    assert answer.text.endswith(
        '403 Forbidden: configmaps is forbidden: User "' + SA_USER + '" cannot create resource "configmaps" '
        f'in API group "" in the namespace "{NS}"'
    )
    assert (await manager.get("/system/services/denied")).status_code == 404
    assert api.of_kind("ConfigMap") == []
    assert [access.triple for access in api.rbac.forbidden] == [("", "configmaps", "create")]


async def test_the_status_without_the_metrics_rule_has_no_usage_and_without_the_nodes_rule_says_why(
    double: tuple[KubeApiDouble, str], backend: tuple[KubernetesBackend, RecordingReporter]
) -> None:
    api, _url = double
    kube, _reporter = backend
    api.node_usage = {"node-1": {"cpu": "100m", "memory": "1Gi"}}
    cluster = cluster_role()
    api.rbac = Rbac.from_role(role(), user=SA_USER, cluster_role={**cluster, "rules": [cluster["rules"][0]]})
    (node,) = await kube.nodes()
    assert (node.name, node.cpu_millis, node.cpu_used_millis) == ("node-1", 4000, None)
    assert [access.triple for access in api.rbac.forbidden] == [("metrics.k8s.io", "nodes", "list")]

    api.rbac = Rbac.from_role(role(), user=SA_USER)  # no ClusterRole at all
    with pytest.raises(KubernetesError, match="cannot list resource .nodes. in API group .. at the cluster"):
        await kube.nodes()
