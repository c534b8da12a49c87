"""Issue 12, item 7: invocation bodies up to the configured limits reach the script, on every path.

The attacker's input here is only a big body: a base64 file of 96 KiB, 1 MiB and up to the limits of
``/job`` (``OSCAR_MAX_BODY_BYTES``) and ``/run`` (``OSCAR_MAX_RUN_BODY_BYTES``), lowered to 4 and 5 MiB to
keep the tests quick. Put in the script's ``EVENT`` variable whole, such a body made the script's
``execve`` fail (Linux keeps one environment string under 128 KiB); put in a Job's environment, it made a
Job too large for the API server and etcd. The script must see the whole payload at ``INPUT_FILE_PATH``,
and ``EVENT`` only when it is small enough (unset otherwise), on the local backend with bubblewrap and on
Kubernetes (the real control plane, whose runner kubelet runs the real supervisor executable in a
busybox root; the API double only where a fault must be injected on demand).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from oscar_manager.backends import manifests
from oscar_manager.domain.events import ObjectEvent, notification
from oscar_manager.settings import Settings
from oscar_manager.storage.local import LocalObjectStore
from oscar_manager.supervisor.stage import EVENT_ENV_MAX_BYTES
from tests.support.app import NO_AUTH, app_client
from tests.support.cluster_view import until_async
from tests.support.controlplane import ControlPlane, audit_records
from tests.support.factories import stored_service
from tests.support.jobs import all_jobs, settle, wait_for_jobs
from tests.support.kube_api import KubeApiDouble, on_kubernetes
from tests.support.kube_cluster import MANAGER_USER

KiB = 1024
MiB = 1024 * KiB
JOB_LIMIT = 4 * MiB
RUN_LIMIT = 5 * MiB

# What the script reports: the digest of its input file, and of EVENT (or that it is unset).
REPORT = """\
input=$(sha256sum "$INPUT_FILE_PATH" | cut -d' ' -f1)
if [ -n "${EVENT+x}" ]; then event=$(printf %s "$EVENT" | sha256sum | cut -d' ' -f1); else event=unset; fi
echo "input=$input event=$event key=${STORAGE_OBJECT_KEY-}"
"""
REPORTED = re.compile(r"input=(?P<input>[0-9a-f]{64}) event=(?P<event>[0-9a-f]{64}|unset) key=(?P<key>\S*)")


@pytest.fixture(params=["local", "kubernetes"])
def backend(request: pytest.FixtureRequest, bwrap: str) -> str:
    """Both with bubblewrap: the local sandbox, and the kubelet's busybox root."""
    return str(request.param)


@pytest.fixture
def limited_settings(request: pytest.FixtureRequest, backend: str, settings: Settings) -> Settings:
    base: Settings = request.getfixturevalue("kubernetes_settings") if backend == "kubernetes" else settings
    return base.model_copy(
        update={
            "oscar_max_body_bytes": JOB_LIMIT,
            "oscar_max_run_body_bytes": RUN_LIMIT,
            "oscar_run_timeout": 60,
        }
    )


@pytest.fixture
async def manager(limited_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(limited_settings) as http:
        yield http


async def make_service(http: httpx.AsyncClient, name: str = "digest") -> str:
    body = {
        "name": name,
        "image": "busybox",
        "script": REPORT,
        "input": [{"storage_provider": "minio", "path": f"{name}/in"}],
        "output": [{"storage_provider": "minio", "path": f"{name}/out"}],
    }
    created = await http.post("/system/services", json=body)
    assert created.status_code == 201, created.text
    token: str = (await http.get(f"/system/services/{name}")).json()["token"]
    return token


def payload_body(size: int) -> tuple[bytes, bytes]:
    """(a random payload of ``size`` bytes, the body carrying it: its base64)."""
    payload = os.urandom(size)
    return payload, base64.b64encode(payload)


def near(limit: int) -> int:
    """The largest payload whose base64 fits in ``limit`` bytes."""
    return limit // 4 * 3


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def report(text: str) -> dict[str, str]:
    found = REPORTED.search(text)
    assert found is not None, text[-3000:]
    return found.groupdict()


async def job_report(http: httpx.AsyncClient, token: str, body: bytes, **headers: str) -> dict[str, str]:
    answer = await http.post(
        "/job/digest", content=body, headers={"Authorization": f"Bearer {token}", **headers}, auth=NO_AUTH
    )
    assert answer.status_code == 201, answer.text
    ((job_id, job),) = (await wait_for_jobs(http, "digest", count=1, within=120)).items()
    log = (await http.get(f"/system/logs/digest/{job_id}")).text
    assert job["status"] == "Succeeded", log[-3000:]
    return report(log)


async def run_report(http: httpx.AsyncClient, token: str, body: bytes) -> dict[str, str]:
    answer = await http.post("/run/digest", content=body, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text[-3000:]
    return report(answer.text)


SIZES = [pytest.param(96 * KiB, id="96KiB"), pytest.param(1 * MiB, id="1MiB"), pytest.param(0, id="limit")]


@pytest.mark.parametrize("size", SIZES)
async def test_a_large_job_body_reaches_the_script_as_its_input_file(
    manager: httpx.AsyncClient, size: int
) -> None:
    token = await make_service(manager)
    payload, body = payload_body(size or near(JOB_LIMIT))
    seen = await job_report(manager, token, body)
    assert seen == {"input": digest(payload), "event": "unset", "key": ""}


@pytest.mark.parametrize("size", SIZES)
async def test_a_large_run_body_reaches_the_script_as_its_input_file(
    manager: httpx.AsyncClient, size: int
) -> None:
    token = await make_service(manager)
    payload, body = payload_body(size or near(RUN_LIMIT))
    seen = await run_report(manager, token, body)
    assert seen == {"input": digest(payload), "event": "unset", "key": ""}


async def test_a_body_that_fits_is_in_event_whole(manager: httpx.AsyncClient) -> None:
    """Up to EVENT_ENV_MAX_BYTES the body is in EVENT, as upstream's Jobs have it; one byte more and it
    is not (the input file has the payload either way)."""
    token = await make_service(manager)
    payload = os.urandom(EVENT_ENV_MAX_BYTES // 4 * 3)
    body = base64.b64encode(payload)
    assert len(body) == EVENT_ENV_MAX_BYTES
    assert await run_report(manager, token, body) == {
        "input": digest(payload),
        "event": digest(body),
        "key": "",
    }
    longer = body + b"\n"  # whitespace is ignored by the base64 decoding: the same payload
    assert await run_report(manager, token, longer) == {"input": digest(payload), "event": "unset", "key": ""}


async def test_storage_event_bodies_are_unaffected(
    manager: httpx.AsyncClient, backend: str, limited_settings: Settings
) -> None:
    """A file in the input folder: its event is small, so EVENT holds it, and the input is the object
    (however large the object). The event is also posted to /job, as MinIO's webhook would (moto sends
    none; on local storage the folder watch has it already, and the duplicate is dropped)."""
    token = await make_service(manager)
    content = os.urandom(2 * MiB)
    put = await manager.put("/system/buckets/digest/objects/in/big.bin", content=content)
    assert put.status_code == 201, put.text
    info = put.json()
    generation = ""
    if backend == "local":  # the record names the upload the folder watch reports (MinIO: its sequencer)
        stored = await LocalObjectStore(limited_settings.buckets_dir).stat("digest", "in/big.bin")
        assert stored is not None
        generation = stored.generation
    event = ObjectEvent(
        bucket="digest",
        key="in/big.bin",
        etag=info["etag"],
        size=info["size"],
        event_time="t",
        generation=generation,
    )
    posted = await manager.post(
        "/job/digest", json=notification(event), headers={"Authorization": f"Bearer {token}"}, auth=NO_AUTH
    )
    assert posted.status_code == 201, posted.text
    ((job_id, job),) = (await wait_for_jobs(manager, "digest", count=1, within=120)).items()
    log = (await manager.get(f"/system/logs/digest/{job_id}")).text
    assert job["status"] == "Succeeded", log[-3000:]
    seen = report(log)
    assert seen["input"] == digest(content)
    assert seen["event"] != "unset"
    assert seen["key"] == "in/big.bin"


class Namespace:
    """The test's Kubernetes namespace as the admin sees it, and what the manager asked in it."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.http: httpx.AsyncClient = request.getfixturevalue("kube_admin")
        self.plane: ControlPlane = request.getfixturevalue("control_plane")
        self.name = request.getfixturevalue("kubernetes_settings").oscar_services_namespace
        self.audit_start = self.plane.audit_log.stat().st_size

    async def objects(self, kind: str) -> list[dict[str, Any]]:
        group = "/apis/batch/v1" if kind == "jobs" else "/api/v1"
        answer = await self.http.get(f"{group}/namespaces/{self.name}/{kind}")
        answer.raise_for_status()
        items: list[dict[str, Any]] = answer.json()["items"]
        return items

    async def body_secrets(self) -> list[dict[str, Any]]:
        return [s for s in await self.objects("secrets") if s["metadata"]["name"] not in ("minio", "digest")]

    def job_creates(self) -> int:
        records = audit_records(self.plane.audit_log, user=MANAGER_USER, start=self.audit_start)
        return sum(
            1
            for r in records
            if (r.verb, r.resource, r.namespace) == ("create", "jobs", self.name) and not r.dry_run
        )

    async def until_no_body_secrets(self) -> None:
        """The garbage collector deletes a Job's dependents in its own time."""
        await until_async(self.body_secrets, lambda secrets: secrets == [], within=30)


async def test_a_job_body_over_the_limit_is_413_and_records_nothing(
    manager: httpx.AsyncClient, backend: str, request: pytest.FixtureRequest
) -> None:
    namespace = Namespace(request) if backend == "kubernetes" else None
    token = await make_service(manager)
    _payload, body = payload_body(near(JOB_LIMIT) + 3)
    assert len(body) > JOB_LIMIT
    answer = await manager.post(
        "/job/digest", content=body, headers={"Authorization": f"Bearer {token}"}, auth=NO_AUTH
    )
    assert answer.status_code == 413
    await settle()
    assert await all_jobs(manager, "digest") == {}
    if namespace is not None:
        assert await namespace.objects("jobs") == []
        assert await namespace.body_secrets() == []
        assert namespace.job_creates() == 0


async def test_a_run_body_over_the_limit_is_413_and_runs_nothing(
    manager: httpx.AsyncClient, backend: str, request: pytest.FixtureRequest
) -> None:
    namespace = Namespace(request) if backend == "kubernetes" else None
    token = await make_service(manager)
    _payload, body = payload_body(near(RUN_LIMIT) + 3)
    assert len(body) > RUN_LIMIT
    answer = await manager.post("/run/digest", content=body, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 413
    if namespace is not None:
        assert namespace.job_creates() == 0


# --- Kubernetes: how the body travels, and that nothing of it stays behind ---------------------------------


@pytest.fixture
async def kube(kubernetes_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    limited = kubernetes_settings.model_copy(
        update={
            "oscar_max_body_bytes": JOB_LIMIT,
            "oscar_max_run_body_bytes": RUN_LIMIT,
            "oscar_run_timeout": 60,
        }
    )
    async with app_client(limited) as http:
        yield http


async def test_on_kubernetes_a_large_body_is_in_secrets_the_job_owns_and_goes_with_it(
    kube: httpx.AsyncClient, request: pytest.FixtureRequest
) -> None:
    namespace = Namespace(request)
    token = await make_service(kube)
    payload, body = payload_body(near(JOB_LIMIT))
    assert (await job_report(kube, token, body))["input"] == digest(payload)
    (job,) = await namespace.objects("jobs")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert "EVENT" not in {item["name"] for item in container["env"]}
    secrets = await namespace.body_secrets()
    assert len(secrets) > 1  # more than one Secret's worth (1 MiB)
    for secret in secrets:
        (owner,) = secret["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == (
            "Job",
            job["metadata"]["name"],
            job["metadata"]["uid"],
        )
        assert sum(len(base64.b64decode(value)) for value in secret["data"].values()) <= MiB
    # Deleting the service deletes its Jobs, and the garbage collector their Secrets.
    assert (await kube.delete("/system/services/digest")).status_code == 204
    await until_async(lambda: namespace.objects("jobs"), lambda jobs: jobs == [], within=30)
    await namespace.until_no_body_secrets()


async def test_on_kubernetes_a_large_sync_run_leaves_no_secret_behind(
    kube: httpx.AsyncClient, request: pytest.FixtureRequest
) -> None:
    namespace = Namespace(request)
    token = await make_service(kube)
    payload, body = payload_body(near(RUN_LIMIT))
    assert (await run_report(kube, token, body))["input"] == digest(payload)
    assert namespace.job_creates() == 1
    await until_async(lambda: namespace.objects("jobs"), lambda jobs: jobs == [], within=30)
    await namespace.until_no_body_secrets()


async def test_on_kubernetes_a_resubmitted_large_event_is_still_one_job(
    settings: Settings, double: tuple[KubeApiDouble, str], tmp_path: Path
) -> None:
    """The second Secret's creation fails (the API server restarting): the dispatcher submits again, the
    Job answers 409 AlreadyExists, the Secrets made already too, and the one Job gets every part of the
    body. On the API double: a 503 to one chosen request is what a real apiserver cannot be made to give."""
    api, url = double
    limited = on_kubernetes(settings, url, tmp_path).model_copy(update={"oscar_max_body_bytes": JOB_LIMIT})
    async with app_client(limited) as kube:
        token = await make_service(kube)
        _payload, body = payload_body(2 * MiB)
        api.fail_next.append(("POST", "/secrets", 503))
        answer = await kube.post(
            "/job/digest", content=body, headers={"Authorization": f"Bearer {token}"}, auth=NO_AUTH
        )
        assert answer.status_code == 201
        (job,) = await until_async(
            lambda: asyncio.sleep(0, api.of_kind("Job")), lambda jobs: len(jobs) == 1, within=30
        )
        parts = len(body) // (512 * KiB) + 1

        def owned() -> list[dict[str, Any]]:
            return [
                s
                for s in api.of_kind("Secret")
                if s["metadata"].get("ownerReferences", [{}])[0].get("uid") == job["metadata"]["uid"]
            ]

        await until_async(lambda: asyncio.sleep(0, owned()), lambda found: len(found) == parts, within=30)
    creates = [path for method, path in api.requests if method == "POST" and path.endswith("/jobs")]
    assert len(creates) == 2
    assert len(api.of_kind("Job")) == 1


async def test_a_real_api_server_refuses_a_job_carrying_its_body_in_the_environment(
    kubernetes_settings: Settings, kube_admin: httpx.AsyncClient
) -> None:
    """The old way, as the real control plane answers it: an EVENT of 2 MiB makes the Job too large for
    etcd (refused, nothing stored), one of 4 MiB the request too large for the apiserver (413); one of
    200 KiB is stored, but its container cannot start (the kernel refuses the environment: the runner
    kubelet's container start fails as runc's does)."""
    namespace = kubernetes_settings.oscar_services_namespace
    service = stored_service("digest", image="busybox", script=REPORT)
    cluster = manifests.ClusterConfig(manager_image="registry.example/oscar-manager:test", ttl_seconds=60)

    def old_job(name: str, size: int) -> dict[str, Any]:
        job = manifests.job(service, job_id=name, event=b"a" * 4, cluster=cluster)
        job["metadata"]["namespace"] = namespace
        env = job["spec"]["template"]["spec"]["containers"][0]["env"]
        for item in env:
            if item["name"] == "EVENT":
                item["value"] = "a" * size
        if not any(item["name"] == "EVENT" for item in env):
            env.append({"name": "EVENT", "value": "a" * size})
        return job

    jobs = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    too_big = await kube_admin.post(jobs, json=old_job("etcd", 2 * MiB))
    assert too_big.is_client_error or too_big.is_server_error, too_big.status_code
    way_too_big = await kube_admin.post(jobs, json=old_job("apiserver", 4 * MiB))
    assert way_too_big.status_code == 413
    assert (await kube_admin.get(jobs)).json()["items"] == []
    # The service's ConfigMap, as the manager makes it, for the pod to mount.
    config_map = manifests.config_map(service)
    config_map["metadata"]["namespace"] = namespace
    created = await kube_admin.post(f"/api/v1/namespaces/{namespace}/configmaps", json=config_map)
    assert created.status_code == 201, created.text
    exec_job = await kube_admin.post(jobs, json=old_job("exec", 200 * KiB))
    assert exec_job.status_code == 201, exec_job.text
    ended = await until_async(
        lambda: kube_admin.get(f"{jobs}/exec"),
        lambda answer: bool(answer.json().get("status", {}).get("conditions")),
        within=60,
    )
    # A real Job controller says FailureTarget first (Failed follows once the pod is gone).
    assert ended.json()["status"]["conditions"][0]["type"] in ("FailureTarget", "Failed")
    pods = await kube_admin.get(
        f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": "job-name=exec"}
    )
    (pod,) = pods.json()["items"]
    log = await kube_admin.get(f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}/log")
    assert "argument list too long" in log.text


def test_the_event_threshold_is_well_under_the_kernel_limit() -> None:
    """One environment string (NAME=value and its NUL) must stay under MAX_ARG_STRLEN (32 pages, 128 KiB),
    with room left for the service's own variables."""
    assert EVENT_ENV_MAX_BYTES <= 128 * KiB // 2
