"""The Kubernetes backend against answers a real apiserver gives only now and then, and cannot be made to
give on demand: a 503 to one chosen request, a 422 on a ConfigMap the manager validated itself. The API
double (``tests.support.kube_api``) answers them; everything else is tested on the real control plane
(``test_kubernetes_backend.py``)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from oscar_manager.backends.kube_answers import FORBIDDEN_RETRIES
from oscar_manager.settings import Settings
from tests.support.app import NO_AUTH, app_client
from tests.support.jobs import settle
from tests.support.kube_api import KubeApiDouble, on_kubernetes

NS = "oscar-svc"


@pytest.fixture
async def manager(
    settings: Settings, double: tuple[KubeApiDouble, str], tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(on_kubernetes(settings, double[1], tmp_path)) as http:
        yield http


def definition(name: str) -> dict[str, Any]:
    return {"name": name, "image": "busybox", "script": "echo hi\n", "input": [{"path": f"{name}/in"}]}


async def test_api_server_errors_are_retried_and_the_job_created_once(
    manager: httpx.AsyncClient, double: tuple[KubeApiDouble, str]
) -> None:
    api, _url = double
    assert (await manager.post("/system/services", json=definition("retried"))).status_code == 201
    api.fail_next = [("POST", "/jobs", 503)]
    token = (await manager.get("/system/services/retried")).json()["token"]
    answer = await manager.post(
        "/job/retried", content=b"e30=", headers={"Authorization": f"Bearer {token}"}, auth=NO_AUTH
    )
    job_id = answer.headers["X-Oscar-Job-Ids"]
    # Retried after the dispatcher's backoff (1 s for the first retry).
    deadline = time.monotonic() + 15
    while api.get("Job", NS, job_id) is None:
        assert time.monotonic() < deadline, "the Job was never created"
        await settle(0.05)
    creates = [path for method, path in api.requests if method == "POST" and path.endswith("/jobs")]
    assert len(creates) == 2
    await settle(0.2)
    assert len(api.of_kind("Job")) == 1


async def test_an_invalid_service_object_fails_the_create_naming_the_field(
    manager: httpx.AsyncClient, double: tuple[KubeApiDouble, str]
) -> None:
    api, _url = double
    api.fail_next = [("POST", "/configmaps", 422)]
    answer = await manager.post("/system/services", json=definition("refused"))
    assert answer.status_code == 400
    assert "metadata.labels" in answer.text
    assert (await manager.get("/system/services/refused")).status_code == 404
    assert api.get("ConfigMap", NS, "refused") is None


async def test_a_403_after_other_failures_is_still_tried_again(
    manager: httpx.AsyncClient, double: tuple[KubeApiDouble, str]
) -> None:
    """An apiserver away for a while (503s: attempts spent) that then starts and refuses for a moment (403,
    its RBAC not read yet): only the 403s count towards a final refusal, so the Job is still created. On
    the real control plane this is the apiserver killed under load; here its answers in that order."""
    api, _url = double
    assert (await manager.post("/system/services", json=definition("restart"))).status_code == 201
    # Attempts 1-3 spent on 503s; the 403 of the fourth was taken as final before.
    api.fail_next = [("POST", "/jobs", 503)] * FORBIDDEN_RETRIES + [("POST", "/jobs", 403)]
    token = (await manager.get("/system/services/restart")).json()["token"]
    answer = await manager.post(
        "/job/restart", content=b"e30=", headers={"Authorization": f"Bearer {token}"}, auth=NO_AUTH
    )
    job_id = answer.headers["X-Oscar-Job-Ids"]
    deadline = time.monotonic() + 40  # the dispatcher's backoff: 1 + 2 + 4 + 8 s
    while api.get("Job", NS, job_id) is None:
        assert time.monotonic() < deadline, "the Job was never created"
        await settle(0.1)
    creates = [path for method, path in api.requests if method == "POST" and path.endswith("/jobs")]
    assert len(creates) == FORBIDDEN_RETRIES + 2
