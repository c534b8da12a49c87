"""The manager's place on the tests' real control plane: the shipped manifests applied, a namespace per
test with exactly the shipped RBAC, and a kubeconfig holding the ServiceAccount's token.

``deploy/kubernetes`` is applied once per session with server-side apply (so the real apiserver validates
every object). Each test then gets a namespace of its own for its jobs: the Pod Security labels of the
shipped ``oscar-svc``, the shipped Role bound to the shipped ServiceAccount, the ``minio`` Secret the jobs
mount, and a node selector sending its pods to the test's own node (``PodNodeSelector`` admission).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import secrets
import time
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
MANAGER_USER = f"system:serviceaccount:{SERVICE_ACCOUNT[0]}:{SERVICE_ACCOUNT[1]}"
# The groups the apiserver puts a ServiceAccount's token in (RBAC also matches subjects by group).
MANAGER_GROUPS = [
    "system:serviceaccounts",
    f"system:serviceaccounts:{SERVICE_ACCOUNT[0]}",
    "system:authenticated",
]
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
    "PodDisruptionBudget": "poddisruptionbudgets",
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


def manager_kubeconfig(plane: ControlPlane, token: str, namespace: str, folder: Path) -> Path:
    """A kubeconfig in ``folder`` for the shipped ServiceAccount's ``token``, in ``namespace``."""
    config = folder / "manager.kubeconfig"
    config.write_text(kubeconfig(plane.url, plane.ca, user={"token": token}, namespace=namespace))
    return config


def manager_settings(
    settings: Settings, plane: ControlPlane, token: str, namespace: str, folder: Path, **overrides: Any
) -> Settings:
    """``settings`` on the Kubernetes backend as the shipped ServiceAccount, running jobs in ``namespace``."""
    config = manager_kubeconfig(plane, token, namespace, folder)
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


async def manager_may(
    http: httpx.AsyncClient, *, verb: str, resource: str, group: str = "", namespace: str = ""
) -> bool:
    """Whether the apiserver's authoriser now lets the manager do ``verb`` on ``resource`` (``pods/log``
    for a subresource; no ``namespace``: cluster-scoped), as a SubjectAccessReview answers it."""
    plural, _, subresource = resource.partition("/")
    attributes = {"verb": verb, "group": group, "resource": plural, "subresource": subresource}
    if namespace:
        attributes["namespace"] = namespace
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {"user": MANAGER_USER, "groups": MANAGER_GROUPS, "resourceAttributes": attributes},
    }
    answer = await http.post("/apis/authorization.k8s.io/v1/subjectaccessreviews", json=review)
    answer.raise_for_status()
    return bool(answer.json()["status"].get("allowed"))


async def until_authorised(
    http: httpx.AsyncClient, *, allowed: bool, within: float = 20, **access: str
) -> None:
    """Wait until an edited Role or ClusterRole is in force: the RBAC authoriser follows them through an
    informer, so a request right after the edit may still be decided by the old rules."""
    deadline = time.monotonic() + within
    while await manager_may(http, **access) != allowed:
        assert time.monotonic() < deadline, f"RBAC still {'refuses' if allowed else 'allows'} {access}"
        await asyncio.sleep(0.05)


async def without_verb(http: httpx.AsyncClient, namespace: str, resource: str, verb: str) -> None:
    """The namespace's Role, as shipped but without ``verb`` on ``resource``: RBAC refuses it for real
    (once in force: waited for). Every rule naming ``resource`` loses the verb, for all its resources."""
    path = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles/oscar-controller"
    role = (await http.get(path)).json()
    group = ""
    for rule in role["rules"]:
        if resource in rule["resources"]:
            rule["verbs"] = [v for v in rule["verbs"] if v != verb]
            group = rule["apiGroups"][0]
    (await http.put(path, json=role)).raise_for_status()
    await until_authorised(
        http, allowed=False, verb=verb, resource=resource, group=group, namespace=namespace
    )


def manager_environment(plane: ControlPlane, token: str, namespace: str, folder: Path) -> dict[str, str]:
    """What :func:`manager_settings` sets, as the environment of an ``oscar-manager serve`` process."""
    return {
        "OSCAR_BACKEND": "kubernetes",
        "OSCAR_KUBECONFIG": str(manager_kubeconfig(plane, token, namespace, folder)),
        "OSCAR_SERVICES_NAMESPACE": namespace,
        "OSCAR_MANAGER_IMAGE": "registry.example/oscar-manager:test",
        "OSCAR_DISPATCH_INTERVAL": "0.05",
    }
