"""The Kubernetes API double, driven by the real kubernetes-asyncio client over HTTP with the manifests the
manager builds: what the Kubernetes backend will rely on (create, 409/422 answers, label selectors,
watches with resume and 410 Gone, pod logs, background deletion)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from oscar_manager.backends import manifests
from tests.support.factories import stored_service
from tests.support.kube_api import KubeApiDouble

NS = "oscar-svc"
CLUSTER = manifests.ClusterConfig(manager_image="oscar-manager:test", ttl_seconds=600)


@pytest.fixture
async def k8s(double: tuple[KubeApiDouble, str]) -> AsyncIterator[client.ApiClient]:
    configuration = client.Configuration(host=double[1])
    async with client.ApiClient(configuration) as api_client:
        yield api_client


def body(manifest: dict[str, Any]) -> Any:
    """The client's methods are typed for its models; plain dicts are serialised all the same."""
    return manifest


async def test_service_objects_and_a_job_are_accepted_and_a_repeat_is_409(
    double: tuple[KubeApiDouble, str], k8s: client.ApiClient
) -> None:
    api, _url = double
    svc = stored_service(environment={"secrets": {"TOKEN": "x"}})
    core, batch = client.CoreV1Api(k8s), client.BatchV1Api(k8s)
    await core.create_namespaced_config_map(NS, body(manifests.config_map(svc)))
    secret = manifests.secret(svc)
    assert secret is not None
    await core.create_namespaced_secret(NS, body(secret))
    job = manifests.job(svc, job_id="grayify-00000000000000aa", event=b"{}", cluster=CLUSTER)
    created = await batch.create_namespaced_job(NS, body(job))
    assert created.metadata.name == "grayify-00000000000000aa"
    assert api.refused == []

    with pytest.raises(ApiException) as again:
        await batch.create_namespaced_job(NS, body(job))
    assert again.value.status == 409

    listed = await batch.list_namespaced_job(NS, label_selector="oscar_service=grayify")
    assert [item.metadata.name for item in listed.items] == ["grayify-00000000000000aa"]
    assert (await batch.list_namespaced_job(NS, label_selector="oscar_service=other")).items == []


async def test_an_invalid_job_is_422_naming_the_field(
    double: tuple[KubeApiDouble, str], k8s: client.ApiClient
) -> None:
    api, _url = double
    job = manifests.job(stored_service(), job_id="grayify-00000000000000bb", event=b"{}", cluster=CLUSTER)
    job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "lots"
    with pytest.raises(ApiException) as refused:
        await client.BatchV1Api(k8s).create_namespaced_job(NS, body(job))
    assert refused.value.status == 422
    assert "limits.cpu" in str(refused.value.body)
    assert api.of_kind("Job") == []


async def test_a_watch_sees_the_job_finish_and_its_log_outlives_nothing_until_deleted(
    double: tuple[KubeApiDouble, str], k8s: client.ApiClient
) -> None:
    api, _url = double
    batch, core = client.BatchV1Api(k8s), client.CoreV1Api(k8s)
    job = manifests.job(stored_service(), job_id="grayify-00000000000000cc", event=b"{}", cluster=CLUSTER)
    created = await batch.create_namespaced_job(NS, body(job))
    since = created.metadata.resource_version

    async def finish_soon() -> None:
        await asyncio.sleep(0.1)
        await api.finish_pod(NS, "grayify-00000000000000cc", succeeded=True, log="done\n")

    finisher = asyncio.create_task(finish_soon())
    seen: list[tuple[str, list[str]]] = []
    async with watch.Watch() as stream:
        async for event in stream.stream(
            batch.list_namespaced_job, NS, resource_version=since, timeout_seconds=2
        ):
            conditions = [c.type for c in (event["object"].status.conditions or [])]
            seen.append((event["type"], conditions))
            if "Complete" in conditions:
                break
    await finisher
    assert seen[-1] == ("MODIFIED", ["Complete"])

    pods = await core.list_namespaced_pod(NS, label_selector="job-name=grayify-00000000000000cc")
    (pod,) = pods.items
    assert pod.status.phase == "Succeeded"
    assert await core.read_namespaced_pod_log(pod.metadata.name, NS, container="oscar-container") == "done\n"

    await batch.delete_namespaced_job("grayify-00000000000000cc", NS, propagation_policy="Background")
    assert (
        await core.list_namespaced_pod(NS, label_selector="job-name=grayify-00000000000000cc")
    ).items == []


async def test_a_watch_from_a_compacted_version_is_410(
    double: tuple[KubeApiDouble, str], k8s: client.ApiClient
) -> None:
    api, _url = double
    api.max_history = 2
    batch = client.BatchV1Api(k8s)
    for index in range(4):
        job = manifests.job(stored_service(), job_id=f"grayify-{index:016x}", event=b"{}", cluster=CLUSTER)
        await batch.create_namespaced_job(NS, body(job))

    async def follow_from_the_start() -> None:
        async with watch.Watch() as stream:
            async for _event in stream.stream(
                batch.list_namespaced_job, NS, resource_version="1", timeout_seconds=1
            ):
                pass

    with pytest.raises(ApiException) as gone:
        await follow_from_the_start()
    assert gone.value.status == 410
