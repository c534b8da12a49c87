"""The manager's place on the tests' real control plane: the shipped manifests applied, a namespace per
test with exactly the shipped RBAC, and a kubeconfig holding the ServiceAccount's token.

``deploy/kubernetes`` is applied once per session with server-side apply (so the real apiserver validates
every object). Each test then gets a namespace of its own for its jobs: the Pod Security labels of the
shipped ``oscar-svc``, the shipped Role bound to the shipped ServiceAccount, the ``minio`` Secret the jobs
mount, and a node selector sending its pods to the test's own node (``PodNodeSelector`` admission).
"""

from __future__ import annotations

import base64
import copy
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from oscar_manager.settings import Settings
from tests.support.controlplane import NODE_SELECTOR, ControlPlane, kubeconfig
from tests.support.deploy import KUBERNETES, documents

SHIPPED_NAMESPACE = "oscar-svc"
# What the OSCAR deployment gives every job: minio.default's keys (the tests' moto S3 takes any).
MOTO_KEYS = {"accessKey": "testing", "secretKey": "testing"}
SERVICE_ACCOUNT = ("oscar", "oscar-sa")
_PLURALS = {
    "Namespace": "namespaces",
    "ServiceAccount": "serviceaccounts",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "ClusterRole": "clusterroles",
    "ClusterRoleBinding": "clusterrolebindings",
    "Secret": "secrets",
    "ConfigMap": "configmaps",
    "Service": "services",
    "Deployment": "deployments",
    "PersistentVolumeClaim": "persistentvolumeclaims",
}


def object_path(obj: dict[str, Any]) -> str:
    """The REST path of an object (its collection's, plus its name)."""
    group_version = obj["apiVersion"]
    prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    namespace = obj["metadata"].get("namespace")
    where = f"/namespaces/{namespace}" if namespace and obj["kind"] != "Namespace" else ""
    return f"{prefix}{where}/{_PLURALS[obj['kind']]}/{obj['metadata']['name']}"


async def apply(http: httpx.AsyncClient, obj: dict[str, Any], *, dry_run: bool = False) -> httpx.Response:
    """Server-side apply, as ``kubectl apply --server-side`` does (strict field validation)."""
    params = {"fieldManager": "oscar-tests", "force": "true", "fieldValidation": "Strict"}
    if dry_run:
        params["dryRun"] = "All"
    return await http.patch(
        object_path(obj), params=params, json=obj, headers={"Content-Type": "application/apply-patch+yaml"}
    )


def shipped(kind: str, name: str) -> dict[str, Any]:
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in documents(path):
            if doc.get("kind") == kind and doc["metadata"]["name"] == name:
                return doc
    raise LookupError(f"no {kind} {name} in deploy/kubernetes")


async def install_shipped_rbac(http: httpx.AsyncClient) -> None:
    """The namespaces, the ServiceAccount and the Roles of ``deploy/kubernetes`` on the apiserver."""
    for file in ("namespaces.yaml", "rbac.yaml"):
        for obj in documents(KUBERNETES / file):
            answer = await apply(http, obj)
            if answer.is_error:
                raise RuntimeError(f"applying {obj['kind']} {obj['metadata']['name']}: {answer.text}")


async def service_account_token(http: httpx.AsyncClient) -> str:
    namespace, name = SERVICE_ACCOUNT
    answer = await http.post(
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
        json={
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 86400},
        },
    )
    answer.raise_for_status()
    token: str = answer.json()["status"]["token"]
    return token


@dataclass(frozen=True)
class JobNamespace:
    name: str
    node: str  # where its pods are scheduled


async def create_namespace(
    http: httpx.AsyncClient, *, node: str, credentials: dict[str, str]
) -> JobNamespace:
    """A namespace like the shipped ``oscar-svc`` (labels, Role, RoleBinding) whose pods go to ``node``."""
    name = f"t-{secrets.token_hex(5)}"
    template = shipped("Namespace", SHIPPED_NAMESPACE)
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": dict(template["metadata"].get("labels") or {}),
            "annotations": {NODE_SELECTOR: f"type={node}"},
        },
    }
    (await http.post("/api/v1/namespaces", json=namespace)).raise_for_status()
    role = copy.deepcopy(shipped("Role", "oscar-controller"))
    binding = copy.deepcopy(shipped("RoleBinding", "oscar-controller"))
    for obj in (role, binding):
        obj["metadata"]["namespace"] = name
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "default", "namespace": name},
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "minio", "namespace": name},
        "data": {key: base64.b64encode(value.encode()).decode() for key, value in credentials.items()},
    }
    for obj in (role, binding, secret):
        answer = await apply(http, obj)
        if answer.is_error:
            raise RuntimeError(f"applying {obj['kind']}: {answer.text}")
    # The ServiceAccount admission plugin refuses pods until "default" exists; the controller makes it in
    # its own time, so make it now (an AlreadyExists is as good).
    created = await http.post(f"/api/v1/namespaces/{name}/serviceaccounts", json=account)
    if created.status_code not in (201, 409):
        created.raise_for_status()
    return JobNamespace(name=name, node=node)


def manager_settings(
    settings: Settings, plane: ControlPlane, token: str, namespace: str, folder: Path, **overrides: Any
) -> Settings:
    """``settings`` on the Kubernetes backend as the shipped ServiceAccount, running jobs in ``namespace``."""
    config = folder / "manager.kubeconfig"
    config.write_text(kubeconfig(plane.url, plane.ca, user={"token": token}, namespace=namespace))
    return settings.model_copy(
        update={
            "oscar_backend": "kubernetes",
            "oscar_kubeconfig": config,
            "oscar_services_namespace": namespace,
            "oscar_manager_image": "registry.example/oscar-manager:test",
            "oscar_dispatch_interval": 0.05,
            **overrides,
        }
    )
