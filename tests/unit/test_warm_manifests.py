"""Which services have warm pods, and between which bounds (``backends.warm_manifests``): pure."""

from __future__ import annotations

from typing import Any

import pytest

from oscar_manager.backends import manifests
from oscar_manager.backends import warm_manifests as objects
from oscar_manager.domain.service import Service
from tests.unit.test_manifests import make

CLUSTER = manifests.ClusterConfig(manager_image="ghcr.io/example/oscar-manager:1.0", ttl_seconds=60)


def warm(min_scale: int = 0, max_scale: int = 0, **fields: Any) -> Service:
    return make(synchronous={"min_scale": min_scale, "max_scale": max_scale}, **fields)


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        (warm(), False),  # a plain service: a Job per run
        (warm(min_scale=1), True),  # upstream's Knative min-scale
        (warm(annotations={objects.WARM_ANNOTATION: "true"}), True),  # to zero when idle
        (warm(annotations={objects.WARM_ANNOTATION: "false"}), False),
        (warm(min_scale=1, expose={"api_port": [8080]}), False),  # exposed: its own server
        (warm(annotations={objects.WARM_ANNOTATION: "true"}, expose={"api_port": [8080]}), False),
    ],
)
def test_which_services_have_warm_pods(service: Service, expected: bool) -> None:
    assert objects.is_warm(service) is expected


@pytest.mark.parametrize(
    ("min_scale", "max_scale", "current", "replicas", "bounds"),
    [
        (1, 3, None, 1, (1, 3)),  # created: min_scale
        (0, 0, None, 0, (0, 10)),  # max_scale 0: the cluster's default cap
        (1, 3, 3, 3, (1, 3)),  # replaced: the count it has now
        (1, 2, 3, 2, (1, 2)),  # ... within the new cap
        (2, 0, 1, 2, (2, 10)),  # ... and the new minimum
    ],
)
def test_the_count_within_the_bounds(
    min_scale: int, max_scale: int, current: int | None, replicas: int, bounds: tuple[int, int]
) -> None:
    service = warm(min_scale, max_scale)
    deployment = objects.deployment(service, cluster=CLUSTER, current_replicas=current)
    assert deployment["spec"]["replicas"] == replicas
    assert objects.deployment_bounds(deployment) == bounds  # what the leader's scale-down reads


def test_the_bounds_annotations_win_over_the_services_own() -> None:
    service = warm(1, 3, annotations={objects.MIN_ANNOTATION: "0", objects.MAX_ANNOTATION: "99"})
    deployment = objects.deployment(service, cluster=CLUSTER)
    assert objects.deployment_bounds(deployment) == (1, 3)
    assert deployment["metadata"]["labels"][objects.WARM_LABEL] == "true"  # the leader lists by it


def pod(
    phase: str = "Running", *, ready: bool = True, waiting: str = "", deleting: bool = False
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "p"}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    statuses = [{"state": {"waiting": {"reason": waiting, "message": "back-off"}}}] if waiting else []
    conditions = [{"type": "Ready", "status": str(ready)}]
    return {
        "metadata": meta,
        "status": {"phase": phase, "conditions": conditions, "containerStatuses": statuses},
    }


@pytest.mark.parametrize(
    ("wanted", "pods", "expected"),
    [
        (0, [], ("ready", 0, 0)),  # scaled to zero while idle: the next run starts one
        (1, [pod(ready=False)], ("ready", 1, 0)),  # busy (not Ready) is up, not affected
        (2, [pod(), pod("Pending")], ("degraded", 1, 1)),
        (1, [pod("Pending")], ("pending", 0, 1)),
        (1, [pod(deleting=True)], ("pending", 0, 1)),  # going away: not counted
        (1, [pod(ready=False, waiting="CrashLoopBackOff")], ("failed", 0, 1)),
        (2, [pod(), pod(ready=False, waiting="CrashLoopBackOff")], ("degraded", 1, 1)),
    ],
)
def test_the_state_of_warm_pods(
    wanted: int, pods: list[dict[str, Any]], expected: tuple[str, int, int]
) -> None:
    state = objects.state_of({"spec": {"replicas": wanted}}, pods)
    assert (state.state, state.active_instances, state.affected_instances) == expected
