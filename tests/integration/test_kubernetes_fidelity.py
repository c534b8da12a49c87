"""Issue 15: where the Kubernetes backend behaved otherwise than on a real control plane, through the API,
now on one (``tests.support.controlplane``): a Job's ``status.active`` counts its pod from its creation and
``status.ready`` once it runs; ``dryRun=All`` validates without storing; label and annotation keys are
checked; an object over etcd's request limit is refused. Pods run on the test's node (manual kubelet) or
on the kwok node, which plays them by label (``tests.support.kwok_stages``).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from oscar_manager.settings import Settings
from tests.support.app import NO_AUTH, app_client
from tests.support.cluster_view import Cluster, job_created, until_async
from tests.support.controlplane import ControlPlane
from tests.support.jobs import all_jobs, settle, wait_for_jobs
from tests.support.kube_cluster import MOTO_KEYS, create_namespace, manager_settings
from tests.support.kwok_stages import OUTCOME_LABEL

MiB = 1024 * 1024


@pytest.fixture
async def manager(cluster: Cluster) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(cluster.settings) as http:
        yield http


@pytest.fixture
async def on_kwok(
    settings: Settings,
    control_plane: ControlPlane,
    kube_admin: httpx.AsyncClient,
    manager_token: str,
    tmp_path: Path,
) -> AsyncIterator[httpx.AsyncClient]:
    """A manager whose jobs' pods go to the kwok node."""
    namespace = await create_namespace(kube_admin, node="kwok", credentials=MOTO_KEYS)
    async with app_client(
        manager_settings(settings, control_plane, manager_token, namespace.name, tmp_path)
    ) as http:
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


async def test_a_job_is_pending_until_its_pod_runs(manager: httpx.AsyncClient, cluster: Cluster) -> None:
    """A Job whose pod is not running yet (here: not schedulable, the node's CPUs are taken by another job
    of the service) is active but not ready: its job is Pending while the other runs. Once the other ends,
    the scheduler places the pod, it runs, and its job shows Running."""
    assert (await manager.post("/system/services", json=definition(cpu="6"))).status_code == 201
    first = await invoke(manager, "fidelity", base64.b64encode(b"one"))
    await until_status(manager, "fidelity", first, "Running")
    waiting = await invoke(manager, "fidelity", base64.b64encode(b"two"))  # 6 + 6 CPUs > the node's 8
    await until_async(
        lambda: cluster.get("jobs", waiting), lambda job: (job or {}).get("status", {}).get("active") == 1
    )
    await cluster.kubelet.finish(first, succeeded=True, log="first\n")
    await until_status(manager, "fidelity", first, "Succeeded")
    # The first pod ended, so the second fits now; until the scheduler places it, its job waits.
    await until_status(manager, "fidelity", waiting, "Running")
    await cluster.kubelet.finish(waiting, succeeded=True, log="done\n")
    await until_status(manager, "fidelity", waiting, "Succeeded")


async def test_an_unschedulable_job_stays_pending(manager: httpx.AsyncClient, cluster: Cluster) -> None:
    """Upstream shows the pod's phase: a pod nowhere to be placed is Pending, however long."""
    assert (await manager.post("/system/services", json=definition(cpu="16"))).status_code == 201
    job_id = await invoke(manager, "fidelity", base64.b64encode(b"big"))
    job = await until_async(
        lambda: cluster.get("jobs", job_id), lambda job: (job or {}).get("status", {}).get("active") == 1
    )
    assert job["status"].get("ready", 0) == 0
    await settle(1.0)
    assert await status_of(manager, "fidelity", job_id) == "Pending"


async def test_kwok_plays_jobs_by_label_and_their_logs_come_through_the_api_server(
    on_kwok: httpx.AsyncClient,
) -> None:
    """On the kwok node: a pod runs and completes, fails with exit code 1 (``fail``), or is held Pending
    (``pending``) or Running (``run``), as its service's labels say; a job that ends before the manager
    saw it running still ends as it did; its log is kwok's, read through the apiserver's ``pods/log``."""
    outcomes = {"plain": None, "failing": "fail", "held": "pending", "running": "run"}
    jobs = {}
    for name, outcome in outcomes.items():
        labels = {OUTCOME_LABEL: outcome} if outcome else {}
        assert (
            await on_kwok.post("/system/services", json=definition(name, labels=labels))
        ).status_code == 201
        jobs[name] = await invoke(on_kwok, name, base64.b64encode(name.encode()))
    assert (await wait_for_jobs(on_kwok, "plain", count=1))[jobs["plain"]]["status"] == "Succeeded"
    assert (await wait_for_jobs(on_kwok, "failing", count=1))[jobs["failing"]]["status"] == "Failed"
    await until_status(on_kwok, "running", jobs["running"], "Running")
    assert await status_of(on_kwok, "held", jobs["held"]) == "Pending"
    log = (await on_kwok.get(f"/system/logs/plain/{jobs['plain']}")).text
    assert log == "a pod that kwok played\n"


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
    manager: httpx.AsyncClient, cluster: Cluster, fields: dict[str, Any], named: str
) -> None:
    refused = await manager.post("/system/services", json=definition(**fields))
    assert refused.status_code == 400
    assert refused.headers["content-type"].startswith("text/plain")
    assert named in refused.text
    assert (await manager.get("/system/services/fidelity")).status_code == 404
    assert await cluster.get("configmaps", "fidelity") is None

    assert (await manager.post("/system/services", json=definition())).status_code == 201
    refused = await manager.put("/system/services", json=definition(**fields))
    assert refused.status_code == 400
    assert named in refused.text
    kept = (await manager.get("/system/services/fidelity")).json()
    assert (kept["labels"], kept["annotations"]) == ({"oscar_service": "fidelity"}, {})


async def test_valid_prefixed_keys_are_accepted_and_reach_the_job(
    manager: httpx.AsyncClient, cluster: Cluster
) -> None:
    fields: dict[str, Any] = {
        "labels": {"example.org/team": "imaging", "tier": ""},
        "annotations": {"Example.org/Owner": "lab 7, room 3", "note": "free text: anything goes"},
    }
    assert (await manager.post("/system/services", json=definition(**fields))).status_code == 201
    job_id = await invoke(manager, "fidelity", base64.b64encode(b"x"))
    job = await job_created(cluster, job_id)
    assert job["metadata"]["annotations"] == fields["annotations"]
    assert job["metadata"]["labels"]["example.org/team"] == "imaging"


async def test_a_service_whose_jobs_the_api_server_would_refuse_is_refused_at_create(
    manager: httpx.AsyncClient, cluster: Cluster
) -> None:
    """What only the API server checks (here an environment variable name Kubernetes does not take) is
    found by a dry-run create of one of the service's Jobs: 400 with the API server's reason, nothing
    stored, no Job made."""
    body = definition(environment={"variables": {"A=B": "1"}})
    refused = await manager.post("/system/services", json=body)
    assert refused.status_code == 400
    assert "env[0].name" in refused.text
    assert "other than '='" in refused.text
    dry_runs = [r for r in cluster.all_requests() if r.dry_run]
    assert [(r.verb, r.resource, r.code) for r in dry_runs] == [("create", "jobs", 422)]
    assert (await manager.get("/system/services/fidelity")).status_code == 404
    assert await cluster.get("configmaps", "fidelity") is None
    assert await cluster.jobs() == []

    assert (await manager.post("/system/services", json=definition())).status_code == 201
    assert (await manager.put("/system/services", json=body)).status_code == 400
    config_map = await cluster.get("configmaps", "fidelity")
    assert config_map is not None
    assert yaml.safe_load(config_map["data"]["function_config.yaml"])["environment"]["variables"] == {}


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
    cluster: Cluster,
) -> None:
    """At the boundary: a service whose Jobs would be over etcd's limit for some body is refused (413,
    nothing stored); the largest one accepted still gets a Job (and its body's Secrets) for a ``/job``
    body at the manager's limit, all stored by the real apiserver and etcd."""
    async with app_client(cluster.settings) as manager:
        # The boundary as the manager draws it, within 4 KiB: none of BIG is fine, 1 MiB of it is not.
        low, high = 0, MiB
        assert await accepted(manager, low)
        assert not await accepted(manager, high)
        while high - low > 4096:
            middle = (low + high) // 2
            low, high = (middle, high) if await accepted(manager, middle) else (low, middle)
        assert await cluster.get("configmaps", "fidelity") is None

        created = await manager.post("/system/services", json=variables(low))
        assert created.status_code == 201, created.text
        limit = cluster.settings.oscar_max_body_bytes
        job_id = await invoke(manager, "fidelity", b"a" * limit)
        await job_created(cluster, job_id)
        secrets = f"/api/v1/namespaces/{cluster.namespace}/secrets"
        await until_async(
            lambda: cluster.http.get(secrets, params={"labelSelector": f"job-id={job_id}"}),
            lambda answer: len(answer.json()["items"]) == limit // (512 * 1024),
            within=60,
        )
        await cluster.kubelet.finish(job_id, succeeded=True, log="big\n")
        jobs = await wait_for_jobs(manager, "fidelity", count=1)
        assert jobs[job_id]["status"] == "Succeeded"
    # Nothing the manager sent was refused by the apiserver or etcd, the dry runs included.
    assert [r for r in cluster.all_requests() if r.code >= 400 and not r.dry_run] == []
    assert [r for r in cluster.all_requests() if r.code >= 500] == []


# --- 4. no needless calls ---------------------------------------------------------------------------------


def secret_deletes(cluster: Cluster) -> int:
    return sum(1 for r in cluster.requests() if (r.verb, r.resource) == ("delete", "secrets"))


async def test_a_service_without_secrets_never_deletes_a_secret(
    manager: httpx.AsyncClient, cluster: Cluster
) -> None:
    assert (await manager.post("/system/services", json=definition())).status_code == 201
    assert (await manager.put("/system/services", json=definition(script="echo 2\n"))).status_code == 204
    assert (await manager.delete("/system/services/fidelity")).status_code == 204
    assert secret_deletes(cluster) == 0
    assert [r for r in cluster.requests() if r.code == 404] == []


async def test_a_secret_is_deleted_when_the_service_drops_its_secrets_or_goes(
    manager: httpx.AsyncClient, cluster: Cluster
) -> None:
    secretive = definition(environment={"secrets": {"TOKEN": "x"}})
    assert (await manager.post("/system/services", json=secretive)).status_code == 201
    assert (await manager.put("/system/services", json=definition())).status_code == 204
    assert await cluster.get("secrets", "fidelity") is None
    assert secret_deletes(cluster) == 1
    assert (await manager.put("/system/services", json=secretive)).status_code == 204
    assert (await manager.delete("/system/services/fidelity")).status_code == 204
    assert await cluster.get("secrets", "fidelity") is None
    assert secret_deletes(cluster) == 2


# --- issue item 4: mount as upstream types it ---------------------------------------------------------------


async def test_an_upstream_fdl_with_mount_options_keeps_them_as_text(
    manager: httpx.AsyncClient, cluster: Cluster
) -> None:
    """``mount.options`` is one string upstream (rclone flags): an upstream FDL is accepted, and the
    ConfigMap's ``function_config.yaml`` (which upstream's manager reads too, on a shared cluster) has
    it as a string."""
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
    config_map = await cluster.get("configmaps", "fidelity")
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
