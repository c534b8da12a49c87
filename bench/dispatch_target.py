"""Where ``bench.kubernetes_dispatch`` sends Jobs: what every target gives the bench (:class:`Target`), the
raw kubernetes-asyncio create rate measured the same way against each, and the API double's target.
The real control plane's target is ``bench.dispatch_plane``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import aiohttp
from kubernetes_asyncio import client

from oscar_manager.backends import manifests
from oscar_manager.backends.kube_client import without_environment_lookups
from oscar_manager.domain.service import MinioDefault, normalise_new, parse_service
from oscar_manager.settings import Settings
from tests.support.kube_api import kubeconfig

# Finished Jobs stay for the whole run: no TTL deletions competing with the figures.
RAW_CLUSTER = manifests.ClusterConfig(manager_image="oscar-manager:bench", ttl_seconds=86_400)


class Target(Protocol):
    """An API server the manager creates its Jobs on, and the bench's view of them."""

    raw_namespace: str  # the raw creates' namespace: the manager's job watcher does not list those Jobs
    runs_pods: bool  # whether Jobs run to an end there (so that end-to-end figures mean something)

    def describe(self) -> list[tuple[str, str]]:
        """What the figures were measured against, as (label, value) lines."""
        ...

    def raw_api(self) -> client.Configuration:
        """The raw creates' client configuration."""
        ...

    def manager_settings(self, settings: Settings, work: Path) -> Settings:
        """``settings`` on the Kubernetes backend of this target."""
        ...

    async def created(self) -> dict[str, float]:
        """The manager's Jobs created so far: name -> when (``time.monotonic``)."""
        ...

    async def finished(self) -> dict[str, float]:
        """The manager's Jobs the API server shows Complete or Failed: name -> since when."""
        ...

    async def raw_settled(self, count: int, since: float) -> float | None:
        """Seconds from ``since`` until the ``count`` raw Jobs have all finished (None: they never run)."""
        ...


async def raw_rate(
    configuration: client.Configuration, namespace: str, count: int, concurrency: int
) -> float:
    """Creates a second of ``count`` Jobs like the manager's, ``concurrency`` at once, straight from
    kubernetes-asyncio: the most a client of that API server gets."""
    service = normalise_new(
        parse_service({"name": "raw", "image": "alpine", "script": "true"}),
        owner="cluster_admin",
        namespace=namespace,
        minio=MinioDefault(endpoint="", region="us-east-1", verify=True),
    )
    bodies: list[Any] = [
        manifests.job(service, job_id=f"raw-{index:016x}", event=b"{}", cluster=RAW_CLUSTER)
        for index in range(count)
    ]
    gate = asyncio.Semaphore(concurrency)
    async with client.ApiClient(configuration) as api:
        without_environment_lookups(api)  # as the manager's client
        batch = client.BatchV1Api(api)

        async def create(body: Any) -> None:
            async with gate:
                # As the backend does: the answer is checked, not parsed into a V1Job.
                answer = await batch.create_namespaced_job(namespace, body, _preload_content=False)
                async with cast("aiohttp.ClientResponse", answer) as raw:
                    raw.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(create(body) for body in bodies))
        return count / (time.perf_counter() - started)


@dataclass
class DoubleTarget:
    """The API double in a process of its own, answering every request after ``delay`` seconds. It runs
    no pod to an end: no end-to-end figures."""

    url: str
    delay: float
    probe: aiohttp.ClientSession
    raw_namespace: str = "raw-bench"
    runs_pods: bool = False

    def describe(self) -> list[tuple[str, str]]:
        return [("API double delay per request", f"{self.delay * 1000:.1f} ms")]

    def raw_api(self) -> client.Configuration:
        return client.Configuration(host=self.url)

    def manager_settings(self, settings: Settings, work: Path) -> Settings:
        config = work / "kubeconfig"
        config.write_text(kubeconfig(self.url))
        return settings.model_copy(update={"oscar_backend": "kubernetes", "oscar_kubeconfig": config})

    async def created(self) -> dict[str, float]:
        # The double notes when it accepted each Job, on its own clock (time.monotonic, machine-wide).
        async with self.probe.get(f"{self.url}/_double/created") as answer:
            answer.raise_for_status()
            found: dict[str, float] = await answer.json()
            return {name: at for name, at in found.items() if not name.startswith("raw-")}

    async def finished(self) -> dict[str, float]:
        return {}

    async def raw_settled(self, count: int, since: float) -> float | None:
        return None


@contextlib.asynccontextmanager
async def api_double(*, delay: float, max_history: int) -> AsyncIterator[DoubleTarget]:
    """The API double in a process of its own (schema validation off: it would make the double, not the
    manager, the bottleneck)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.kube_api",
        f"--delay={delay}",
        "--no-validate",
        f"--max-history={max_history}",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        port = int(await process.stdout.readline())
        async with aiohttp.ClientSession() as probe:
            yield DoubleTarget(url=f"http://127.0.0.1:{port}", delay=delay, probe=probe)
    finally:
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()
