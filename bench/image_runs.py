"""Local runs in a service's image against sandboxed runs with this machine's tools, in the same run.

Through the local executor in-process (``LocalBackend.run_sync``: stage in, sandbox, stage out), with the
real bubblewrap sandbox (and the drop to ``nobody`` when running as root) and a real registry on loopback
(Debian's ``docker-registry``) serving busybox images written here:

1. first run of a new image: resolve, pull, verify, unpack, then run (each sample a distinct image);
2. later runs of that image (cached: no registry request);
3. the same script with this machine's tools (``OSCAR_LOCAL_IMAGES=host``), the baseline.

Usage: ``python -m bench.image_runs [--runs 200] [--images 10]``. Prints figures as ratios to the baseline;
asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from oscar_manager.backends.base import SyncRequest
from oscar_manager.backends.images.service_images import ImageMode, ServiceImages
from oscar_manager.backends.images.store import ImageStore
from oscar_manager.backends.local import LocalBackend
from oscar_manager.backends.sandbox import Sandbox
from oscar_manager.domain.service import MinioDefault, Service, normalise_new, parse_service
from oscar_manager.local_runtime import unprivileged_user
from oscar_manager.storage.local import LocalObjectStore
from oscar_manager.storage.providers import Stores
from tests.support.oci_registry import Entry, OciImage, Registry, layer
from tests.support.supervisor import static_busybox

SCRIPT = 'cat "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/out"\n'


def service(image: str) -> Service:
    return normalise_new(
        parse_service({"name": "bench", "image": image, "script": SCRIPT}),
        owner="o",
        namespace="ns",
        minio=MinioDefault(endpoint="", region="", verify=True),
    )


def backend(folder: Path, sandbox: Sandbox, images: ServiceImages) -> LocalBackend:
    return LocalBackend(
        stores=Stores(LocalObjectStore(folder / "buckets")),
        sandbox=sandbox,
        work_root=folder / "work",
        concurrency=4,
        job_timeout=120,
        images=images,
    )


def _own_layer(busybox: bytes, n: int) -> bytes:
    entries = [Entry("bin", kind="dir"), Entry("bin/busybox", busybox, mode=0o755)]
    entries += [Entry(f"bin/{tool}", kind="symlink", link="busybox") for tool in ("sh", "cat")]
    return layer([*entries, Entry("etc/motd", f"{n}\n".encode())])


async def once(target: LocalBackend, svc: Service) -> None:
    answer = await target.run_sync(SyncRequest(service=svc, body=base64.b64encode(b"hello"), timeout=120))
    answer.close()


async def timed(action: Callable[[], Awaitable[None]], runs: int, *, warm_up: int = 10) -> list[float]:
    for _ in range(warm_up):
        await action()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        await action()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def summary(name: str, samples: list[float], baseline: float) -> str:
    p50 = statistics.median(samples)
    return (
        f"{name:<34} p50 {p50:8.2f} ms  min {min(samples):8.2f} ms  ratio to host tools {p50 / baseline:6.2f}"
        f"  (+{p50 - baseline:.2f} ms)"
    )


async def main(runs: int, image_count: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="oscar-bench-images-"))
    os.chmod(folder, 0o711)  # noqa: S103 - traversable by the scripts' user
    registry = Registry.start(folder / "registry")
    try:
        # Each image one layer of its own (busybox and a file that differs): nothing of a new image is
        # in the cache before its first run.
        busybox = static_busybox().read_bytes()
        references = [
            registry.push(f"bench/img{n}", "v1", OciImage([_own_layer(busybox, n)]))
            for n in range(image_count + 1)
        ]
        sandbox = Sandbox(require=True, run_as=unprivileged_user() if os.geteuid() == 0 else None)
        for sub in ("work", "images"):
            (folder / sub).mkdir()
            os.chmod(folder / sub, 0o711)  # noqa: S103
        store = ImageStore(folder / "images", max_bytes=4 << 30)
        store.open()
        with_images = backend(folder, sandbox, ServiceImages(store, mode=ImageMode.PULL, sandboxed=True))
        host = backend(folder, sandbox, ServiceImages(None, mode=ImageMode.HOST, sandboxed=True))
        first: list[float] = []
        for reference in references[1:]:
            start = time.perf_counter()
            await once(with_images, service(reference))
            first.append((time.perf_counter() - start) * 1000)
        # Warm image runs and host-tools runs alternate, so that the machine's noise falls on both alike.
        host_run = lambda: once(host, service("busybox"))  # noqa: E731
        warm_run = lambda: once(with_images, service(references[0]))  # noqa: E731
        host_samples: list[float] = []
        warm: list[float] = []
        for _ in range(runs // 10):
            host_samples += await timed(host_run, 10, warm_up=1)
            warm += await timed(warm_run, 10, warm_up=1)
        baseline = statistics.median(host_samples)
        print(
            f"images: static busybox ({len(busybox)} bytes), one layer each;"
            f" {runs} runs, {image_count} new images"
        )
        print(summary("host tools, sandboxed (baseline)", host_samples, baseline))
        print(summary("image, first run (pull + unpack)", first, baseline))
        print(summary("image, later runs (cached)", warm, baseline))
        await with_images.stop()
        await host.stop()
    finally:
        registry.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--images", type=int, default=10)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.runs, arguments.images))
