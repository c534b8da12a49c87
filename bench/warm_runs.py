"""Warm sync runs against a Job per request, on the real control plane (``tests.support.controlplane``).

The plane is started for the run (about ten seconds; its binaries must be built:
``.cache/bin/controlplane-*``), ``deploy/kubernetes``'s RBAC applied, the Kubernetes backend as the shipped
ServiceAccount. Pods run on the tests' runner kubelet (``tests.support.runner_kubelet``) in this process: the
real supervisor, in-process (no image to pull or unpack, which a real node adds to every cold run), so the Job
figure is the control plane's own cost of a pod per request (Job and pod objects, the scheduler, status
updates, the log read back, the Job deleted), and the warm figure the cost of routing one HTTP request to a
pod.

Printed: the median ``run_sync`` latency of a warm pod, of a Job per request, and of the script alone
(``/bin/sh`` on the same input, the baseline of the same run), and their ratios.

    python -m bench.warm_runs [runs]
"""

from __future__ import annotations

import asyncio
import base64
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from oscar_manager.backends import manifests
from oscar_manager.backends.base import SyncRequest
from oscar_manager.backends.kubernetes import KubernetesBackend
from oscar_manager.domain.service import Service
from tests.support.cluster_view import until
from tests.support.controlplane import ControlPlane, locate_binaries
from tests.support.factories import stored_service
from tests.support.kube_cluster import (
    create_namespace,
    install_shipped_rbac,
    manager_kubeconfig,
    service_account_token,
)
from tests.support.kubelet import SupervisorKubelet
from tests.support.runner_kubelet import ApiObjects, RunnerKubelet

SCRIPT = 'tr a-z A-Z < "$INPUT_FILE_PATH"\n'
BODY = base64.b64encode(b"warm pods answer sooner")
CLUSTER = manifests.ClusterConfig(manager_image="registry.example/oscar-manager:bench", ttl_seconds=600)
CREDENTIALS = {"accessKey": "bench", "secretKey": "bench"}


def service(namespace: str, name: str, min_scale: int) -> Service:
    return stored_service(
        name, namespace=namespace, script=SCRIPT, input=[], synchronous={"min_scale": min_scale}
    )


async def timed_runs(kube: KubernetesBackend, svc: Service, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        answer = await kube.run_sync(SyncRequest(service=svc, body=BODY, timeout=60))
        times.append(time.perf_counter() - started)
        assert b"".join(answer.chunks()) == b"WARM PODS ANSWER SOONER", "wrong answer"
    return times


def script_alone(runs: int, folder: Path) -> list[float]:
    (folder / "input").write_bytes(base64.b64decode(BODY))
    (folder / "script.sh").write_text(SCRIPT)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(
            ["/bin/sh", str(folder / "script.sh")],
            env={"INPUT_FILE_PATH": str(folder / "input"), "PATH": "/usr/bin:/bin"},
            check=True,
            capture_output=True,
        )
        times.append(time.perf_counter() - started)
    return times


async def main(runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="warm-bench-") as scratch:
        folder = Path(scratch)
        binaries = await asyncio.to_thread(locate_binaries)
        plane = await asyncio.to_thread(ControlPlane.start_all, binaries, folder / "plane")
        try:
            async with plane.async_http(timeout=30) as admin:
                await install_shipped_rbac(admin)
                token = await service_account_token(admin)
                node = "bench-node"
                namespace = (await create_namespace(admin, node=node, credentials=CREDENTIALS)).name
                pods = SupervisorKubelet(ApiObjects(admin), folder / "pods", node=node)
                config = manager_kubeconfig(plane, token, namespace, folder)
                async with (
                    RunnerKubelet.running(
                        http=admin, node=node, serving=plane.pki.node_server(node), runner=pods
                    ),
                    KubernetesBackend.connect(
                        kubeconfig=config,
                        namespace=namespace,
                        cluster=CLUSTER,
                        concurrency=4,
                        resolve=pods.resolve,
                    ) as kube,
                ):
                    warm, cold = service(namespace, "warm", 1), service(namespace, "cold", 0)
                    for svc in (warm, cold):
                        await kube.prepare_service(svc)
                    await until(lambda: bool(pods.serve_ports), within=60)
                    await timed_runs(kube, warm, 2)  # connections and caches settled
                    warm_times = await timed_runs(kube, warm, runs)
                    job_times = await timed_runs(kube, cold, max(runs // 4, 3))
                    await kube.stop()
        finally:
            await asyncio.to_thread(plane.stop_all)
        alone = script_alone(runs, folder)
    warm_p50, job_p50, alone_p50 = map(statistics.median, (warm_times, job_times, alone))
    print(f"script alone (sh)        p50 {alone_p50 * 1000:8.1f} ms  ({len(alone)} runs)")
    print(f"/run on a warm pod       p50 {warm_p50 * 1000:8.1f} ms  ({len(warm_times)} runs)")
    print(f"/run as a Job per run    p50 {job_p50 * 1000:8.1f} ms  ({len(job_times)} runs)")
    print(f"Job / warm               {job_p50 / warm_p50:8.1f}x")
    print(f"warm / script alone      {warm_p50 / alone_p50:8.1f}x")
    print(f"warm overhead over script p50 {(warm_p50 - alone_p50) * 1000:6.1f} ms")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
