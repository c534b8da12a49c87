"""Warm pods scaling (``backends.warm_scaling``) on the real control plane: its Deployment and ReplicaSet
controllers choose which pod goes when the count drops, so what is checked here is what they do with
what the manager sets (the count, the pods' deletion cost, their readiness from the probe). Pods run in
this process (``tests.support.warm_pods``); the idle period is a second; the scale-down rounds the leader
runs in a loop are called by the tests."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from oscar_manager.backends import warm_manifests as objects
from oscar_manager.domain.service import Service
from tests.support.cluster_view import until, until_async
from tests.support.factories import stored_service
from tests.support.warm_pods import Warm, request

SLOW = 'sleep 1\ntr a-z A-Z < "$INPUT_FILE_PATH"\n'
MERGE = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture
def warm(warm_cluster: Warm) -> Warm:
    return warm_cluster


def scaled(namespace: str, *, min_scale: int, max_scale: int, annotated: bool = False) -> Service:
    return stored_service(
        "scaled",
        namespace=namespace,
        script=SLOW,
        input=[],
        synchronous={"min_scale": min_scale, "max_scale": max_scale},
        annotations={objects.WARM_ANNOTATION: "true"} if annotated else {},
    )


async def replicas(warm: Warm, service: Service) -> int:
    deployment = await warm.deployment(service)
    assert deployment is not None
    return int(deployment["spec"]["replicas"])


async def set_replicas(warm: Warm, service: Service, count: int) -> None:
    path = f"/apis/apps/v1/namespaces/{warm.namespace}/deployments/{objects.deployment_name(service)}"
    answer = await warm.http.patch(path, json={"spec": {"replicas": count}}, headers=MERGE)
    answer.raise_for_status()


async def running(warm: Warm, service: Service, count: int) -> list[dict[str, Any]]:
    """Until ``count`` pods of the service are up and serving (each has its server listening)."""

    async def serving_pods() -> list[dict[str, Any]]:
        pods = await warm.live_pods(service)
        return [p for p in pods if p.get("status", {}).get("podIP") in warm.pods.serve_ports]

    pods: list[dict[str, Any]] = await until_async(serving_pods, lambda pods: len(pods) == count, within=60)
    return pods


async def scale_down_until(warm: Warm, service: Service, count: int, *, within: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while await replicas(warm, service) != count:
        assert asyncio.get_running_loop().time() < deadline, f"still {await replicas(warm, service)}"
        await warm.kube.scale_down_warm_pods()
        await asyncio.sleep(0.2)


async def test_runs_finding_every_pod_busy_add_one_pod_at_a_time_up_to_max_scale(warm: Warm) -> None:
    service = scaled(warm.namespace, min_scale=1, max_scale=3)
    await warm.kube.prepare_service(service)
    await running(warm, service, 1)
    # Five runs at once on one pod: four find it busy and are Jobs; together they ask for one pod.
    answers = await asyncio.gather(*(warm.kube.run_sync(request(service, f"r{n}")) for n in range(5)))
    assert sorted(b"".join(a.chunks()) for a in answers) == [f"R{n}".encode() for n in range(5)]
    await asyncio.sleep(0.5)  # any ask still under way lands
    assert await replicas(warm, service) == 2
    # Waves of runs on the pods that are up: one more each time they are all busy, never past 3.
    seen = []
    for wave in range(4):
        await running(warm, service, await replicas(warm, service))
        texts = [f"w{wave}-{n}" for n in range(5)]
        await asyncio.gather(*(warm.kube.run_sync(request(service, text)) for text in texts))
        await asyncio.sleep(0.5)
        seen.append(await replicas(warm, service))
    assert max(seen) == 3
    assert seen[-1] == 3
    assert len(await warm.live_pods(service)) == 3


async def test_idle_pods_above_min_scale_go_and_a_busy_one_is_never_the_one_removed(warm: Warm) -> None:
    service = stored_service(
        "scaled",
        namespace=warm.namespace,
        script='sleep 4\ntr a-z A-Z < "$INPUT_FILE_PATH"\n',
        input=[],
        synchronous={"min_scale": 1, "max_scale": 3},
    )
    await warm.kube.prepare_service(service)
    await running(warm, service, 1)
    await set_replicas(warm, service, 3)
    pods = await running(warm, service, 3)
    # One pod busy with a long run; the other two idle, past the idle period before the round.
    run = asyncio.create_task(warm.kube.run_sync(request(service, "long")))
    await until(lambda: sum(s.busy for s in warm.pods.warm_servers.values()) == 1)
    busy_address = next(a for a, s in warm.pods.warm_servers.items() if s.busy)
    busy = next(p["metadata"]["name"] for p in pods if p["status"]["podIP"] == busy_address)
    neighbours = [s for a, s in warm.pods.warm_servers.items() if a != busy_address]
    await asyncio.sleep(1.2)
    await warm.kube.scale_down_warm_pods()
    # The count went to min_scale at once (the busy pod is above nothing: min is 1), and the busy pod
    # is the one left, its run answered.
    assert await replicas(warm, service) == 1
    left = await until_async(lambda: warm.live_pods(service), lambda pods: len(pods) == 1, within=30)
    assert left[0]["metadata"]["name"] == busy
    assert b"".join((await run).chunks()) == b"LONG"
    # Its neighbours were retired (they took no run), then removed.
    assert [(s.retired, s.runs) for s in neighbours] == [(True, 0), (True, 0)]


async def test_pods_idle_less_than_the_period_or_at_min_scale_stay(warm: Warm) -> None:
    service = scaled(warm.namespace, min_scale=1, max_scale=3)
    await warm.kube.prepare_service(service)
    await running(warm, service, 1)
    await asyncio.sleep(1.2)
    await warm.kube.scale_down_warm_pods()
    assert await replicas(warm, service) == 1  # at min_scale: stays, however idle
    await set_replicas(warm, service, 2)
    await running(warm, service, 2)
    await warm.kube.run_sync(request(service, "fresh"))  # on one of them: idle again from now
    ran = next(s for s in warm.pods.warm_servers.values() if s.runs)
    await warm.kube.scale_down_warm_pods()
    assert not ran.retired  # idle less than the period (the other may have gone: it was idle longer)
    await scale_down_until(warm, service, 1)
    await until_async(lambda: warm.live_pods(service), lambda pods: len(pods) == 1, within=30)


async def test_with_the_annotation_the_pods_scale_from_and_to_zero(warm: Warm) -> None:
    service = scaled(warm.namespace, min_scale=0, max_scale=2, annotated=True)
    await warm.kube.prepare_service(service)
    assert await replicas(warm, service) == 0
    zero = await warm.kube.warm_state(service)  # what ?include=deployment shows
    assert zero is not None
    assert (zero.state, zero.active_instances) == ("ready", 0)
    # No pod: the run is a Job, and asks for a pod; the next runs go to it.
    first = await warm.kube.run_sync(request(service, "cold"))
    assert b"".join(first.chunks()) == b"COLD"
    await until_async(lambda: replicas(warm, service), lambda count: count == 1, within=10)
    await running(warm, service, 1)
    second = await warm.kube.run_sync(request(service, "warm"))
    assert b"".join(second.chunks()) == b"WARM"
    assert warm.runs() == 1
    one = await warm.kube.warm_state(service)
    assert one is not None
    assert (one.state, one.active_instances) == ("ready", 1)
    # Idle: back to zero.
    await asyncio.sleep(1.2)
    await scale_down_until(warm, service, 0)
    await until_async(lambda: warm.live_pods(service), lambda pods: pods == [], within=30)


async def test_an_update_keeps_the_count_within_the_new_bounds(warm: Warm) -> None:
    service = scaled(warm.namespace, min_scale=1, max_scale=3)
    await warm.kube.prepare_service(service)
    await set_replicas(warm, service, 3)
    # A compare-and-swap of the count from a stale value changes nothing (and is no error).
    name = objects.deployment_name(service)
    assert not await warm.kube.warm.scaler._set_replicas(name, was=2, now=1)
    assert await replicas(warm, service) == 3
    changed = service.model_copy(update={"script": 'echo "v2"\n'})
    await warm.kube.prepare_service(changed, previous=service)
    assert await replicas(warm, service) == 3  # not back to min_scale: the pods may be in runs
    capped = changed.model_copy(
        update={"synchronous": changed.synchronous.model_copy(update={"max_scale": 2})}
    )
    await warm.kube.prepare_service(capped, previous=changed)
    assert await replicas(warm, service) == 2
    raised = capped.model_copy(
        update={"synchronous": capped.synchronous.model_copy(update={"min_scale": 2, "max_scale": 0})}
    )
    await warm.kube.prepare_service(raised, previous=capped)
    deployment = await warm.deployment(service)
    assert deployment is not None
    assert objects.deployment_bounds(deployment) == (2, 10)  # max_scale 0: OSCAR_WARM_MAX_PODS
    assert deployment["spec"]["replicas"] == 2
