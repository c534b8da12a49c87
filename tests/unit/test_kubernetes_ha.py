"""deploy/kubernetes-ha, the overlay for several replicas on PostgreSQL (issue 17), as kustomize renders it:
valid objects, the base's apart from what replicas change, and the settings and timings those changes
rely on. ``tests/integration/test_deploy_on_cluster.py`` has the real apiserver accept it."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import pytest

from oscar_manager.settings import Settings
from tests.support.deploy import (
    KUBERNETES,
    KUBERNETES_HA,
    all_objects,
    kustomize,
    settings_fields,
)
from tests.support.kubernetes import validate
from tests.support.pod_security import restricted_violations

# What every replica must be given alike, else each generates its own or keeps its own state.
SHARED = {
    "OSCAR_PASSWORD",
    "OSCAR_DATABASE_URL",
    "MINIO_ENDPOINT",
    "MINIO_ACCESS_KEY",
    "MINIO_SECRET_KEY",
    "OSCAR_CREDENTIALS_KEY",
    "OSCAR_MINIO_WEBHOOK_TOKEN",
}


def key(obj: dict[str, Any]) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


@functools.cache
def _rendered(directory: Path) -> tuple[dict[str, Any], ...]:
    return tuple(kustomize(directory))


def base() -> list[dict[str, Any]]:
    return copy.deepcopy(list(_rendered(KUBERNETES)))


def ha() -> list[dict[str, Any]]:
    return copy.deepcopy(list(_rendered(KUBERNETES_HA)))


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [obj for obj in objects if obj["kind"] == kind]
    return found


def pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(objects, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (only,) = pod(objects)["containers"]
    found: dict[str, Any] = only
    return found


def env(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container(objects)["env"]}


def test_kustomize_renders_the_base_as_the_files_hold_it() -> None:
    """The base's kustomization applies exactly its files' objects (examples aside), unchanged."""
    files = {key(obj): obj for obj in all_objects(examples=False)}
    assert {key(obj): obj for obj in base()} == files


def test_the_overlay_is_the_base_without_its_volume_claim_and_with_a_disruption_budget() -> None:
    base_keys = {key(obj) for obj in base()}
    ha_keys = {key(obj) for obj in ha()}
    assert base_keys - ha_keys == {("PersistentVolumeClaim", "oscar", "oscar-manager-data")}
    assert ha_keys - base_keys == {("PodDisruptionBudget", "oscar", "oscar-manager")}
    # Namespaces, RBAC and the Service are the base's own.
    unchanged = {
        key(obj): obj for obj in base() if obj["kind"] not in ("Deployment", "PersistentVolumeClaim")
    }
    assert {key(obj): obj for obj in ha() if key(obj) in unchanged} == unchanged


@pytest.mark.parametrize("kind", ["Deployment", "PodDisruptionBudget"])
def test_the_objects_the_overlay_changes_or_adds_are_valid(kind: str) -> None:
    validate(one(ha(), kind))


def test_two_replicas_rolled_one_at_a_time_without_going_below_two() -> None:
    spec = one(ha(), "Deployment")["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }


def test_no_state_on_a_volume_and_none_left_in_the_pod_but_what_it_makes_for_itself() -> None:
    volumes = {volume["name"]: volume for volume in pod(ha())["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container(ha())["volumeMounts"]}
    data = volumes[mounts["/var/lib/oscar-manager"]]
    assert set(data) == {"name", "emptyDir"}
    assert all("persistentVolumeClaim" not in volume for volume in volumes.values())


def test_the_database_minio_and_the_secrets_replicas_share_are_required_from_the_secret() -> None:
    variables = env(ha())
    assert set(variables) <= settings_fields()
    example = (KUBERNETES / "secret.example.yaml").read_text()
    for name in SHARED:
        reference = variables[name]["valueFrom"]["secretKeyRef"]
        assert reference["name"] == "oscar-manager"
        assert reference["key"] == name
        assert reference.get("optional", False) is False, name  # a pod without it is not started
        assert name in example
    # The same names the base passes on (optional there): the overlay only makes them required.
    assert SHARED <= set(env(base()))


def test_the_probes_are_the_bases() -> None:
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container(ha())[probe] == container(base())[probe]
    assert container(ha())["readinessProbe"]["httpGet"]["path"] == "/health?ready=1"


def test_the_kubelet_waits_for_endpoints_to_drop_the_pod_then_for_requests_to_finish() -> None:
    """preStop pause, then SIGTERM: the manager drains for OSCAR_GRACEFUL_SHUTDOWN_TIMEOUT and shuts down,
    all inside terminationGracePeriodSeconds (counted from the start of preStop), else SIGKILL."""
    pause = container(ha())["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pause >= 3
    drain_value = env(ha())["OSCAR_GRACEFUL_SHUTDOWN_TIMEOUT"]["value"]
    drain = Settings.model_validate({"oscar_graceful_shutdown_timeout": drain_value})
    # Margin for the app's own shutdown after the drain (workers, connections): at least 10 s.
    assert pod(ha())["terminationGracePeriodSeconds"] >= pause + drain.oscar_graceful_shutdown_timeout + 10


def test_the_disruption_budget_keeps_one_of_the_managers_pods() -> None:
    budget = one(ha(), "PodDisruptionBudget")
    deployment = one(ha(), "Deployment")
    assert budget["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]  # a drain can proceed


def test_replicas_prefer_different_nodes() -> None:
    affinity = pod(ha())["affinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in affinity["podAntiAffinity"]
    (term,) = affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    labels = one(ha(), "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()


def test_the_pods_still_meet_restricted() -> None:
    assert restricted_violations(pod(ha())) == []
