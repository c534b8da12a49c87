"""A warm pod that breaks off a run after taking its body (``backends.warm_kube.WarmPodFailed``), through
the manager on Kubernetes: ``POST /run/{service}`` answers 502 with what happened, and the run is not
repeated as a Job (the script may have run, in part or whole).

The pod is the manual kubelet's (Running and Ready, nothing runs); the backend's ``resolve`` hook sends
its address to a loopback server standing in for the pod's, which reads the whole request then closes
the connection without a byte: what a pod killed mid-run (OOM, evicted, deleted) looks like to the
manager, and what the real server cannot be made to do on demand."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

from oscar_manager.backends import warm_manifests as objects
from tests.support.app import give_kubernetes_resolve, served_app
from tests.support.cluster_view import Cluster, until_async
from tests.support.exposer import Resolved
from tests.support.factories import ADMIN_PASSWORD, service_body

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


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


@contextlib.asynccontextmanager
async def breaking_pod() -> AsyncIterator[tuple[BreakingPod, int]]:
    pod = BreakingPod()
    server = await asyncio.start_server(pod.handle, "127.0.0.1", 0)
    async with server:
        yield pod, server.sockets[0].getsockname()[1]


async def test_a_warm_pod_breaking_off_a_run_is_a_502_and_no_job(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with breaking_pod() as (pod, port):
        give_kubernetes_resolve(monkeypatch, Resolved(port))
        async with (
            served_app(cluster.settings) as (_app, url),
            httpx.AsyncClient(base_url=url, auth=("oscar", ADMIN_PASSWORD), timeout=30) as http,
        ):
            body = service_body("brittle", script="cat $INPUT_FILE_PATH\n", synchronous={"min_scale": 1})
            created = await http.post("/system/services", json=body)
            assert created.status_code == 201, created.text

            async def warm_pods() -> list[object]:
                answer = await cluster.http.get(
                    f"/api/v1/namespaces/{cluster.namespace}/pods",
                    params={"labelSelector": f"{objects.APP_LABEL}=oscar-svc-warm-brittle"},
                )
                return [p for p in answer.json()["items"] if p["status"].get("phase") == "Running"]

            await until_async(warm_pods, lambda pods: len(pods) == 1, within=60)
            answer = await http.post("/run/brittle", content=base64.b64encode(b"once only"))
            assert answer.status_code == 502, answer.text
            assert "failed during the run" in answer.text
            assert "not run again" in answer.text
            assert pod.bodies == [base64.b64encode(b"once only")]  # it had the body: it may have run
            await asyncio.sleep(0.5)  # the audit log is written as requests complete
            assert cluster.created_jobs() == []  # ... so no Job ran it again (deleted since, or not)
