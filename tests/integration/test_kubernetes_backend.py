"""``OSCAR_BACKEND=kubernetes`` on a real control plane (``tests.support.controlplane``): the manager, as
the shipped ServiceAccount with exactly the shipped RBAC, driving a real kube-apiserver with
kubernetes-asyncio, through the same API the local backend serves. What the manager asked for is read
from the apiserver's audit log. Pods run on the test's own node: ``manual`` ones end when the test says,
with the log it says; the sync runs' pods really run the supervisor (``kubernetes_settings``).

Faults a real apiserver cannot be made to answer on demand (a 503 to one request) are in
``test_kubernetes_faults.py``, against the API double.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from oscar_manager.backends.kube_answers import FORBIDDEN_RETRIES
from oscar_manager.settings import Settings
from tests.support.app import NO_AUTH, app_client
from tests.support.cluster_view import (
    Cluster,
    job_created,
    until,
    until_async,
    with_shipped_role,
    without_verb,
)
from tests.support.controlplane import ControlPlane, audit_records
from tests.support.jobs import all_jobs, settle, wait_for_jobs
from tests.support.kube_cluster import MANAGER_USER


@pytest.fixture
async def manager(cluster: Cluster) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(cluster.settings) as http:
        yield http


def definition(name: str = "grayify", **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": "ghcr.io/grycap/imagemagick",
        "script": "echo hi\n",
        "input": [{"path": f"{name}/in"}],
        "output": [{"path": f"{name}/out"}],
        **fields,
    }


async def invoke(http: httpx.AsyncClient, name: str, body: bytes, **headers: str) -> httpx.Response:
    token = (await http.get(f"/system/services/{name}")).json()["token"]
    return await http.post(
        f"/job/{name}", content=body, headers={"Authorization": f"Bearer {token}", **headers}, auth=NO_AUTH
    )


async def test_proxy_variables_do_not_divert_the_api_client(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API server is reached as the kubeconfig says: the client does not look up proxies (nor
    ``~/.netrc``) in the environment on every request, so a proxy there (here one that is not listening)
    is not used."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    async with app_client(cluster.settings) as manager:
        assert (await manager.post("/system/services", json=definition())).status_code == 201
    assert await cluster.get("configmaps", "grayify") is not None


async def test_a_service_gets_its_config_map_and_secret_and_loses_them_on_delete(
    manager: httpx.AsyncClient, cluster: Cluster
) -> None:
    body = definition(environment={"secrets": {"API_KEY": "s3cr3t"}})
    assert (await manager.post("/system/services", json=body)).status_code == 201
    config_map = await cluster.get("configmaps", "grayify")
    assert config_map is not None
    assert config_map["data"]["script.sh"] == "echo hi\n"
    secret = await cluster.get("secrets", "grayify")
    assert secret is not None
    assert base64.b64decode(secret["data"]["API_KEY"]) == b"s3cr3t"

    body["script"] = "echo updated\n"
    body["environment"] = {}
    assert (await manager.put("/system/services", json=body)).status_code == 204
    assert (await cluster.get("configmaps", "grayify"))["data"]["script.sh"] == "echo updated\n"  # type: ignore[index]
    assert await cluster.get("secrets", "grayify") is None

    assert (await manager.delete("/system/services/grayify")).status_code == 204
    assert await cluster.get("configmaps", "grayify") is None
    # Every call was allowed by the shipped Role.
    assert [r for r in cluster.requests() if r.code == 403] == []


async def test_an_invocation_becomes_a_job_whose_log_outlives_the_pod(
    manager: httpx.AsyncClient, cluster: Cluster
) -> None:
    assert (await manager.post("/system/services", json=definition())).status_code == 201
    answer = await invoke(manager, "grayify", base64.b64encode(b"hello"), **{"Idempotency-Key": "k1"})
    assert answer.status_code == 201
    (job_id,) = answer.headers["X-Oscar-Job-Ids"].split(",")
    job = await job_created(cluster, job_id)
    assert (
        job["spec"]["template"]["spec"]["initContainers"][0]["image"] == "registry.example/oscar-manager:test"
    )
    env = {
        item["name"]: item.get("value") for item in job["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["JOB_UUID"] == job_id
    assert base64.b64decode(env["EVENT"]) == b"hello"

    # The same request again: the same job, no second Job object.
    again = await invoke(manager, "grayify", base64.b64encode(b"hello"), **{"Idempotency-Key": "k1"})
    assert again.headers["X-Oscar-Job-Ids"] == job_id

    await cluster.kubelet.finish(job_id, succeeded=True, log="supervisor says hi\n")
    jobs = await wait_for_jobs(manager, "grayify", count=1)
    assert jobs[job_id]["status"] == "Succeeded"
    assert await cluster.jobs() == [job_id]

    # The pod and its Job are gone (TTL); the log is still served from the registry.
    await cluster.delete_job(job_id)
    logs = await manager.get(f"/system/logs/grayify/{job_id}")
    assert logs.status_code == 200
    assert logs.text == "supervisor says hi\n"


async def test_the_ttl_controller_collects_a_finished_job_and_its_log_stays(cluster: Cluster) -> None:
    """``TTL_JOB``: the real TTL-after-finished controller deletes the Job (and the garbage collector its
    pod) once it is that old; the manager had copied its log, and serves it still."""
    async with app_client(cluster.settings.model_copy(update={"ttl_job": 1})) as manager:
        assert (await manager.post("/system/services", json=definition("brief"))).status_code == 201
        job_id = (await invoke(manager, "brief", b"e30=")).headers["X-Oscar-Job-Ids"]
        job = await job_created(cluster, job_id)
        assert job["spec"]["ttlSecondsAfterFinished"] == 1
        await cluster.kubelet.finish(job_id, succeeded=True, log="short-lived\n")
        await wait_for_jobs(manager, "brief", count=1)
        await until_async(lambda: cluster.get("jobs", job_id), lambda found: found is None, within=60)
        pods = f"/api/v1/namespaces/{cluster.namespace}/pods"
        await until_async(
            lambda: cluster.http.get(pods, params={"labelSelector": f"job-name={job_id}"}),
            lambda answer: answer.json()["items"] == [],
            within=60,
        )
        assert (await manager.get(f"/system/logs/brief/{job_id}")).text == "short-lived\n"
        assert (await all_jobs(manager, "brief"))[job_id]["status"] == "Succeeded"
    # Not the manager: the Job went by the TTL controller's hand.
    assert not [r for r in cluster.requests() if (r.verb, r.resource, r.name) == ("delete", "jobs", job_id)]


async def test_a_jobs_log_keeps_the_kubelets_line_times(manager: httpx.AsyncClient, cluster: Cluster) -> None:
    assert (await manager.post("/system/services", json=definition("stamped"))).status_code == 201
    job_id = (await invoke(manager, "stamped", b"e30=")).headers["X-Oscar-Job-Ids"]
    stamps = ["2026-12-05T16:00:00.000000001Z", "2026-12-05T16:00:02.500000000Z"]
    await cluster.kubelet.finish(job_id, succeeded=True, log="first line\n  second line\n", stamps=stamps)
    await wait_for_jobs(manager, "stamped", count=1)
    await cluster.delete_job(job_id)  # the pod is gone: what follows comes from the registry
    assert (await manager.get(f"/system/logs/stamped/{job_id}")).text == "first line\n  second line\n"
    stamped = await manager.get(f"/system/logs/stamped/{job_id}", params={"timestamps": "true"})
    assert stamped.text == f"{stamps[0]} first line\n{stamps[1]}   second line\n"


async def test_a_failed_pod_is_a_failed_job(manager: httpx.AsyncClient, cluster: Cluster) -> None:
    assert (await manager.post("/system/services", json=definition("failing"))).status_code == 201
    job_id = (await invoke(manager, "failing", b"e30=")).headers["X-Oscar-Job-Ids"]
    await cluster.kubelet.finish(job_id, succeeded=False, log="boom\n")
    jobs = await wait_for_jobs(manager, "failing", count=1)
    assert jobs[job_id]["status"] == "Failed"
    assert (await manager.get(f"/system/logs/failing/{job_id}")).text == "boom\n"


async def test_a_refused_job_fails_after_a_few_tries_with_the_reason(
    manager: httpx.AsyncClient, cluster: Cluster
) -> None:
    assert (await manager.post("/system/services", json=definition("forbidden"))).status_code == 201
    await without_verb(cluster, "jobs", "create")
    job_id = (await invoke(manager, "forbidden", b"e30=")).headers["X-Oscar-Job-Ids"]
    jobs = await wait_for_jobs(manager, "forbidden", count=1)
    assert jobs[job_id]["status"] == "Failed"
    log = (await manager.get(f"/system/logs/forbidden/{job_id}")).text
    assert "403" in log
    assert "cannot create resource" in log  # the apiserver's own reason, passed on
    assert f"after {FORBIDDEN_RETRIES + 1} attempts" in log
    assert await cluster.jobs() == []


async def test_a_job_refused_for_a_moment_is_created_once_rbac_allows_it(
    manager: httpx.AsyncClient, cluster: Cluster
) -> None:
    """An apiserver that is starting refuses (403) for a moment what RBAC allows (its authoriser has not
    read every binding yet): a Job refused so is tried again, not failed at once."""
    assert (await manager.post("/system/services", json=definition("patience"))).status_code == 201
    await without_verb(cluster, "jobs", "create")
    job_id = (await invoke(manager, "patience", b"e30=")).headers["X-Oscar-Job-Ids"]
    await until(
        lambda: any((r.verb, r.resource, r.code) == ("create", "jobs", 403) for r in cluster.requests())
    )
    await with_shipped_role(cluster, verb="create", resource="jobs", group="batch")
    await job_created(cluster, job_id)
    await cluster.kubelet.finish(job_id, succeeded=True, log="made it\n")
    jobs = await wait_for_jobs(manager, "patience", count=1)
    assert jobs[job_id]["status"] == "Succeeded"


async def test_rbac_refusing_service_objects_fails_the_create_and_records_nothing(
    manager: httpx.AsyncClient, cluster: Cluster
) -> None:
    await without_verb(cluster, "configmaps", "create")
    answer = await manager.post("/system/services", json=definition("refused"))
    assert answer.status_code == 502
    assert "403 Forbidden" in answer.text
    assert (await manager.get("/system/services/refused")).status_code == 404
    assert await cluster.get("configmaps", "refused") is None


async def test_system_info_describes_the_kubernetes_backend(
    manager: httpx.AsyncClient, cluster: Cluster
) -> None:
    execution = (await manager.get("/system/info")).json()["execution"]
    assert execution["kind"] == "kubernetes"
    assert execution["namespace"] == cluster.namespace


def lists_of_jobs(cluster: Cluster) -> int:
    return sum(1 for r in cluster.requests() if (r.verb, r.resource, r.name) == ("list", "jobs", ""))


async def test_the_job_watcher_lists_again_after_410_gone(
    manager: httpx.AsyncClient, cluster: Cluster
) -> None:
    """The apiserver goes away, and etcd's history is compacted meanwhile: the watcher's resourceVersion
    is too old (410 Gone) when it is back, so it lists again, and the job that ends afterwards is seen."""
    assert (await manager.post("/system/services", json=definition("relist"))).status_code == 201
    job_id = (await invoke(manager, "relist", b"e30=")).headers["X-Oscar-Job-Ids"]
    await job_created(cluster, job_id)
    lists_before = lists_of_jobs(cluster)
    await asyncio.to_thread(cluster.plane.stop, "apiserver")
    await asyncio.to_thread(cluster.plane.compact_etcd)
    await asyncio.to_thread(cluster.plane.start, "apiserver")
    # If the Job controller had not made the pod before the apiserver went away, it makes it after its own
    # watches come back (client-go's reflectors back off up to 30 s): as in the outage test below.
    await cluster.kubelet.finish(job_id, succeeded=True, log="ended after the restart\n", within=120)
    # The watcher's reconnect backoff grows to 30 s while the apiserver is away (longer on a loaded machine).
    jobs = await wait_for_jobs(manager, "relist", count=1, within=120)
    assert jobs[job_id]["status"] == "Succeeded"
    assert lists_of_jobs(cluster) > lists_before
    assert (await manager.get(f"/system/logs/relist/{job_id}")).text == "ended after the restart\n"


async def test_a_restarted_manager_keeps_the_logs_it_copied(cluster: Cluster) -> None:
    async with app_client(cluster.settings) as manager:
        assert (await manager.post("/system/services", json=definition("kept"))).status_code == 201
        job_id = (await invoke(manager, "kept", b"e30=")).headers["X-Oscar-Job-Ids"]
        await cluster.kubelet.finish(job_id, succeeded=True, log="the original log\n")
        await wait_for_jobs(manager, "kept", count=1)
    # The Job stays until its TTL. A new manager lists it again.
    lists_before = lists_of_jobs(cluster)
    seen_before = len(cluster.requests())
    async with app_client(cluster.settings) as manager:
        await until(lambda: lists_of_jobs(cluster) > lists_before)
        await settle(0.3)
        assert (await manager.get(f"/system/logs/kept/{job_id}")).text == "the original log\n"
        assert (await all_jobs(manager, "kept"))[job_id]["status"] == "Succeeded"
    # Its end was recorded already: no pod is looked for, no log read again.
    assert [r for r in cluster.requests()[seen_before:] if r.resource.startswith("pods")] == []


async def test_a_restarted_manager_copies_the_logs_of_jobs_that_ended_while_it_was_away(
    cluster: Cluster,
) -> None:
    async with app_client(cluster.settings) as manager:
        assert (await manager.post("/system/services", json=definition("away"))).status_code == 201
        first = (await invoke(manager, "away", b"e30=")).headers["X-Oscar-Job-Ids"]
        second = (await invoke(manager, "away", b"e31=")).headers["X-Oscar-Job-Ids"]
        await job_created(cluster, second)
        await cluster.kubelet.finish(first, succeeded=True, log="seen\n")
        await until_async(
            lambda: all_jobs(manager, "away"), lambda jobs: jobs[first]["status"] == "Succeeded"
        )
    await cluster.kubelet.finish(second, succeeded=False, log="ended while nobody watched\n")
    await until_async(
        lambda: cluster.get("jobs", second), lambda job: "conditions" in (job or {}).get("status", {})
    )
    async with app_client(cluster.settings) as manager:
        jobs = await wait_for_jobs(manager, "away", count=2)
        assert (jobs[first]["status"], jobs[second]["status"]) == ("Succeeded", "Failed")
        assert (await manager.get(f"/system/logs/away/{second}")).text == "ended while nobody watched\n"


@pytest.mark.parametrize("component", ["apiserver", "etcd"])
async def test_events_taken_while_the_control_plane_is_gone_become_jobs_once_it_returns(
    manager: httpx.AsyncClient, cluster: Cluster, component: str
) -> None:
    """The apiserver (connections refused) or etcd (the apiserver up, but answering 5xx or timing out) is
    killed: invocations are still taken, and become Jobs, once each, when it is back."""
    assert (await manager.post("/system/services", json=definition("outage"))).status_code == 201
    await asyncio.to_thread(cluster.plane.stop, component, kill=True)
    try:
        answers = [await invoke(manager, "outage", base64.b64encode(f"e{n}".encode())) for n in range(3)]
        assert [answer.status_code for answer in answers] == [201, 201, 201]
        await settle(1.0)
    finally:
        await asyncio.to_thread(cluster.plane.start, component)
    job_ids = {answer.headers["X-Oscar-Job-Ids"] for answer in answers}
    # The dispatcher's backoff after the failures: up to a few seconds.
    await until_async(cluster.jobs, lambda names: set(names) == job_ids, within=60)
    for job_id in job_ids:
        # The Job controller's own watches back off through the outage too (client-go's reflectors, up to
        # 30 s between tries): its pods can come long after the Jobs, on a loaded machine.
        await cluster.kubelet.finish(job_id, succeeded=True, within=120)
    jobs = await wait_for_jobs(manager, "outage", count=3, within=60)
    assert {job["status"] for job in jobs.values()} == {"Succeeded"}
    created = [r.name for r in cluster.requests() if (r.verb, r.resource, r.code) == ("create", "jobs", 201)]
    assert sorted(created) == sorted(job_ids)


async def test_a_new_upload_is_a_new_job_and_a_redelivered_one_the_same(
    manager: httpx.AsyncClient, cluster: Cluster
) -> None:
    """Job names come from the event's dedup key: MinIO's record of one PUT names one Job however often
    it is delivered; a new PUT of the same content (same ETag, new sequencer) names a new Job."""
    assert (await manager.post("/system/services", json=definition("uploads"))).status_code == 201
    written = 1_790_000_000_123_456_789  # the object's modification time in ns: MinIO's sequencer

    def put_record(nanoseconds: int) -> bytes:
        obj = {"key": "in%2Fx.txt", "size": 4, "eTag": "same", "sequencer": f"{nanoseconds:X}"}
        record = {"eventSource": "minio:s3", "s3": {"bucket": {"name": "uploads"}, "object": obj}}
        return json.dumps({"Records": [record]}).encode()

    first, again, later = [
        (await invoke(manager, "uploads", put_record(ns))).headers["X-Oscar-Job-Ids"]
        for ns in (written, written, written + 1_000_000)
    ]
    assert first == again != later
    await until_async(cluster.jobs, lambda names: names == sorted([first, later]))
    await settle(0.2)
    assert await cluster.jobs() == sorted([first, later])


# --- sync runs: the runner kubelet runs the pods with the real supervisor -------------------------------


@dataclass
class Runs:
    http: httpx.AsyncClient
    plane: ControlPlane
    namespace: str
    audit_start: int

    def created(self) -> list[dict[str, Any]]:
        records = audit_records(self.plane.audit_log, user=MANAGER_USER, start=self.audit_start)
        return [
            r.body
            for r in records
            if (r.verb, r.resource, r.code) == ("create", "jobs", 201) and r.body and not r.dry_run
        ]

    def asked(self, verb: str, resource: str, name: str) -> bool:
        records = audit_records(self.plane.audit_log, user=MANAGER_USER, start=self.audit_start)
        return any((r.verb, r.resource, r.name) == (verb, resource, name) for r in records)


@pytest.fixture
def sync_settings(kubernetes_settings: Settings) -> Settings:
    return kubernetes_settings.model_copy(update={"oscar_run_timeout": 20.0})


@pytest.fixture
async def runs(sync_settings: Settings, control_plane: ControlPlane) -> AsyncIterator[Runs]:
    start = control_plane.audit_log.stat().st_size
    async with app_client(sync_settings) as http:
        yield Runs(http, control_plane, sync_settings.oscar_services_namespace, start)


async def run(http: httpx.AsyncClient, name: str, body: bytes) -> httpx.Response:
    token = (await http.get(f"/system/services/{name}")).json()["token"]
    return await http.post(f"/run/{name}", content=body, headers={"Authorization": f"Bearer {token}"})


async def gone(kube_admin: httpx.AsyncClient, namespace: str, name: str) -> bool:
    answer = await kube_admin.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}")
    return answer.status_code == 404 or bool(answer.json()["metadata"].get("deletionTimestamp"))


async def test_a_sync_run_answers_from_its_own_job_then_deletes_it(
    runs: Runs, kube_admin: httpx.AsyncClient
) -> None:
    script = 'echo "log line"\ntr a-z A-Z < "$INPUT_FILE_PATH"\n'
    assert (
        await runs.http.post("/system/services", json=definition("shout", script=script))
    ).status_code == 201
    answer = await run(runs.http, "shout", base64.b64encode(b"quiet please"))
    assert answer.status_code == 200
    assert answer.text == "log line\nQUIET PLEASE"
    (job,) = runs.created()
    assert job["spec"]["activeDeadlineSeconds"] == 20
    assert await gone(kube_admin, runs.namespace, job["metadata"]["name"])  # deleted once answered
    # Sync runs are no job records (as on the local backend); the watcher left the Job alone.
    await settle(0.2)
    assert (await runs.http.get("/system/logs/shout")).json()["jobs"] == {}


async def test_sync_runs_reuse_the_client_and_build_no_tls_context(
    runs: Runs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each run watches its Job; kubernetes-asyncio's own Watch would build an API client, and a TLS
    context with it (tens of ms of CPU on the event loop), for every run, and close it after."""
    assert await runs.http.post("/system/services", json=definition("echo", script="cat $INPUT_FILE_PATH\n"))
    contexts = 0
    default_context = ssl.create_default_context

    def counted(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        nonlocal contexts
        contexts += 1
        return default_context(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counted)
    for index in range(3):
        answer = await run(runs.http, "echo", base64.b64encode(b"run %d" % index))
        assert (answer.status_code, answer.text) == (200, f"run {index}")
    assert contexts == 0


async def test_a_failing_sync_run_is_500_with_the_output(runs: Runs, kube_admin: httpx.AsyncClient) -> None:
    script = "echo 'cannot go on' >&2\nexit 4\n"
    assert (
        await runs.http.post("/system/services", json=definition("sad", script=script))
    ).status_code == 201
    answer = await run(runs.http, "sad", base64.b64encode(b"x"))
    assert answer.status_code == 500
    assert "code 4" in answer.text
    assert "cannot go on" in answer.text
    (job,) = runs.created()
    assert await gone(kube_admin, runs.namespace, job["metadata"]["name"])


async def test_a_sync_run_past_its_timeout_is_504_and_its_job_deleted(
    kubernetes_settings: Settings, control_plane: ControlPlane, kube_admin: httpx.AsyncClient
) -> None:
    start = control_plane.audit_log.stat().st_size
    async with app_client(kubernetes_settings.model_copy(update={"oscar_run_timeout": 3.0})) as http:
        runs = Runs(http, control_plane, kubernetes_settings.oscar_services_namespace, start)
        body = definition("slow", script="sleep 30\n")
        assert (await http.post("/system/services", json=body)).status_code == 201
        answer = await run(http, "slow", base64.b64encode(b"x"))
    assert answer.status_code == 504
    (job,) = runs.created()
    assert await gone(kube_admin, runs.namespace, job["metadata"]["name"])
    assert runs.asked("delete", "jobs", job["metadata"]["name"])


async def test_a_sync_run_over_the_body_limit_is_413_and_creates_nothing(
    kubernetes_settings: Settings, control_plane: ControlPlane
) -> None:
    """The configured limit applies (bodies larger than a Job's environment travel in Secrets:
    tests/integration/hostile/test_large_bodies.py)."""
    start = control_plane.audit_log.stat().st_size
    limited = kubernetes_settings.model_copy(update={"oscar_max_run_body_bytes": 64 * 1024})
    async with app_client(limited) as http:
        runs = Runs(http, control_plane, limited.oscar_services_namespace, start)
        assert (await http.post("/system/services", json=definition("big"))).status_code == 201
        answer = await run(http, "big", base64.b64encode(b"x" * (48 * 1024 + 3)))
    assert answer.status_code == 413
    assert runs.created() == []


async def test_a_sync_run_outlives_an_api_server_restart(
    kubernetes_settings: Settings, control_plane: ControlPlane, kube_admin: httpx.AsyncClient
) -> None:
    """The run's watch breaks with the apiserver, and etcd's history is compacted meanwhile: the run's
    resourceVersion is too old (410 Gone) when it is back, so the run reads its Job again and still
    answers. The controllers take their time to catch up after the restart, hence the generous timeout."""
    start = control_plane.audit_log.stat().st_size
    async with app_client(kubernetes_settings.model_copy(update={"oscar_run_timeout": 90.0})) as http:
        runs = Runs(http, control_plane, kubernetes_settings.oscar_services_namespace, start)
        script = "sleep 4\necho finished\n"
        assert (
            await http.post("/system/services", json=definition("patient", script=script))
        ).status_code == 201
        call = asyncio.create_task(run(http, "patient", base64.b64encode(b"x")))
        await until(lambda: len(runs.created()) == 1)
        name = runs.created()[0]["metadata"]["name"]
        await asyncio.to_thread(control_plane.stop, "apiserver")
        await asyncio.to_thread(control_plane.compact_etcd)
        await asyncio.to_thread(control_plane.start, "apiserver")
        answer = await call
    assert answer.status_code == 200, answer.text
    assert answer.text == "finished\n"
    assert runs.asked("get", "jobs", name)  # read again after the 410
    assert await gone(kube_admin, runs.namespace, name)
