"""The tests' view of the real control plane around one manager: its namespace, its node's kubelet, what
the manager asked the apiserver for (from the audit log), and edits of its Role."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from oscar_manager.settings import Settings
from tests.support import kube_cluster
from tests.support.controlplane import AuditRecord, ControlPlane, audit_records
from tests.support.kube_cluster import MANAGER_USER
from tests.support.runner_kubelet import RunnerKubelet


async def until(check: Callable[[], Any], within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "gave up waiting"
        await asyncio.sleep(0.05)


async def until_async(ask: Callable[[], Any], check: Callable[[Any], bool], within: float = 30) -> Any:
    deadline = time.monotonic() + within
    while True:
        answer = await ask()
        if check(answer):
            return answer
        assert time.monotonic() < deadline, f"gave up waiting: last {answer!r}"
        await asyncio.sleep(0.05)


async def job_created(cluster: Cluster, name: str) -> dict[str, Any]:
    found: dict[str, Any] = await until_async(lambda: cluster.get("jobs", name), lambda job: job is not None)
    return found


@dataclass
class Cluster:
    """The test's view of the control plane: its namespace, its node's kubelet, what the manager asked."""

    plane: ControlPlane
    http: httpx.AsyncClient  # as the admin
    namespace: str
    kubelet: RunnerKubelet
    settings: Settings  # the manager's
    audit_start: int

    def all_requests(self) -> list[AuditRecord]:
        """What the manager asked for in this test's namespace (or cluster-wide), in order."""
        return [
            record
            for record in audit_records(self.plane.audit_log, user=MANAGER_USER, start=self.audit_start)
            if record.namespace in (self.namespace, "")
        ]

    def requests(self) -> list[AuditRecord]:
        """The same, without the dry runs (the checks of a service's Jobs at create and update)."""
        return [record for record in self.all_requests() if not record.dry_run]

    def created_jobs(self) -> list[dict[str, Any]]:
        """Every Job the manager created (bodies as sent), deleted since or not."""
        return [
            r.body
            for r in self.requests()
            if (r.verb, r.resource, r.code) == ("create", "jobs", 201) and r.body
        ]

    async def get(self, resource: str, name: str) -> dict[str, Any] | None:
        group = "/apis/batch/v1" if resource == "jobs" else "/api/v1"
        answer = await self.http.get(f"{group}/namespaces/{self.namespace}/{resource}/{name}")
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        found: dict[str, Any] = answer.json()
        return found

    async def jobs(self) -> list[str]:
        answer = await self.http.get(f"/apis/batch/v1/namespaces/{self.namespace}/jobs")
        return sorted(job["metadata"]["name"] for job in answer.json()["items"])

    async def delete_job(self, name: str) -> None:
        """As the TTL controller does: the Job goes, its pod with it (background propagation)."""
        path = f"/apis/batch/v1/namespaces/{self.namespace}/jobs/{name}"
        await self.http.request("DELETE", path, json={"propagationPolicy": "Background"})
        selector = {"labelSelector": f"job-name={name}"}
        await until_async(
            lambda: self.http.get(f"/api/v1/namespaces/{self.namespace}/pods", params=selector),
            lambda answer: answer.json()["items"] == [],
        )


async def without_verb(cluster: Cluster, resource: str, verb: str) -> None:
    """The namespace's Role, as shipped but without ``verb`` on ``resource``, in force."""
    await kube_cluster.without_verb(cluster.http, cluster.namespace, resource, verb)


async def with_shipped_role(cluster: Cluster, *, verb: str, resource: str, group: str = "") -> None:
    """The namespace's Role as shipped again, in force (``verb`` on ``resource`` allowed again)."""
    path = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{cluster.namespace}/roles/oscar-controller"
    role = (await cluster.http.get(path)).json()
    role["rules"] = kube_cluster.shipped("Role", "oscar-controller")["rules"]
    (await cluster.http.put(path, json=role)).raise_for_status()
    await kube_cluster.until_authorised(
        cluster.http, allowed=True, verb=verb, resource=resource, group=group, namespace=cluster.namespace
    )
