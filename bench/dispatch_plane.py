"""The real control plane as ``bench.kubernetes_dispatch``'s target: the tests' plane
(``tests.support.controlplane``: etcd, kube-apiserver, controller-manager, scheduler, kwok) started for the
run, ``deploy/kubernetes``'s namespaces and RBAC applied, the manager as the shipped ServiceAccount's token.
The manager's Jobs and the raw creates each have a namespace of their own whose pods go to the kwok node,
so the Job controller, the scheduler and kwok do their real work and play every pod to Succeeded.
When a Job was created, and when it finished, is what an admin's watch sees (``bench.job_watch``).
The end to end is paced by the Job controller's writes, about six a Job (its pod, the pod's finalizer
removed, an Event, three status updates), at the controller manager's default client limit of 20 a second
(``--kube-api-qps``, left as in a cluster at the defaults; the audit log of a run shows the Job
controller's writes at a steady 20 a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes_asyncio import client

from oscar_manager.settings import Settings
from tests.support.controlplane import KWOK_NODE, ControlPlane, locate_binaries
from tests.support.kube_cluster import (
    create_namespace,
    install_shipped_rbac,
    manager_settings,
    service_account_token,
)

# The minio Secret the Jobs mount; kwok runs no container, so nothing reads it.
CREDENTIALS = {"accessKey": "bench", "secretKey": "bench"}


@dataclass
class JobWatch:
    """What ``bench.job_watch`` has seen so far in one namespace."""

    created: dict[str, float] = field(default_factory=dict)
    finished: dict[str, float] = field(default_factory=dict)

    async def follow(self, lines: asyncio.StreamReader) -> None:
        async for line in lines:
            kind, name, at = line.decode().split()
            (self.created if kind == "created" else self.finished)[name] = float(at)


@contextlib.asynccontextmanager
async def watching(plane: ControlPlane, namespace: str) -> AsyncIterator[JobWatch]:
    """``bench.job_watch`` on ``namespace``, open before this yields."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.job_watch",
        plane.url,
        namespace,
        str(plane.ca),
        str(plane.admin.cert),
        str(plane.admin.key),
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        first = await asyncio.wait_for(process.stdout.readline(), 30)
        if first.strip() != b"watching":
            raise RuntimeError(f"bench.job_watch did not start ({await process.wait()})")
        seen = JobWatch()
        following = asyncio.create_task(seen.follow(process.stdout))
        try:
            yield seen
        finally:
            following.cancel()
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()


@dataclass
class PlaneTarget:
    plane: ControlPlane
    token: str  # the shipped ServiceAccount's
    namespace: str  # the manager's Jobs'
    raw_namespace: str
    jobs: JobWatch
    raw: JobWatch
    runs_pods: bool = True

    def describe(self) -> list[tuple[str, str]]:
        return [("API server", f"real control plane, pods played by kwok ({KWOK_NODE})")]

    def raw_api(self) -> client.Configuration:
        configuration = client.Configuration(host=self.plane.url)
        configuration.ssl_ca_cert = str(self.plane.ca)
        configuration.cert_file = str(self.plane.admin.cert)
        configuration.key_file = str(self.plane.admin.key)
        return configuration

    def manager_settings(self, settings: Settings, work: Path) -> Settings:
        return manager_settings(
            settings,
            self.plane,
            self.token,
            self.namespace,
            work,
            oscar_dispatch_interval=settings.oscar_dispatch_interval,
        )

    async def created(self) -> dict[str, float]:
        return dict(self.jobs.created)

    async def finished(self) -> dict[str, float]:
        return dict(self.jobs.finished)

    async def raw_settled(self, count: int, since: float) -> float | None:
        """Waits until the raw Jobs have all finished, so that their pods are not still being played while
        the manager is measured."""
        deadline = time.monotonic() + 600
        while len(self.raw.finished) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(self.raw.finished)}/{count} raw Jobs finished in 600 s")
            await asyncio.sleep(0.1)
        return max(self.raw.finished.values()) - since


@contextlib.asynccontextmanager
async def control_plane(folder: Path) -> AsyncIterator[PlaneTarget]:
    """The control plane started in ``folder`` (about ten seconds), ready for the manager and the raw run."""
    binaries = await asyncio.to_thread(locate_binaries)
    plane = await asyncio.to_thread(ControlPlane.start_all, binaries, folder)
    try:
        async with plane.async_http(timeout=30) as admin:
            await install_shipped_rbac(admin)
            token = await service_account_token(admin)
            jobs = await create_namespace(admin, node="kwok", credentials=CREDENTIALS)
            raw = await create_namespace(admin, node="kwok", credentials=CREDENTIALS)
        async with watching(plane, jobs.name) as seen, watching(plane, raw.name) as raw_seen:
            yield PlaneTarget(plane, token, jobs.name, raw.name, seen, raw_seen)
    finally:
        await asyncio.to_thread(plane.stop_all)
