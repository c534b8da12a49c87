"""``OSCAR_BACKEND=kubernetes``: the manager driving the Kubernetes API double over HTTP with
kubernetes-asyncio, through the same API the local backend serves."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestServer

from oscar_manager.settings import Settings
from tests.support.app import NO_AUTH, app_client
from tests.support.jobs import all_jobs, settle, wait_for_jobs
from tests.support.kube_api import KubeApiDouble, on_kubernetes

NS = "oscar-svc"


@pytest.fixture
def kube_settings(settings: Settings, double: tuple[KubeApiDouble, str], tmp_path: Path) -> Settings:
    return on_kubernetes(settings, double[1], tmp_path)


@pytest.fixture
async def manager(kube_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(kube_settings) as http:
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


async def until(check: Any, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "gave up waiting"
        await asyncio.sleep(0.02)


async def test_proxy_variables_do_not_divert_the_api_client(
    kube_settings: Settings, double: tuple[KubeApiDouble, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API server is reached as the kubeconfig says: the client does not look up proxies (nor
    ``~/.netrc``) in the environment on every request, so a proxy there (here one that is not listening)
    is not used."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    async with app_client(kube_settings) as manager:
        assert (await manager.post("/system/services", json=definition())).status_code == 201
    assert double[0].get("ConfigMap", NS, "grayify") is not None


async def test_a_service_gets_its_config_map_and_secret_and_loses_them_on_delete(
    manager: httpx.AsyncClient, double: tuple[KubeApiDouble, str]
) -> None:
    api, _url = double
    body = definition(environment={"secrets": {"API_KEY": "s3cr3t"}})
    assert (await manager.post("/system/services", json=body)).status_code == 201
    config_map = api.get("ConfigMap", NS, "grayify")
    assert config_map is not None
    assert config_map["data"]["script.sh"] == "echo hi\n"
    secret = api.get("Secret", NS, "grayify")
    assert secret is not None
    assert base64.b64decode(secret["data"]["API_KEY"]) == b"s3cr3t"

    body["script"] = "echo updated\n"
    body["environment"] = {}
    assert (await manager.put("/system/services", json=body)).status_code == 204
    assert api.get("ConfigMap", NS, "grayify")["data"]["script.sh"] == "echo updated\n"  # type: ignore[index]
    assert api.get("Secret", NS, "grayify") is None

    assert (await manager.delete("/system/services/grayify")).status_code == 204
    assert api.get("ConfigMap", NS, "grayify") is None


async def test_an_invocation_becomes_a_job_whose_log_outlives_the_pod(
    manager: httpx.AsyncClient, double: tuple[KubeApiDouble, str]
) -> None:
    api, _url = double
    assert (await manager.post("/system/services", json=definition())).status_code == 201
    answer = await invoke(manager, "grayify", base64.b64encode(b"hello"), **{"Idempotency-Key": "k1"})
    assert answer.status_code == 201
    (job_id,) = answer.headers["X-Oscar-Job-Ids"].split(",")
    await until(lambda: api.get("Job", NS, job_id) is not None)
    job = api.get("Job", NS, job_id)
    assert job is not None
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

    await until(lambda: ("POST", f"/apis/batch/v1/namespaces/{NS}/jobs") in api.requests)
    await api.finish_pod(NS, job_id, succeeded=True, log="supervisor says hi\n")
    jobs = await wait_for_jobs(manager, "grayify", count=1)
    assert jobs[job_id]["status"] == "Succeeded"
    assert len(api.of_kind("Job")) == 1

    # The pod and its Job are gone (TTL); the log is still served from the registry.
    api.objects.clear()
    logs = await manager.get(f"/system/logs/grayify/{job_id}")
    assert logs.status_code == 200
    assert logs.text == "supervisor says hi\n"


async def test_a_jobs_log_keeps_the_kubelets_line_times(
    manager: httpx.AsyncClient, double: tuple[KubeApiDouble, str]
) -> None:
    api, _url = double
    assert (await manager.post("/system/services", json=definition("stamped"))).status_code == 201
    job_id = (await invoke(manager, "stamped", b"e30=")).headers["X-Oscar-Job-Ids"]
    await until(lambda: api.get("Job", NS, job_id) is not None)
    stamps = ["2026-12-05T16:00:00.000000001Z", "2026-12-05T16:00:02.500000000Z"]
    await api.finish_pod(NS, job_id, succeeded=True, log="first line\n  second line\n", stamps=stamps)
    await wait_for_jobs(manager, "stamped", count=1)
    api.objects.clear()  # the pod is gone: what follows comes from the registry
    assert (await manager.get(f"/system/logs/stamped/{job_id}")).text == "first line\n  second line\n"
    stamped = await manager.get(f"/system/logs/stamped/{job_id}", params={"timestamps": "true"})
    assert stamped.text == f"{stamps[0]} first line\n{stamps[1]}   second line\n"


async def test_a_failed_pod_is_a_failed_job(
    manager: httpx.AsyncClient, double: tuple[KubeApiDouble, str]
) -> None:
    api, _url = double
    assert (await manager.post("/system/services", json=definition("failing"))).status_code == 201
    job_id = (await invoke(manager, "failing", b"e30=")).headers["X-Oscar-Job-Ids"]
    await until(lambda: api.get("Job", NS, job_id) is not None)
    await api.finish_pod(NS, job_id, succeeded=False, log="boom\n")
    jobs = await wait_for_jobs(manager, "failing", count=1)
    assert jobs[job_id]["status"] == "Failed"
    assert (await manager.get(f"/system/logs/failing/{job_id}")).text == "boom\n"


async def test_api_server_errors_are_retried_and_the_job_created_once(
    manager: httpx.AsyncClient, double: tuple[KubeApiDouble, str]
) -> None:
    api, _url = double
    assert (await manager.post("/system/services", json=definition("retried"))).status_code == 201
    api.fail_next = [("POST", "/jobs", 503)]
    job_id = (await invoke(manager, "retried", b"e30=")).headers["X-Oscar-Job-Ids"]
    # Retried after the dispatcher's backoff (1 s for the first retry).
    await until(lambda: api.get("Job", NS, job_id) is not None, within=15)
    creates = [path for method, path in api.requests if method == "POST" and path.endswith("/jobs")]
    assert len(creates) == 2
    await settle(0.2)
    assert len(api.of_kind("Job")) == 1


async def test_a_refused_job_fails_at_once_with_the_reason(
    manager: httpx.AsyncClient, double: tuple[KubeApiDouble, str]
) -> None:
    api, _url = double
    assert (await manager.post("/system/services", json=definition("forbidden"))).status_code == 201
    api.fail_next = [("POST", "/jobs", 403)]
    job_id = (await invoke(manager, "forbidden", b"e30=")).headers["X-Oscar-Job-Ids"]
    jobs = await wait_for_jobs(manager, "forbidden", count=1)
    assert jobs[job_id]["status"] == "Failed"
    log = (await manager.get(f"/system/logs/forbidden/{job_id}")).text
    assert "403" in log
    assert api.of_kind("Job") == []


@pytest.mark.parametrize(
    ("refusal", "answer_status", "named"),
    [(403, 502, "403 Forbidden"), (422, 400, "metadata.labels")],  # RBAC: passed on; invalid: names the field
)
async def test_the_api_server_refusing_service_objects_fails_the_create_and_records_nothing(
    manager: httpx.AsyncClient,
    double: tuple[KubeApiDouble, str],
    refusal: int,
    answer_status: int,
    named: str,
) -> None:
    api, _url = double
    api.fail_next = [("POST", "/configmaps", refusal)]
    answer = await manager.post("/system/services", json=definition("refused"))
    assert answer.status_code == answer_status
    assert named in answer.text
    assert (await manager.get("/system/services/refused")).status_code == 404
    assert api.get("ConfigMap", NS, "refused") is None


async def test_system_info_describes_the_kubernetes_backend(manager: httpx.AsyncClient) -> None:
    execution = (await manager.get("/system/info")).json()["execution"]
    assert execution["kind"] == "kubernetes"
    assert execution["namespace"] == NS


async def test_the_job_watcher_lists_again_after_410_gone(
    manager: httpx.AsyncClient, double: tuple[KubeApiDouble, str]
) -> None:
    api, _url = double
    assert (await manager.post("/system/services", json=definition("relist"))).status_code == 201
    job_id = (await invoke(manager, "relist", b"e30=")).headers["X-Oscar-Job-Ids"]
    await until(lambda: api.get("Job", NS, job_id) is not None)
    lists_before = api.listed.count("Job")
    # The API server goes away; the job ends meanwhile and the history is compacted past the watcher.
    api.watches_open.clear()
    await api.break_watches()
    await api.finish_pod(NS, job_id, succeeded=True, log="ended while nobody watched\n")
    api.compact()
    api.watches_open.set()
    jobs = await wait_for_jobs(manager, "relist", count=1)
    assert jobs[job_id]["status"] == "Succeeded"
    assert api.listed.count("Job") > lists_before  # resumed with 410, then listed
    assert (await manager.get(f"/system/logs/relist/{job_id}")).text == "ended while nobody watched\n"


async def test_a_restarted_manager_keeps_the_logs_it_copied(
    kube_settings: Settings, double: tuple[KubeApiDouble, str]
) -> None:
    api, _url = double
    async with app_client(kube_settings) as manager:
        assert (await manager.post("/system/services", json=definition("kept"))).status_code == 201
        job_id = (await invoke(manager, "kept", b"e30=")).headers["X-Oscar-Job-Ids"]
        await until(lambda: api.get("Job", NS, job_id) is not None)
        await api.finish_pod(NS, job_id, succeeded=True, log="the original log\n")
        await wait_for_jobs(manager, "kept", count=1)
    # The pod is garbage-collected; the Job stays until its TTL. A new manager lists it again.
    for key in [key for key in api.objects if key[0] == "Pod"]:
        del api.objects[key]
    lists_before = api.listed.count("Job")
    requests_before = len(api.requests)
    async with app_client(kube_settings) as manager:
        await until(lambda: api.listed.count("Job") > lists_before)
        await settle(0.3)
        assert (await manager.get(f"/system/logs/kept/{job_id}")).text == "the original log\n"
        assert (await all_jobs(manager, "kept"))[job_id]["status"] == "Succeeded"
    # Its end was recorded already: no pod is looked for, no log read again.
    assert [path for _method, path in api.requests[requests_before:] if "/pods" in path] == []


async def test_a_restarted_manager_copies_the_logs_of_jobs_that_ended_while_it_was_away(
    kube_settings: Settings, double: tuple[KubeApiDouble, str]
) -> None:
    api, _url = double
    async with app_client(kube_settings) as manager:
        assert (await manager.post("/system/services", json=definition("away"))).status_code == 201
        first = (await invoke(manager, "away", b"e30=")).headers["X-Oscar-Job-Ids"]
        second = (await invoke(manager, "away", b"e31=")).headers["X-Oscar-Job-Ids"]
        await until(lambda: api.get("Job", NS, second) is not None)
        await api.finish_pod(NS, first, succeeded=True, log="seen\n")
        for _ in range(500):
            if (await all_jobs(manager, "away"))[first]["status"] == "Succeeded":
                break
            await asyncio.sleep(0.02)
    await api.finish_pod(NS, second, succeeded=False, log="ended while nobody watched\n")
    async with app_client(kube_settings) as manager:
        jobs = await wait_for_jobs(manager, "away", count=2)
        assert (jobs[first]["status"], jobs[second]["status"]) == ("Succeeded", "Failed")
        assert (await manager.get(f"/system/logs/away/{second}")).text == "ended while nobody watched\n"


@pytest.fixture
async def flaky_api_server(
    settings: Settings, tmp_path: Path
) -> AsyncIterator[tuple[KubeApiDouble, TestServer, httpx.AsyncClient]]:
    """A manager whose API server can be stopped and started again on the same address."""
    api = KubeApiDouble()
    server = TestServer(api.app(), host="127.0.0.1")
    await server.start_server()
    kube_settings = on_kubernetes(settings, f"http://127.0.0.1:{server.port}", tmp_path)
    try:
        async with app_client(kube_settings) as http:
            yield api, server, http
    finally:
        await server.close()


async def test_events_taken_while_the_api_server_is_gone_become_jobs_once_it_returns(
    flaky_api_server: tuple[KubeApiDouble, TestServer, httpx.AsyncClient],
) -> None:
    api, server, manager = flaky_api_server
    assert (await manager.post("/system/services", json=definition("outage"))).status_code == 201
    port = server.port
    await api.break_watches()  # else the server's shutdown waits for the open watch to time out
    await server.close()
    answers = [await invoke(manager, "outage", base64.b64encode(f"e{n}".encode())) for n in range(3)]
    assert [answer.status_code for answer in answers] == [201, 201, 201]
    job_ids = {answer.headers["X-Oscar-Job-Ids"] for answer in answers}
    await settle(0.5)
    assert api.of_kind("Job") == []

    revived = TestServer(api.app(), host="127.0.0.1", port=port)
    await revived.start_server()
    try:
        # The dispatcher's backoff after the failures: up to a few seconds.
        await until(lambda: {job["metadata"]["name"] for job in api.of_kind("Job")} == job_ids, within=20)
        for job_id in job_ids:
            await api.finish_pod(NS, job_id, succeeded=True)
        jobs = await wait_for_jobs(manager, "outage", count=3)
        assert {job["status"] for job in jobs.values()} == {"Succeeded"}
        creates = [path for method, path in api.requests if method == "POST" and path.endswith("/jobs")]
        assert len(creates) == 3
    finally:
        await api.break_watches()
        await revived.close()


# --- sync runs: the kubelet runs the pods with the real supervisor ---------------------------------------


@pytest.fixture
async def runner(kubernetes_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(kubernetes_settings.model_copy(update={"oscar_run_timeout": 20.0})) as http:
        yield http


async def run(http: httpx.AsyncClient, name: str, body: bytes) -> httpx.Response:
    token = (await http.get(f"/system/services/{name}")).json()["token"]
    return await http.post(f"/run/{name}", content=body, headers={"Authorization": f"Bearer {token}"})


def sync_jobs(api: KubeApiDouble) -> list[dict[str, Any]]:
    """Every Job a sync run created (from the history: they are deleted once answered)."""
    return [
        job
        for _version, event, job in api.history
        if event == "ADDED" and "oscar_sync" in job["metadata"]["labels"]
    ]


async def test_a_sync_run_answers_from_its_own_job_then_deletes_it(
    runner: httpx.AsyncClient, double: tuple[KubeApiDouble, str]
) -> None:
    api, _url = double
    script = 'echo "log line"\ntr a-z A-Z < "$INPUT_FILE_PATH"\n'
    assert (await runner.post("/system/services", json=definition("shout", script=script))).status_code == 201
    answer = await run(runner, "shout", base64.b64encode(b"quiet please"))
    assert answer.status_code == 200
    assert answer.text == "log line\nQUIET PLEASE"
    (job,) = sync_jobs(api)
    assert job["spec"]["activeDeadlineSeconds"] == 20
    assert api.get("Job", NS, job["metadata"]["name"]) is None  # deleted once answered
    # Sync runs are no job records (as on the local backend); the watcher left the Job alone.
    await settle(0.2)
    assert (await runner.get("/system/logs/shout")).json()["jobs"] == {}


async def test_sync_runs_reuse_the_client_and_build_no_tls_context(
    runner: httpx.AsyncClient, double: tuple[KubeApiDouble, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each run watches its Job; kubernetes-asyncio's own Watch would build an API client, and a TLS
    context with it (tens of ms of CPU on the event loop), for every run, and close it after."""
    assert await runner.post("/system/services", json=definition("echo", script="cat $INPUT_FILE_PATH\n"))
    contexts = 0
    default_context = ssl.create_default_context

    def counted(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        nonlocal contexts
        contexts += 1
        return default_context(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counted)
    for index in range(3):
        answer = await run(runner, "echo", base64.b64encode(b"run %d" % index))
        assert (answer.status_code, answer.text) == (200, f"run {index}")
    assert contexts == 0


async def test_a_failing_sync_run_is_500_with_the_output(
    runner: httpx.AsyncClient, double: tuple[KubeApiDouble, str]
) -> None:
    api, _url = double
    script = "echo 'cannot go on' >&2\nexit 4\n"
    assert (await runner.post("/system/services", json=definition("sad", script=script))).status_code == 201
    answer = await run(runner, "sad", base64.b64encode(b"x"))
    assert answer.status_code == 500
    assert "code 4" in answer.text
    assert "cannot go on" in answer.text
    assert api.of_kind("Job") == []


async def test_a_sync_run_past_its_timeout_is_504_and_its_job_deleted(
    kubernetes_settings: Settings, double: tuple[KubeApiDouble, str]
) -> None:
    api, _url = double
    async with app_client(kubernetes_settings.model_copy(update={"oscar_run_timeout": 3.0})) as runner:
        body = definition("slow", script="sleep 30\n")
        assert (await runner.post("/system/services", json=body)).status_code == 201
        answer = await run(runner, "slow", base64.b64encode(b"x"))
    assert answer.status_code == 504
    (job,) = sync_jobs(api)
    assert api.get("Job", NS, job["metadata"]["name"]) is None
    assert ("DELETE", f"/apis/batch/v1/namespaces/{NS}/jobs/{job['metadata']['name']}") in api.requests


async def test_a_sync_run_over_the_body_limit_is_413_and_creates_nothing(
    kubernetes_settings: Settings, double: tuple[KubeApiDouble, str]
) -> None:
    """The configured limit applies (bodies larger than a Job's environment travel in Secrets:
    tests/integration/hostile/test_large_bodies.py)."""
    api, _url = double
    limited = kubernetes_settings.model_copy(update={"oscar_max_run_body_bytes": 64 * 1024})
    async with app_client(limited) as runner:
        assert (await runner.post("/system/services", json=definition("big"))).status_code == 201
        answer = await run(runner, "big", base64.b64encode(b"x" * (48 * 1024 + 3)))
    assert answer.status_code == 413
    assert sync_jobs(api) == []


async def test_a_sync_run_outlives_a_lost_watch_and_410_gone(
    runner: httpx.AsyncClient, double: tuple[KubeApiDouble, str]
) -> None:
    api, _url = double
    script = "sleep 1\necho finished\n"
    assert (
        await runner.post("/system/services", json=definition("patient", script=script))
    ).status_code == 201
    call = asyncio.create_task(run(runner, "patient", base64.b64encode(b"x")))
    await until(lambda: len(sync_jobs(api)) == 1)
    name = sync_jobs(api)[0]["metadata"]["name"]
    api.watches_open.clear()
    await api.break_watches()
    await until(lambda: "conditions" in (api.get("Job", NS, name) or {}).get("status", {}))
    api.compact()
    api.watches_open.set()
    answer = await call
    assert answer.status_code == 200
    assert answer.text == "finished\n"
    assert ("GET", f"/apis/batch/v1/namespaces/{NS}/jobs/{name}") in api.requests  # re-read after 410


async def test_a_new_upload_is_a_new_job_and_a_redelivered_one_the_same(
    manager: httpx.AsyncClient, double: tuple[KubeApiDouble, str]
) -> None:
    """Job names come from the event's dedup key: MinIO's record of one PUT names one Job however often
    it is delivered; a new PUT of the same content (same ETag, new sequencer) names a new Job."""
    api, _url = double
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
    await until(lambda: api.get("Job", NS, first) is not None and api.get("Job", NS, later) is not None)
    await settle(0.2)
    assert sorted(job["metadata"]["name"] for job in api.of_kind("Job")) == sorted([first, later])
