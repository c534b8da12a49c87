"""deploy/kubernetes on the real apiserver (``tests.support.controlplane``): every object of every file,
``secret.example.yaml`` and ``manager.yaml`` included, is accepted by server-side apply with strict field
validation (a field the apiserver does not know is refused, not dropped); the manager's Deployment makes
pods that the ``oscar`` namespace's Pod Security level admits for real; and a Job as the manager writes it
is admitted in a namespace labelled like the shipped ``oscar-svc`` with no Pod Security warning.

The overlay for replicas (``deploy/kubernetes-ha``, rendered by kustomize) is accepted the same way
(dry-run) and its pods admitted.

The Deployment's pods are created (admitted) but stay Pending: the plane has no storage provisioner for
their PersistentVolumeClaim. That is as far as admission goes; running the manager is the other tests'.
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from oscar_manager.backends import manifests
from tests.support.cluster_view import until_async
from tests.support.deploy import KUBERNETES_HA, all_objects, find, kustomize
from tests.support.factories import stored_service
from tests.support.kube_cluster import SHIPPED_NAMESPACE, apply, create_namespace, object_path, shipped

CLUSTER = manifests.ClusterConfig(manager_image="registry.example/oscar-manager:test", ttl_seconds=600)
# What install_shipped_rbac applies for every session already: left in place after this module.
SESSION_KINDS = {"Namespace", "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
POD_SECURITY_WARNING = "would violate PodSecurity"
ESCAPED_QUOTE = '\\"'


def key(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"


def objects() -> list[Any]:
    return [pytest.param(obj, id=key(obj)) for obj in all_objects(examples=True)]


@pytest.fixture(scope="module")
async def applied(kube_admin: httpx.AsyncClient) -> AsyncIterator[dict[str, httpx.Response]]:
    """Every shipped object applied for real, in file order (``kubectl apply -f deploy/kubernetes``
    with the example Secrets filled in); the apiserver's answer to each. Afterwards the objects the
    session did not have before are deleted (the Deployment's pods with it)."""
    answers = {key(obj): await apply(kube_admin, obj) for obj in all_objects(examples=True)}
    try:
        yield answers
    finally:
        for obj in all_objects(examples=True):
            if obj["kind"] not in SESSION_KINDS:
                await kube_admin.request("DELETE", object_path(obj), json={"propagationPolicy": "Background"})


@pytest.mark.parametrize("obj", objects())
async def test_every_shipped_object_is_accepted_with_strict_field_validation_and_no_warning(
    applied: dict[str, httpx.Response], obj: dict[str, Any]
) -> None:
    answer = applied[key(obj)]
    assert answer.status_code in (200, 201), answer.text
    # Deprecated APIs, Pod Security of a workload's template... are warnings, not refusals.
    assert answer.headers.get_list("warning") == []
    stored = answer.json()
    assert (stored["kind"], stored["metadata"]["name"]) == (obj["kind"], obj["metadata"]["name"])


@pytest.mark.parametrize("obj", objects())
async def test_a_field_the_apiserver_does_not_know_is_refused_not_dropped(
    kube_admin: httpx.AsyncClient, obj: dict[str, Any]
) -> None:
    """What makes the test above fail for a misspelt or made-up field in a manifest."""
    surplus = copy.deepcopy(obj)
    surplus["metadata"]["surplus"] = "x"
    answer = await apply(kube_admin, surplus, dry_run=True)
    # Server-side apply cannot build its typed patch: kube-apiserver 1.37 answers that with a 500.
    assert answer.is_error, answer.text
    assert "field not declared in schema" in answer.text
    assert ".metadata.surplus" in answer.text


async def test_a_field_unknown_deep_in_the_deployment_is_refused(kube_admin: httpx.AsyncClient) -> None:
    deployment = copy.deepcopy(find("Deployment", "oscar-manager"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = True
    answer = await apply(kube_admin, deployment, dry_run=True)
    assert answer.is_error, answer.text
    assert (
        '.spec.template.spec.containers[name="manager"].securityContext.readOnlyRootFS'
        in answer.json()["message"]
    )


async def test_the_deployments_pods_are_admitted_by_the_manager_namespaces_pod_security_level(
    applied: dict[str, httpx.Response], kube_admin: httpx.AsyncClient
) -> None:
    deployment = find("Deployment", "oscar-manager")
    namespace = deployment["metadata"]["namespace"]
    level = shipped("Namespace", namespace)["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
    assert level == "restricted"
    assert applied[key(deployment)].status_code in (200, 201)
    # The ReplicaSet controller creates the pods; Pod Security admission (enforced on pods, not on their
    # templates) would refuse them, leaving FailedCreate events and no pod.
    selector = ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items())
    pods = await until_async(
        lambda: kube_admin.get(f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": selector}),
        lambda answer: answer.json()["items"] != [],
    )
    (pod,) = pods.json()["items"]
    assert pod["spec"]["serviceAccountName"] == "oscar-sa"


async def test_the_manager_namespace_refuses_a_pod_short_of_its_level(kube_admin: httpx.AsyncClient) -> None:
    """The enforcement the test above relies on is there: the Deployment's pod without its pod-level
    securityContext (runAsNonRoot, seccomp) is refused."""
    deployment = find("Deployment", "oscar-manager")
    template = copy.deepcopy(deployment["spec"]["template"])
    del template["spec"]["securityContext"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "short", **template["metadata"]}}
    pod["spec"] = template["spec"]
    namespace = deployment["metadata"]["namespace"]
    answer = await kube_admin.post(f"/api/v1/namespaces/{namespace}/pods", params={"dryRun": "All"}, json=pod)
    assert answer.status_code == 403, answer.text
    assert 'violates PodSecurity "restricted:v1.37"' in answer.json()["message"]


async def test_the_replicas_overlay_is_accepted_with_strict_field_validation_and_no_warning(
    kube_admin: httpx.AsyncClient,
) -> None:
    """deploy/kubernetes-ha as kustomize renders it (its Deployment's preStop sleep action, anti-affinity
    and rolling update, its PodDisruptionBudget), dry-run: the base's objects are the applied ones."""
    for obj in kustomize(KUBERNETES_HA):
        answer = await apply(kube_admin, obj, dry_run=True)
        assert answer.status_code in (200, 201), (key(obj), answer.text)
        assert answer.headers.get_list("warning") == [], key(obj)
    (deployment,) = [obj for obj in kustomize(KUBERNETES_HA) if obj["kind"] == "Deployment"]
    stored = (await apply(kube_admin, deployment, dry_run=True)).json()["spec"]["template"]["spec"]
    # Kept, not dropped as a field of a gate this apiserver has off.
    assert stored["containers"][0]["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}


async def test_the_replicas_pods_are_admitted_by_the_manager_namespaces_pod_security_level(
    kube_admin: httpx.AsyncClient,
) -> None:
    (deployment,) = [obj for obj in kustomize(KUBERNETES_HA) if obj["kind"] == "Deployment"]
    template = deployment["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "replica", **template["metadata"]}}
    pod["spec"] = template["spec"]
    namespace = deployment["metadata"]["namespace"]
    answer = await kube_admin.post(f"/api/v1/namespaces/{namespace}/pods", params={"dryRun": "All"}, json=pod)
    assert answer.status_code == 201, answer.text
    assert answer.headers.get_list("warning") == []


def a_job(namespace: str) -> dict[str, Any]:
    service = stored_service("admitted", namespace=namespace)
    return manifests.job(service, job_id=f"admitted-{secrets.token_hex(8)}", event=b"{}", cluster=CLUSTER)


async def test_a_job_of_the_manager_is_admitted_like_in_oscar_svc_with_no_pod_security_warning(
    kube_admin: httpx.AsyncClient,
) -> None:
    # Labelled as the shipped oscar-svc (enforce and warn baseline), its pods sent to the kwok node.
    namespace = await create_namespace(
        kube_admin, node="kwok", credentials={"accessKey": "a", "secretKey": "b"}
    )
    labels = shipped("Namespace", SHIPPED_NAMESPACE)["metadata"]["labels"]
    assert (labels["pod-security.kubernetes.io/enforce"], labels["pod-security.kubernetes.io/warn"]) == (
        "baseline",
        "baseline",
    )
    job = a_job(namespace.name)
    answer = await kube_admin.post(f"/apis/batch/v1/namespaces/{namespace.name}/jobs", json=job)
    assert answer.status_code == 201, answer.text
    assert answer.headers.get_list("warning") == []
    # Its pod passes the enforced level: the Job controller creates it, kwok plays it.
    selector = {"labelSelector": f"job-name={job['metadata']['name']}"}
    pods = await until_async(
        lambda: kube_admin.get(f"/api/v1/namespaces/{namespace.name}/pods", params=selector),
        lambda answer: answer.json()["items"] != [],
    )
    (pod,) = pods.json()["items"]
    assert pod["spec"]["nodeSelector"] == {"type": "kwok"}  # the namespace's, to the kwok node


async def test_a_namespace_warning_at_restricted_would_warn_about_the_same_job(
    kube_admin: httpx.AsyncClient,
) -> None:
    """The warning header the test above finds empty is there when a level is not met: the Jobs meet
    "restricted" except for the main container's user and capabilities (users' images)."""
    name = f"t-{secrets.token_hex(5)}"
    labels = {
        "pod-security.kubernetes.io/warn": "restricted",
        "pod-security.kubernetes.io/warn-version": "v1.37",
    }
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    (await kube_admin.post("/api/v1/namespaces", json=namespace)).raise_for_status()
    try:
        answer = await kube_admin.post(
            f"/apis/batch/v1/namespaces/{name}/jobs", params={"dryRun": "All"}, json=a_job(name)
        )
        assert answer.status_code == 201, answer.text
        # A Warning header is `299 - "text"`, the quotes in its text escaped.
        (warning,) = [
            w.replace(ESCAPED_QUOTE, '"')
            for w in answer.headers.get_list("warning")
            if POD_SECURITY_WARNING in w
        ]
        assert 'would violate PodSecurity "restricted:v1.37"' in warning
        assert "runAsNonRoot" in warning
        assert f'"{manifests.INIT_CONTAINER}"' not in warning  # the init container meets it all
    finally:
        await kube_admin.delete(f"/api/v1/namespaces/{name}")
