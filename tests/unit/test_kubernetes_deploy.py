"""deploy/kubernetes: every object valid for the official schema, and the references between objects,
and between the objects and the manager's code, that a real cluster would only reveal at run time."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from oscar_manager.app import create_app
from oscar_manager.backends import manifests
from oscar_manager.domain.service import MinioDefault, normalise_new, parse_service
from oscar_manager.settings import BackendKind, Settings
from tests.support.deploy import (
    KUBERNETES,
    KUSTOMIZATION,
    documents,
    find,
    manifest_files,
    of_kind,
    settings_fields,
)
from tests.support.factories import make_settings
from tests.support.kubernetes import validate
from tests.support.pod_security import baseline_violations, restricted_violations

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}


def _documents() -> list[Any]:
    return [
        pytest.param(doc, id=f"{path.name}:{doc['kind']}/{doc['metadata']['name']}")
        for path in manifest_files()
        for doc in documents(path)
    ]


@pytest.mark.parametrize("doc", _documents())
def test_every_object_is_valid_and_lands_in_a_namespace_defined_here(doc: dict[str, Any]) -> None:
    validate(doc)
    namespaces = {ns["metadata"]["name"] for ns in of_kind("Namespace")}
    if doc["kind"] not in CLUSTER_SCOPED:
        # Without one, kubectl apply puts it in whatever namespace the user's context has.
        assert doc["metadata"].get("namespace") in namespaces


def test_every_manifest_file_holds_objects_and_kustomize_applies_all_but_the_examples() -> None:
    files = manifest_files()
    assert {path.name for path in files} >= {"namespaces.yaml", "rbac.yaml", "manager.yaml"}
    for path in files:
        assert documents(path), f"{path} holds no object"
    kustomization = yaml.safe_load((KUBERNETES / KUSTOMIZATION).read_text())
    applied = {str(path.relative_to(KUBERNETES)) for path in files if not path.name.endswith(".example.yaml")}
    assert set(kustomization["resources"]) == applied
    assert all((KUBERNETES / resource).is_file() for resource in kustomization["resources"])


# --- the manager's identity and its permissions ----------------------------------------------------------


def deployment() -> dict[str, Any]:
    return find("Deployment", "oscar-manager")


def pod() -> dict[str, Any]:
    spec: dict[str, Any] = deployment()["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (only,) = pod()["containers"]
    found: dict[str, Any] = only
    return found


def test_the_role_binding_gives_the_role_to_the_deployments_service_account() -> None:
    binding = find("RoleBinding", "oscar-controller")
    role = find(binding["roleRef"]["kind"], binding["roleRef"]["name"])
    assert binding["roleRef"]["apiGroup"] == "rbac.authorization.k8s.io"
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"]
    account = find("ServiceAccount", pod()["serviceAccountName"])
    assert {
        "kind": "ServiceAccount",
        "name": account["metadata"]["name"],
        "namespace": account["metadata"]["namespace"],
    } in binding["subjects"]
    assert account["metadata"]["namespace"] == deployment()["metadata"]["namespace"]
    assert pod().get("automountServiceAccountToken", True) is True  # the backend authenticates with it


def test_the_role_is_in_the_namespace_the_manager_runs_jobs_in_and_cluster_wide_only_nodes_are_listed() -> (
    None
):
    role = find("Role", "oscar-controller")
    assert role["metadata"]["namespace"] == settings_from_env().oscar_services_namespace
    assert [r["metadata"]["name"] for r in of_kind("Role")] == ["oscar-controller"]
    # /system/status reads the nodes and their usage: list, and nothing else, cluster-wide.
    (cluster,) = of_kind("ClusterRole")
    assert cluster["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
        {"apiGroups": ["metrics.k8s.io"], "resources": ["nodes"], "verbs": ["list"]},
    ]
    (binding,) = of_kind("ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": cluster["metadata"]["name"],
    }
    account = find("ServiceAccount", pod()["serviceAccountName"])
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]


# --- the Deployment and its settings ------------------------------------------------------------------------


def plain_env() -> dict[str, str]:
    return {item["name"]: item["value"] for item in container()["env"] if "value" in item}


def settings_from_env() -> Settings:
    """What the manager would read from the Deployment's literal values (no environment or dotenv)."""
    return Settings.model_validate({name.lower(): value for name, value in plain_env().items()})


def test_every_variable_the_deployment_sets_is_a_setting_of_the_manager() -> None:
    names = [item["name"] for item in container()["env"]]
    assert len(names) == len(set(names))
    assert set(names) - settings_fields() == set()


def test_the_settings_the_deployment_sets_agree_with_the_objects_around_it() -> None:
    settings = settings_from_env()
    assert settings.oscar_backend == BackendKind.KUBERNETES
    assert settings.oscar_host == "0.0.0.0"  # noqa: S104 - reachable by the kubelet and the Service
    # Jobs take the supervisor executable from the manager's own image.
    assert settings.oscar_manager_image == container()["image"]
    ports = {port["name"]: port["containerPort"] for port in container()["ports"]}
    assert settings.oscar_service_port in ports.values()
    namespaces = {ns["metadata"]["name"] for ns in of_kind("Namespace")}
    assert settings.oscar_services_namespace in namespaces
    assert settings.oscar_services_namespace != deployment()["metadata"]["namespace"]
    derived = {item["name"]: item["valueFrom"] for item in container()["env"] if "valueFrom" in item}
    assert derived["OSCAR_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert derived["OSCAR_CONTROLLER_SERVICE_ACCOUNT"] == {
        "fieldRef": {"fieldPath": "spec.serviceAccountName"}
    }


def test_the_data_directory_is_a_persistent_volume_and_one_pod_at_a_time_writes_it() -> None:
    settings = settings_from_env()
    mounts = {mount["mountPath"]: mount["name"] for mount in container()["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod()["volumes"]}
    data = volumes[mounts[str(settings.oscar_data_dir)]]
    claim = find("PersistentVolumeClaim", data["persistentVolumeClaim"]["claimName"])
    assert claim["metadata"]["namespace"] == deployment()["metadata"]["namespace"]
    # SQLite on a ReadWriteOnce volume: one writer, and never two pods during an update.
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert deployment()["spec"]["replicas"] == 1
    assert deployment()["spec"]["strategy"] == {"type": "Recreate"}


def test_credentials_come_from_the_example_secrets_keys() -> None:
    refs = [
        item["valueFrom"]["secretKeyRef"]
        for item in container()["env"]
        if "secretKeyRef" in item.get("valueFrom", {})
    ]
    names = {item["name"] for item in container()["env"] if "secretKeyRef" in item.get("valueFrom", {})}
    assert {
        "OSCAR_PASSWORD",
        "OSCAR_DATABASE_URL",
        "MINIO_ENDPOINT",
        "MINIO_ACCESS_KEY",
        "MINIO_SECRET_KEY",
    } <= names
    example = KUBERNETES / "secret.example.yaml"
    for ref in refs:
        secret = find("Secret", ref["name"], examples=True)
        assert secret["metadata"]["namespace"] == deployment()["metadata"]["namespace"]
        if ref.get("optional"):
            assert ref["key"] in example.read_text()  # documented there
        else:
            assert ref["key"] in secret["stringData"]
    assert not any(item["name"] in ("OSCAR_PASSWORD",) and "value" in item for item in container()["env"])


def test_the_jobs_credentials_secret_is_where_the_jobs_mount_it_with_the_keys_the_supervisor_reads() -> None:
    secret = find(
        "Secret", manifests.ClusterConfig(manager_image="x", ttl_seconds=1).credentials_secret, examples=True
    )
    assert secret["metadata"]["namespace"] == settings_from_env().oscar_services_namespace
    assert set(secret["stringData"]) == {"accessKey", "secretKey"}


def test_kubernetes_service_links_cannot_override_a_setting() -> None:
    """Service links put ``<SERVICE>_SERVICE_HOST``/``_SERVICE_PORT``/``_PORT...`` of every Service in the
    namespace into the environment: the Service ``oscar`` would set OSCAR_SERVICE_PORT, a setting."""
    namespace = deployment()["metadata"]["namespace"]
    injected = set()
    for service in of_kind("Service"):
        if service["metadata"]["namespace"] == namespace:
            prefix = re.sub(r"[^A-Z0-9]", "_", service["metadata"]["name"].upper())
            injected |= {f"{prefix}_SERVICE_HOST", f"{prefix}_SERVICE_PORT", f"{prefix}_PORT"}
    assert pod().get("enableServiceLinks", True) is False or not injected & settings_fields()


# --- the Service and the probes ------------------------------------------------------------------------


def test_the_service_reaches_the_managers_port() -> None:
    service = find("Service", "oscar")
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert service["metadata"]["namespace"] == deployment()["metadata"]["namespace"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment()["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == 8080
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    target = port["targetPort"]
    assert (ports[target] if isinstance(target, str) else target) == settings_from_env().oscar_service_port


async def test_the_probes_ask_a_path_the_app_serves_without_credentials(tmp_path: Path) -> None:
    app = create_app(make_settings(database_url="sqlite+aiosqlite:///unused.db", data_dir=tmp_path))
    # The routes as the app publishes them (routers are nested: the OpenAPI paths list them all).
    served = {(path, method.upper()) for path, item in app.openapi()["paths"].items() for method in item}
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    probes = {kind: container()[kind] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as http:
        for kind, probe in probes.items():
            path, port = probe["httpGet"]["path"], probe["httpGet"]["port"]
            assert (path.partition("?")[0], "GET") in served
            assert (ports[port] if isinstance(port, str) else port) == settings_from_env().oscar_service_port
            answer = await http.get(path)  # as the kubelet asks: no credentials
            if kind == "readinessProbe":
                # The readiness answer: JSON saying what is down (here nothing runs: not started).
                assert answer.status_code == 503
                assert answer.json()["ready"] is False
            else:
                assert answer.status_code == 200


def test_the_readiness_probe_asks_for_readiness_and_the_liveness_probe_does_not() -> None:
    assert container()["readinessProbe"]["httpGet"]["path"] == "/health?ready=1"
    assert container()["livenessProbe"]["httpGet"]["path"] == "/health"


# --- Pod Security --------------------------------------------------------------------------------------


def test_the_pod_security_checks_here_catch_what_they_should() -> None:
    assert restricted_violations({"containers": [{"name": "c"}]}) != []
    assert baseline_violations({"containers": [{"name": "c", "securityContext": {"privileged": True}}]}) != []
    assert (
        baseline_violations(
            {"containers": [{"name": "c"}], "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}
        )
        != []
    )


def _enforced(namespace: str) -> str:
    return str(find("Namespace", namespace)["metadata"]["labels"]["pod-security.kubernetes.io/enforce"])


def test_the_manager_runs_as_a_restricted_non_root_user_on_a_read_only_root() -> None:
    namespace = deployment()["metadata"]["namespace"]
    assert _enforced(namespace) == "restricted"
    assert restricted_violations(pod()) == []
    assert pod()["securityContext"]["runAsUser"] == 10001
    assert container()["securityContext"]["readOnlyRootFilesystem"] is True
    # The read-only root leaves the data directory and /tmp writable, on volumes.
    mounts = {mount["mountPath"]: mount for mount in container()["volumeMounts"]}
    for path in (str(settings_from_env().oscar_data_dir), "/tmp"):
        assert not mounts[path].get("readOnly", False)
    resources = container()["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert "memory" in resources["limits"]


@pytest.mark.parametrize("fields", [{}, {"enable_gpu": True, "environment": {"secrets": {"K": "v"}}}])
def test_the_jobs_the_manager_creates_are_admitted_in_the_services_namespace(fields: dict[str, Any]) -> None:
    namespace = settings_from_env().oscar_services_namespace
    assert _enforced(namespace) == "baseline"
    body = {
        "name": "grayify",
        "image": "alpine",
        "script": "echo\n",
        "input": [{"path": "grayify/in"}],
        **fields,
    }
    minio = MinioDefault(endpoint="http://minio:9000", region="us-east-1", verify=True)
    service = normalise_new(parse_service(body), owner="cluster_admin", namespace=namespace, minio=minio)
    job = manifests.job(
        service,
        job_id="grayify-0123456789abcdef",
        event=b"{}",
        cluster=manifests.ClusterConfig(
            manager_image=settings_from_env().oscar_manager_image, ttl_seconds=60
        ),
    )
    assert baseline_violations(job["spec"]["template"]["spec"]) == []
