"""Warm pods through the manager on Kubernetes (its real backend on the control plane, as the shipped
ServiceAccount). The pods are the manual kubelet's (Running and Ready, nothing runs); the backend's
``resolve`` hook sends their addresses to a loopback server standing in for the pods' server, doing what
the real one cannot be made to do on demand:

- a pod that breaks off a run after taking its body (``backends.warm_kube.WarmPodFailed``): it reads the
  whole request then closes the connection without a byte, as a pod killed mid-run (OOM, evicted,
  deleted) looks to the manager. ``POST /run/{service}`` answers 502 with what happened, and the run is
  not repeated as a Job (the script may have run, in part or whole);
- a pod idle for long: the manager's leader scales the service back to zero by itself."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import pytest

from oscar_manager.backends import warm_manifests as objects
from tests.support.app import give_kubernetes_resolve, served_app
from tests.support.cluster_view import Cluster, until, until_async
from tests.support.exposer import Resolved
from tests.support.factories import ADMIN_PASSWORD, service_body

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@dataclass
class IdlePod:
    """Idle for an hour; retired when asked."""

    retired: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"POST /retire "):
            self.retired.append(head)
            body = b"retired\n"
        else:
            body = json.dumps({"busy": False, "idle_seconds": 3600, "retired": False}).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()


@dataclass
class BreakingPod:
    """Reads a request (head and ``Content-Length`` body), then hangs up without answering."""

    bodies: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        self.bodies.append(await reader.readexactly(length))
        writer.transport.abort()  # a reset, no answer


Pod = TypeVar("Pod", BreakingPod, IdlePod)


@contextlib.asynccontextmanager
async def stand_in(pod: Pod) -> AsyncIterator[tuple[Pod, int]]:
    server = await asyncio.start_server(pod.handle, "127.0.0.1", 0)
    async with server:
        yield pod, server.sockets[0].getsockname()[1]


async def warm_pods(cluster: Cluster, service: str) -> list[dict[str, Any]]:
    answer = await cluster.http.get(
        f"/api/v1/namespaces/{cluster.namespace}/pods",
        params={"labelSelector": f"{objects.APP_LABEL}=oscar-svc-warm-{service}"},
    )
    return [
        p
        for p in answer.json()["items"]
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]


async def test_a_warm_pod_breaking_off_a_run_is_a_502_and_no_job(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with stand_in(BreakingPod()) as (pod, port):
        give_kubernetes_resolve(monkeypatch, Resolved(port))
        async with (
            served_app(cluster.settings) as (_app, url),
            httpx.AsyncClient(base_url=url, auth=("oscar", ADMIN_PASSWORD), timeout=30) as http,
        ):
            body = service_body("brittle", script="cat $INPUT_FILE_PATH\n", synchronous={"min_scale": 1})
            created = await http.post("/system/services", json=body)
            assert created.status_code == 201, created.text

            await until_async(lambda: warm_pods(cluster, "brittle"), lambda pods: len(pods) == 1, within=60)
            answer = await http.post("/run/brittle", content=base64.b64encode(b"once only"))
            assert answer.status_code == 502, answer.text
            assert "failed during the run" in answer.text
            assert "not run again" in answer.text
            assert pod.bodies == [base64.b64encode(b"once only")]  # it had the body: it may have run
            await asyncio.sleep(0.5)  # the audit log is written as requests complete
            assert cluster.created_jobs() == []  # ... so no Job ran it again (deleted since, or not)


async def test_the_leader_scales_idle_warm_pods_to_zero_with_the_annotation(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = cluster.settings.model_copy(update={"oscar_warm_idle_seconds": 1.0})
    async with stand_in(IdlePod()) as (pod, port):
        give_kubernetes_resolve(monkeypatch, Resolved(port))
        async with (
            served_app(settings) as (_app, url),
            httpx.AsyncClient(base_url=url, auth=("oscar", ADMIN_PASSWORD), timeout=30) as http,
        ):
            body = service_body(
                "sleepy",
                script="cat $INPUT_FILE_PATH\n",
                annotations={objects.WARM_ANNOTATION: "true"},
            )
            assert (await http.post("/system/services", json=body)).status_code == 201
            path = f"/apis/apps/v1/namespaces/{cluster.namespace}/deployments/sleepy-warm"
            merge = {"Content-Type": "application/merge-patch+json"}
            (await cluster.http.patch(path, json={"spec": {"replicas": 1}}, headers=merge)).raise_for_status()
            (running,) = await until_async(
                lambda: warm_pods(cluster, "sleepy"), lambda pods: len(pods) == 1, within=60
            )
            # The leader retires it and marks it the first to go; its probe then says not Ready (this
            # kubelet probes nothing: the test reports it).
            name = running["metadata"]["name"]
            await until(lambda: pod.retired != [], within=30)
            status = {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}
            patch = {"Content-Type": "application/strategic-merge-patch+json"}
            pod_path = f"/api/v1/namespaces/{cluster.namespace}/pods/{name}/status"
            (await cluster.http.patch(pod_path, json=status, headers=patch)).raise_for_status()
            await until_async(lambda: warm_pods(cluster, "sleepy"), lambda pods: pods == [], within=30)
            deployment = (await cluster.http.get(path)).json()
            assert deployment["spec"]["replicas"] == 0
            summary = await http.get("/system/services/sleepy", params={"include": "deployment"})
            assert summary.json()["deployment"]["resource_kind"] == "knative_service"
            assert summary.json()["deployment"]["state"] == "ready"
