"""Local jobs in their service's image: pulled from a real registry on loopback, run under the real
bubblewrap sandbox (as ``nobody`` when the tests run as root, as the manager does)."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from oscar_manager.backends.base import JobRequest, SyncRequest
from oscar_manager.backends.images.service_images import ImageMode, ServiceImages
from oscar_manager.backends.images.store import ImageStore
from oscar_manager.backends.local import LocalBackend
from oscar_manager.backends.sandbox import Sandbox, SandboxUnavailable
from oscar_manager.domain.service import MinioDefault, Service, normalise_new, parse_service
from oscar_manager.local_runtime import unprivileged_user
from oscar_manager.storage.local import LocalObjectStore
from oscar_manager.storage.providers import Stores
from tests.support.components import unavailable
from tests.support.oci_registry import Entry, OciImage, Registry, layer
from tests.support.reporter import RecordingReporter

# Everything the image's busybox offers, and one thing the host has that the image has not.
PROBE = """
echo "tools: $(ls /bin | tr '\\n' ' ')"
echo "pwd: $(pwd)"
echo "greeting: $GREETING"
echo "path: $PATH"
echo "motd: $(cat /etc/motd 2>&1)"
echo "id: $(id -u):$(id -g)"
command -v python3 >/dev/null && echo "host python visible" || echo "no python"
"""


def service(image: str, script: str = PROBE, **fields: Any) -> Service:
    return normalise_new(
        parse_service({"name": "svc", "image": image, "script": script, **fields}),
        owner="o",
        namespace="ns",
        minio=MinioDefault(endpoint="", region="", verify=True),
    )


def sandbox() -> Sandbox:
    try:
        return Sandbox(require=True, run_as=unprivileged_user() if os.geteuid() == 0 else None)
    except SandboxUnavailable as exc:
        unavailable(str(exc))


def make_backend(shared: Path, tmp_path: Path, mode: ImageMode, **store: Any) -> LocalBackend:
    found = sandbox()
    images = ImageStore(shared / "images", max_bytes=store.pop("max_bytes", 64 << 20), **store)
    images.open()
    work = shared / "work"
    work.mkdir(exist_ok=True)
    os.chmod(work, 0o711)  # noqa: S103
    return LocalBackend(
        stores=Stores(LocalObjectStore(tmp_path / "buckets")),
        sandbox=found,
        work_root=work,
        concurrency=2,
        job_timeout=60,
        images=ServiceImages(images, mode=mode, sandboxed=found.sandboxed),
    )


@pytest.fixture
async def backend(shared_dir: Path, tmp_path: Path) -> AsyncIterator[LocalBackend]:
    found = make_backend(shared_dir, tmp_path, ImageMode.PULL)
    yield found
    await found.stop()


async def run(backend: LocalBackend, svc: Service) -> str:
    answer = await backend.run_sync(SyncRequest(service=svc, body=base64.b64encode(b"x"), timeout=60))
    try:
        return b"".join(answer.chunks()).decode()
    finally:
        answer.close()


async def wait_until(condition: Callable[[], bool], within: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_the_script_sees_the_images_tools_env_and_workdir(
    registry: Registry, busybox_base: bytes, backend: LocalBackend
) -> None:
    extra = layer([Entry("etc/motd", b"from the image\n"), Entry("srv/data", kind="dir")])
    image = OciImage(
        [busybox_base, extra],
        env=["PATH=/bin:/opt/bin", "GREETING=hello from config"],
        working_dir="/srv/data",
        user="1234:5678",
    )
    reference = registry.push("runs/probe", "v1", image)
    text = await run(backend, service(reference))
    assert "tools: busybox cat echo env id ls pwd sh " in text
    assert "no python" in text  # the host's /usr/bin/python3 is not there
    assert "pwd: /srv/data" in text
    assert "greeting: hello from config" in text
    assert "path: /bin:/opt/bin" in text
    assert "motd: from the image" in text
    assert "id: 1234:5678" in text
    # The service's own variables win over the image's.
    text = await run(backend, service(reference, environment={"variables": {"GREETING": "from the service"}}))
    assert "greeting: from the service" in text


async def test_the_image_root_is_read_only_and_the_job_folder_writable(
    registry: Registry, busybox_base: bytes, backend: LocalBackend
) -> None:
    reference = registry.push("runs/readonly", "v1", OciImage([busybox_base]))
    script = (
        "echo x > /bin/planted 2>/dev/null && echo wrote-root || echo root-read-only\n"
        'echo job-folder-ok > "$HOME/o"; cat "$HOME/o"\n'
    )
    text = await run(backend, service(reference, script))
    assert "root-read-only" in text
    assert "job-folder-ok" in text


async def test_first_job_log_says_it_pulled_and_later_ones_do_not(
    registry: Registry, busybox_base: bytes, backend: LocalBackend
) -> None:
    reference = registry.push("runs/logs", "v1", OciImage([busybox_base]))
    recorder = RecordingReporter()
    await backend.start(recorder)
    for job_id in ("first", "second"):
        request = JobRequest(job_id=job_id, service=service(reference, "echo ran"), payload=b"", attempt=1)
        await backend.submit(request)
        await wait_until(lambda job_id=job_id: job_id in recorder.outcomes)  # type: ignore[misc]
    first, second = recorder.outcomes["first"], recorder.outcomes["second"]
    assert first.status.value == "Succeeded", first.log
    assert f"Pulled image {reference}" in first.log
    assert "Pulled image" not in second.log
    assert "ran" in second.log


async def test_a_missing_image_fails_the_job_with_the_registrys_answer(
    registry: Registry, backend: LocalBackend
) -> None:
    recorder = RecordingReporter()
    await backend.start(recorder)
    missing = f"{registry.host}/runs/nothing:v9"
    await backend.submit(JobRequest(job_id="j", service=service(missing), payload=b"", attempt=1))
    await wait_until(lambda: "j" in recorder.outcomes)
    outcome = recorder.outcomes["j"]
    assert outcome.status.value == "Failed"
    assert "answered 404" in outcome.log
    assert "MANIFEST_UNKNOWN" in outcome.log or "NAME_UNKNOWN" in outcome.log


async def test_a_private_image_without_credentials_is_a_401_said_so(
    private_registry: Registry, busybox_base: bytes, backend: LocalBackend
) -> None:
    reference = private_registry.push("runs/private", "v1", OciImage([busybox_base]))
    with pytest.raises(Exception, match="401 Unauthorized without credentials") as caught:
        await run(backend, service(reference))
    assert getattr(caught.value, "status_code", None) == 502


async def test_auto_falls_back_to_host_tools_only_when_the_registry_is_unreachable(
    registry: Registry, shared_dir: Path, tmp_path: Path
) -> None:
    backend = make_backend(shared_dir, tmp_path, ImageMode.AUTO)
    try:
        recorder = RecordingReporter()
        await backend.start(recorder)
        nowhere = "127.0.0.1:9/runs/nothing:v1"  # the discard port: nothing listens
        await backend.submit(
            JobRequest(job_id="a", service=service(nowhere, "echo ran"), payload=b"", attempt=1)
        )
        await wait_until(lambda: "a" in recorder.outcomes)
        outcome = recorder.outcomes["a"]
        assert outcome.status.value == "Succeeded", outcome.log
        assert "cannot be reached" in outcome.log
        assert "runs with this machine's tools" in outcome.log
        # A registry that answers decides, even in auto: no such image fails the job.
        missing = f"{registry.host}/runs/nothing:v1"
        await backend.submit(JobRequest(job_id="b", service=service(missing), payload=b"", attempt=1))
        await wait_until(lambda: "b" in recorder.outcomes)
        assert recorder.outcomes["b"].status.value == "Failed"
        info = backend.describe()["images"]
        assert info["mode"] == "auto"
    finally:
        await backend.stop()


async def test_system_info_lists_cached_images_with_sizes(
    registry: Registry, busybox_base: bytes, backend: LocalBackend
) -> None:
    reference = registry.push("runs/info", "v1", OciImage([busybox_base]))
    await run(backend, service(reference, "true"))
    info = backend.describe()
    assert info["images_pulled"] is True
    assert info["images"]["mode"] == "pull"
    [cached] = info["images"]["cached"]
    assert cached["references"] == [reference]
    assert cached["size"] > 1_000_000
    assert info["images"]["cache_bytes"] == cached["size"]


async def test_prepull_fetches_existing_services_images_before_their_jobs(
    registry: Registry, busybox_base: bytes, backend: LocalBackend
) -> None:
    reference = registry.push("runs/prepull", "v1", OciImage([busybox_base]))
    missing = service(f"{registry.host}/runs/never-pushed:v1")
    failed = await backend.prepull([service(reference), service(reference, "true"), missing])
    assert failed == 1  # the missing one, logged; the others pulled once
    assert [entry["references"] for entry in backend.describe()["images"]["cached"]] == [[reference]]
    recorder = RecordingReporter()
    await backend.start(recorder)
    await backend.submit(
        JobRequest(job_id="j", service=service(reference, "echo ran"), payload=b"", attempt=1)
    )
    await wait_until(lambda: "j" in recorder.outcomes)
    assert "Pulled image" not in recorder.outcomes["j"].log


async def test_an_updated_service_resolves_its_tag_again(
    busybox_base: bytes, backend: LocalBackend, tmp_path: Path
) -> None:
    own = Registry.start(tmp_path / "registry")  # stopped below, as a registry that went away
    try:
        motd = "cat /etc/motd"
        reference = own.push(
            "runs/retag", "latest", OciImage([busybox_base, layer([Entry("etc/motd", b"one\n")])])
        )
        svc = service(reference, motd)
        assert "one" in await run(backend, svc)
        own.push("runs/retag", "latest", OciImage([busybox_base, layer([Entry("etc/motd", b"two\n")])]))
        assert "one" in await run(backend, svc)  # resolved once, kept: no request per job
        await backend.prepare_service(svc, previous=svc)
        assert "two" in await run(backend, svc)
        await backend.prepare_service(svc, previous=svc)
    finally:
        own.stop()
    # Updated while its registry is gone: the image it named before still runs, said in the log.
    recorder = RecordingReporter()
    await backend.start(recorder)
    await backend.submit(JobRequest(job_id="j", service=svc, payload=b"", attempt=1))
    await wait_until(lambda: "j" in recorder.outcomes)
    outcome = recorder.outcomes["j"]
    assert outcome.status.value == "Succeeded", outcome.log
    assert "two" in outcome.log
    assert "cannot be reached" in outcome.log
    assert "named before" in outcome.log
