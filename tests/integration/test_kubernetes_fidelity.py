"""Issue 15: where the Kubernetes backend behaved otherwise than on a real control plane, through the API.

Run against the API double (``tests.support.kube_api``), which models what these tests rely on as a real
1.37 API server does: a Job's ``status.active`` counts its pod from its creation and ``status.ready``
once it runs; ``dryRun=All`` validates without storing; label and annotation keys are checked; a stored
object over etcd's 1.5 MiB is refused. Holding a pod Pending on demand is the double's ``hold_pods``.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from oscar_manager.settings import Settings
from tests.support.app import NO_AUTH, app_client
from tests.support.jobs import all_jobs, wait_for_jobs
from tests.support.kube_api import KubeApiDouble, on_kubernetes

NS = "oscar-svc"
MiB = 1024 * 1024


@pytest.fixture
def kube_settings(settings: Settings, double: tuple[KubeApiDouble, str], tmp_path: Path) -> Settings:
    return on_kubernetes(settings, double[1], tmp_path)


@pytest.fixture
async def manager(kube_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(kube_settings) as http:
        yield http


def definition(name: str = "fidelity", **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": "ghcr.io/grycap/imagemagick",
        "script": "echo hi\n",
        "input": [{"path": f"{name}/in"}],
        "output": [{"path": f"{name}/out"}],
        **fields,
    }


async def invoke(http: httpx.AsyncClient, name: str, body: bytes) -> str:
    token = (await http.get(f"/system/services/{name}")).json()["token"]
    answer = await http.post(
        f"/job/{name}", content=body, headers={"Authorization": f"Bearer {token}"}, auth=NO_AUTH
    )
    assert answer.status_code == 201, answer.text
    job_id: str = answer.headers["X-Oscar-Job-Ids"]
    return job_id


async def until(check: Callable[[], Any], within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "gave up waiting"
        await asyncio.sleep(0.02)


async def status_of(http: httpx.AsyncClient, service: str, job_id: str) -> str:
    """The job's status as listed ("" while its row is not written yet)."""
    status: str = (await all_jobs(http, service)).get(job_id, {}).get("status", "")
    return status


async def until_status(http: httpx.AsyncClient, service: str, job_id: str, wanted: str) -> None:
    deadline = time.monotonic() + 10
    while (status := await status_of(http, service, job_id)) != wanted:
        assert time.monotonic() < deadline, f"job {job_id} is {status}, not {wanted}"
        await asyncio.sleep(0.05)


# --- 1. the pod's phase drives Pending / Running ---------------------------------------------------------


async def test_a_job_is_pending_until_its_pod_runs(
    manager: httpx.AsyncClient, double: tuple[KubeApiDouble, str]
) -> None:
    """A Job whose pod is not running yet (unscheduled, pulling its image) is active but not ready: its
    job is Pending. Another job, created after it and running, shows Running: the watcher has seen the
    first Job's events by then (they come earlier in the same watch)."""
    api, _url = double
    assert (await manager.post("/system/services", json=definition())).status_code == 201
    api.hold_pods = True
    waiting = await invoke(manager, "fidelity", base64.b64encode(b"one"))
    await until(lambda: api.get("Job", NS, waiting) is not None)
    assert api.get("Job", NS, waiting)["status"]["active"] == 1  # type: ignore[index]
    api.hold_pods = False
    running = await invoke(manager, "fidelity", base64.b64encode(b"two"))
    await until_status(manager, "fidelity", running, "Running")
    assert await status_of(manager, "fidelity", waiting) == "Pending"

    await api.run_pod(NS, waiting)
    await until_status(manager, "fidelity", waiting, "Running")
    await api.finish_pod(NS, waiting, succeeded=True, log="done\n")
    await until_status(manager, "fidelity", waiting, "Succeeded")


async def test_a_job_ending_before_it_was_seen_running_still_succeeds(
    manager: httpx.AsyncClient, double: tuple[KubeApiDouble, str]
) -> None:
    """A pod can run and end between two looks at it: the Job goes from active straight to Complete."""
    api, _url = double
    assert (await manager.post("/system/services", json=definition())).status_code == 201
    api.hold_pods = True
    job_id = await invoke(manager, "fidelity", base64.b64encode(b"quick"))
    await until(lambda: api.get("Job", NS, job_id) is not None)
    await api.finish_pod(NS, job_id, succeeded=True, log="quick\n")
    jobs = await wait_for_jobs(manager, "fidelity", count=1)
    assert jobs[job_id]["status"] == "Succeeded"
    assert (await manager.get(f"/system/logs/fidelity/{job_id}")).text == "quick\n"


# --- 2. what every Job will carry is checked when the service is created or updated -----------------------


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"annotations": {"bad key!": "x"}}, "annotations: invalid key 'bad key!'"),
        ({"annotations": {"/empty-prefix": "x"}}, "annotations: invalid key '/empty-prefix'"),
        ({"annotations": {"big": "x" * (256 * 1024)}}, "annotations: 262147 bytes"),
        ({"labels": {"Bad_Prefix.org/team": "x"}}, "labels: invalid key 'Bad_Prefix.org/team'"),
        ({"labels": {"team": "not a value"}}, "labels: invalid value 'not a value'"),
        ({"labels": {"team": "x" * 64}}, "labels: the value of 'team' is 64 characters long"),
    ],
)
async def test_labels_and_annotations_no_job_could_carry_are_refused_at_create_and_update(
    manager: httpx.AsyncClient, double: tuple[KubeApiDouble, str], fields: dict[str, Any], named: str
) -> None:
    api, _url = double
    refused = await manager.post("/system/services", json=definition(**fields))
    assert refused.status_code == 400
    assert refused.headers["content-type"].startswith("text/plain")
    assert named in refused.text
    assert (await manager.get("/system/services/fidelity")).status_code == 404
    assert api.get("ConfigMap", NS, "fidelity") is None

    assert (await manager.post("/system/services", json=definition())).status_code == 201
    refused = await manager.put("/system/services", json=definition(**fields))
    assert refused.status_code == 400
    assert named in refused.text
    kept = (await manager.get("/system/services/fidelity")).json()
    assert (kept["labels"], kept["annotations"]) == ({"oscar_service": "fidelity"}, {})


async def test_valid_prefixed_keys_are_accepted_and_reach_the_job(
    manager: httpx.AsyncClient, double: tuple[KubeApiDouble, str]
) -> None:
    api, _url = double
    fields: dict[str, Any] = {
        "labels": {"example.org/team": "imaging", "tier": ""},
        "annotations": {"Example.org/Owner": "lab 7, room 3", "note": "free text: anything goes"},
    }
    assert (await manager.post("/system/services", json=definition(**fields))).status_code == 201
    job_id = await invoke(manager, "fidelity", base64.b64encode(b"x"))
    await until(lambda: api.get("Job", NS, job_id) is not None)
    job = api.get("Job", NS, job_id)
    assert job is not None
    assert job["metadata"]["annotations"] == fields["annotations"]
    assert job["metadata"]["labels"]["example.org/team"] == "imaging"


async def test_a_service_whose_jobs_the_api_server_would_refuse_is_refused_at_create(
    manager: httpx.AsyncClient, double: tuple[KubeApiDouble, str]
) -> None:
    """What only the API server checks (here an environment variable name Kubernetes does not take) is
    found by a dry-run create of one of the service's Jobs: 400 with the API server's reason, nothing
    stored, no Job made."""
    api, _url = double
    body = definition(environment={"variables": {"A=B": "1"}})
    refused = await manager.post("/system/services", json=body)
    assert refused.status_code == 400
    assert "env[0].name" in refused.text
    assert "printable ASCII characters other than '='" in refused.text
    assert ("POST", f"/apis/batch/v1/namespaces/{NS}/jobs?dryRun=All") in api.requests
    assert (await manager.get("/system/services/fidelity")).status_code == 404
    assert api.get("ConfigMap", NS, "fidelity") is None
    assert api.of_kind("Job") == []

    assert (await manager.post("/system/services", json=definition())).status_code == 201
    assert (await manager.put("/system/services", json=body)).status_code == 400
    config = yaml.safe_load(api.get("ConfigMap", NS, "fidelity")["data"]["function_config.yaml"])  # type: ignore[index]
    assert config["environment"]["variables"] == {}


# --- 2 and 3: a Job too large for etcd, by its service or by its event --------------------------------------


# Many small variables and a large annotation: each costs more in a Job (the annotation twice, the
# variables in its managedFields too) than in the service's ConfigMap, whose 1 MiB of data the API server
# checks itself (and so does the double): the Job reaches etcd's limit first.
MANY = {f"VARIABLE_{index:05d}": "v" for index in range(4000)}
NOTE = {"note": "n" * 250_000}


def variables(size: int) -> dict[str, Any]:
    return definition(annotations=NOTE, environment={"variables": {**MANY, "BIG": "v" * size}})


async def accepted(http: httpx.AsyncClient, size: int) -> bool:
    """Whether the service is created with ``BIG`` of ``size`` bytes (deleted again if so)."""
    answer = await http.post("/system/services", json=variables(size))
    if answer.status_code == 413:
        assert "too large for Kubernetes" in answer.text
        return False
    assert answer.status_code == 201, answer.text
    assert (await http.delete("/system/services/fidelity")).status_code == 204
    return True


# A service this large has its ConfigMap and Jobs sent in requests over 1 MiB, in one piece, which aiohttp
# (under the Kubernetes client) warns about; Python ignores ResourceWarnings outside tests.
@pytest.mark.filterwarnings("ignore:Sending a large body directly:ResourceWarning")
async def test_a_service_too_large_for_its_jobs_is_413_and_one_just_under_carries_the_largest_body(
    kube_settings: Settings, double: tuple[KubeApiDouble, str]
) -> None:
    """At the boundary: a service whose Jobs would be over etcd's limit for some body is refused (413,
    nothing stored); the largest one accepted still gets a Job (and its body's Secrets) for a ``/job``
    body at the manager's limit, all stored by the API server (the double refuses what etcd would, and a
    request over 3 MiB)."""
    api, _url = double
    async with app_client(kube_settings) as manager:
        # The boundary as the manager draws it, within 4 KiB: none of BIG is fine, 1 MiB of it is not.
        low, high = 0, MiB
        assert await accepted(manager, low)
        assert not await accepted(manager, high)
        while high - low > 4096:
            middle = (low + high) // 2
            low, high = (middle, high) if await accepted(manager, middle) else (low, middle)
        assert api.get("ConfigMap", NS, "fidelity") is None

        created = await manager.post("/system/services", json=variables(low))
        assert created.status_code == 201, created.text
        limit = kube_settings.oscar_max_body_bytes
        job_id = await invoke(manager, "fidelity", b"a" * limit)
        await until(lambda: len(api.of_kind("Secret")) == limit // (512 * 1024), within=30)
        job = api.get("Job", NS, job_id)
        assert job is not None
        await api.finish_pod(NS, job_id, succeeded=True, log="big\n")
        jobs = await wait_for_jobs(manager, "fidelity", count=1)
        assert jobs[job_id]["status"] == "Succeeded"
    assert not [message for message in api.refused]


# --- 4. no needless calls ---------------------------------------------------------------------------------


def secret_deletes(api: KubeApiDouble) -> int:
    return sum(1 for method, path in api.requests if method == "DELETE" and "/secrets/" in path)


async def test_a_service_without_secrets_never_deletes_a_secret(
    manager: httpx.AsyncClient, double: tuple[KubeApiDouble, str]
) -> None:
    api, _url = double
    assert (await manager.post("/system/services", json=definition())).status_code == 201
    assert (await manager.put("/system/services", json=definition(script="echo 2\n"))).status_code == 204
    assert (await manager.delete("/system/services/fidelity")).status_code == 204
    assert secret_deletes(api) == 0


async def test_a_secret_is_deleted_when_the_service_drops_its_secrets_or_goes(
    manager: httpx.AsyncClient, double: tuple[KubeApiDouble, str]
) -> None:
    api, _url = double
    secretive = definition(environment={"secrets": {"TOKEN": "x"}})
    assert (await manager.post("/system/services", json=secretive)).status_code == 201
    assert (await manager.put("/system/services", json=definition())).status_code == 204
    assert api.get("Secret", NS, "fidelity") is None
    assert secret_deletes(api) == 1
    assert (await manager.put("/system/services", json=secretive)).status_code == 204
    assert (await manager.delete("/system/services/fidelity")).status_code == 204
    assert api.get("Secret", NS, "fidelity") is None
    assert secret_deletes(api) == 2


# --- issue item 4: mount as upstream types it ---------------------------------------------------------------


async def test_an_upstream_fdl_with_mount_options_keeps_them_as_text(
    manager: httpx.AsyncClient, double: tuple[KubeApiDouble, str]
) -> None:
    """``mount.options`` is one string upstream (rclone flags): an upstream FDL is accepted, and the
    ConfigMap's ``function_config.yaml`` (which upstream's manager reads too, on a shared cluster) has
    it as a string."""
    api, _url = double
    fdl = """
functions:
  oscar:
  - my-cluster:
      name: fidelity
      image: ghcr.io/grycap/imagemagick
      script: "echo hi"
      mount:
        storage_provider: minio.default
        path: b/f
        options: "--vfs-cache-mode full --read-only"
"""
    created = await manager.post(
        "/system/services", content=fdl, headers={"Content-Type": "application/yaml"}
    )
    assert created.status_code == 201, created.text
    config_map = api.get("ConfigMap", NS, "fidelity")
    assert config_map is not None
    mount = yaml.safe_load(config_map["data"]["function_config.yaml"])["mount"]
    assert mount["options"] == "--vfs-cache-mode full --read-only"
    assert mount["path"] == "b/f"


# --- the same rules on the local backend: a service moves between backends unchanged ----------------------


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"annotations": {"bad key!": "x"}}, "annotations: invalid key 'bad key!'"),
        ({"labels": {"team": "x" * 64}}, "labels: the value of 'team' is 64 characters long"),
    ],
)
async def test_the_local_backend_refuses_the_same_labels_and_annotations(
    settings: Settings, fields: dict[str, Any], named: str
) -> None:
    async with app_client(settings) as local:
        refused = await local.post("/system/services", json=definition(**fields))
        assert refused.status_code == 400
        assert named in refused.text
        assert (await local.get("/system/services/fidelity")).status_code == 404
