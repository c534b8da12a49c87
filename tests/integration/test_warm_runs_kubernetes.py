"""Warm sync runs (``backends.warm_kube``) on the real control plane (``tests.support.controlplane``), as the
shipped ServiceAccount with exactly the shipped RBAC. The test's node is the runner kubelet, running pods
in this process (``SupervisorKubelet`` without an image: no supervisor executable to build): a warm pod's
container runs the real supervisor server (``supervisor serve``) on a loopback port, which the backend
reaches through its ``resolve`` hook; a Job's pod runs the real supervisor once."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from oscar_manager.backends import warm_manifests as objects
from oscar_manager.backends.base import ScriptFailed
from tests.support.cluster_view import until, until_async
from tests.support.factories import stored_service
from tests.support.kube_cluster import JobNamespace
from tests.support.warm_pods import CLUSTER, Warm, request, warm


async def test_the_apiserver_accepts_the_warm_deployment(
    kube_admin: httpx.AsyncClient, kube_namespace: JobNamespace
) -> None:
    """A server-side dry run (strict field validation) as the admin: every field known and valid."""
    ns = kube_namespace.name
    service = stored_service(
        "strict",
        namespace=ns,
        input=[],
        synchronous={"min_scale": 2},
        environment={"variables": {"A": "1"}, "secrets": {"B": "2"}},
        annotations={"note": "x"},
    )
    answer = await kube_admin.post(
        f"/apis/apps/v1/namespaces/{ns}/deployments",
        params={"dryRun": "All", "fieldValidation": "Strict"},
        json=objects.deployment(service, cluster=CLUSTER),
    )
    assert answer.status_code == 201, answer.text


async def test_a_run_is_served_by_a_warm_pod_and_no_job_is_made(warm_cluster: Warm) -> None:
    service = warm(warm_cluster.namespace)
    await warm_cluster.kube.prepare_service(service)
    deployment = await warm_cluster.deployment(service)
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 1
    await warm_cluster.serving(1)
    for text in ("quiet please", "still quiet"):
        answer = await warm_cluster.kube.run_sync(request(service, text))
        assert b"".join(answer.chunks()) == f"log line\n{text.upper()}".encode()
    assert warm_cluster.runs() == 2
    assert await warm_cluster.jobs() == []  # no cold pod for either


async def test_a_failing_script_on_a_warm_pod_is_the_job_paths_500(warm_cluster: Warm) -> None:
    service = warm(warm_cluster.namespace, script="echo oops; exit 3\n")
    await warm_cluster.kube.prepare_service(service)
    await warm_cluster.serving(1)
    with pytest.raises(ScriptFailed, match="exited with code 3") as failed:
        await warm_cluster.kube.run_sync(request(service, "x"))
    assert "oops" in failed.value.message
    assert await warm_cluster.jobs() == []


async def test_when_the_warm_pod_is_busy_the_run_is_a_job(warm_cluster: Warm) -> None:
    script = 'sleep 1\ntr a-z A-Z < "$INPUT_FILE_PATH"\n'
    service = warm(warm_cluster.namespace, script=script)
    await warm_cluster.kube.prepare_service(service)
    await warm_cluster.serving(1)
    first = asyncio.create_task(warm_cluster.kube.run_sync(request(service, "warm")))
    await until(lambda: any(s.busy for s in warm_cluster.pods.warm_servers.values()))
    second = await warm_cluster.kube.run_sync(request(service, "cold"))
    assert b"".join(second.chunks()) == b"COLD"
    assert b"".join((await first).chunks()) == b"WARM"
    assert warm_cluster.runs() == 1  # the warm pod ran one; a Job ran the other
    job_pods = [name for _, name in warm_cluster.kubelet.logs if name.startswith(f"{service.name}-run-")]
    assert len(job_pods) == 1  # ... and a Job's pod the other


async def test_the_warm_pods_go_with_the_service_or_when_it_stops_asking(warm_cluster: Warm) -> None:
    service = warm(warm_cluster.namespace)
    await warm_cluster.kube.prepare_service(service)
    await until_async(lambda: warm_cluster.live_pods(service), lambda pods: len(pods) == 1)
    # An update without min_scale: the Deployment goes; runs are Jobs again.
    cold = service.model_copy(update={"synchronous": service.synchronous.model_copy(update={"min_scale": 0})})
    await warm_cluster.kube.prepare_service(cold, previous=service)
    assert await warm_cluster.deployment(service) is None
    await until_async(lambda: warm_cluster.live_pods(service), lambda pods: pods == [])
    # Asked again, then the service deleted: its Deployment and pods go with it.
    await warm_cluster.kube.prepare_service(service, previous=cold)
    await until_async(lambda: warm_cluster.live_pods(service), lambda pods: len(pods) == 1)
    await warm_cluster.kube.remove_service(service)
    assert await warm_cluster.deployment(service) is None
    await until_async(lambda: warm_cluster.live_pods(service), lambda pods: pods == [])


async def test_a_service_without_min_scale_has_no_warm_pods(warm_cluster: Warm) -> None:
    service = warm(warm_cluster.namespace, min_scale=0)
    await warm_cluster.kube.prepare_service(service)
    assert await warm_cluster.deployment(service) is None
    answer = await warm_cluster.kube.run_sync(request(service, "cold"))
    assert b"".join(answer.chunks()) == b"log line\nCOLD"
