"""``GET /system/services[/{name}]?include=deployment`` (upstream's ``include`` query, read by the
dashboard's services list): each service with its ``deployment`` summary, upstream's
``ServiceDeploymentSummary`` (the ``/deployment`` status without name and namespace); absent without
the query. The exposed side is the test's (``tests.support.exposer``): its states are set on demand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from oscar_manager.backends.exposed import DeploymentState, ExposedUnavailable
from oscar_manager.operations.deployment import UNAVAILABLE_REASON
from oscar_manager.settings import Settings
from tests.support.app import app_client, give_local_backend
from tests.support.exposer import LoopbackExposer, loopback_server
from tests.support.factories import service_body

UNAVAILABLE = {
    "state": "unavailable",
    "reason": UNAVAILABLE_REASON,
    "active_instances": 0,
    "affected_instances": 0,
    "resource_kind": "unavailable",
}


@pytest.fixture
async def exposer(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[LoopbackExposer]:
    async with loopback_server() as instance:
        found = LoopbackExposer(instance)
        give_local_backend(monkeypatch, found)
        yield found


@pytest.fixture
async def http(settings: Settings, exposer: LoopbackExposer) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(settings) as client:
        for body in (service_body("web", expose={"api_port": 8080}), service_body("plain")):
            assert (await client.post("/system/services", json=body)).status_code == 201
        yield client


async def test_without_the_query_no_service_has_a_deployment(http: httpx.AsyncClient) -> None:
    listed = await http.get("/system/services")
    assert [("deployment" in service) for service in listed.json()] == [False, False]
    assert "deployment" not in (await http.get("/system/services/web")).json()
    other = await http.get("/system/services/web", params={"include": "volumes"})
    assert "deployment" not in other.json()


async def test_with_it_each_service_has_its_summary(
    http: httpx.AsyncClient, exposer: LoopbackExposer
) -> None:
    exposer.states["web"] = DeploymentState(
        state="degraded",
        reason="1 of 2 instances are affected.",
        active_instances=1,
        affected_instances=1,
        last_transition_time=datetime(2026, 12, 1, 10, 20, 30, 500, tzinfo=UTC),
    )
    web = {
        "state": "degraded",
        "reason": "1 of 2 instances are affected.",
        "last_transition_time": "2026-12-01T10:20:30Z",
        "active_instances": 1,
        "affected_instances": 1,
        "resource_kind": "exposed_service",
    }
    # A comma-separated list, any case, as upstream reads it.
    listed = await http.get("/system/services", params={"include": "volumes, Deployment"})
    assert listed.status_code == 200
    assert {s["name"]: s["deployment"] for s in listed.json()} == {"web": web, "plain": UNAVAILABLE}
    plain = (await http.get("/system/services")).json()
    assert [
        {k: v for k, v in s.items() if k != "deployment"} for s in listed.json()
    ] == plain  # the rest as is
    one = await http.get("/system/services/web", params={"include": "deployment"})
    assert one.json()["deployment"] == web
    # The same figures as the /deployment route.
    status = (await http.get("/system/services/web/deployment")).json()
    assert {k: v for k, v in status.items() if k not in ("service_name", "namespace")} == web
    # A stopped service shows as stopped (the dashboard's start button reads it).
    assert (await http.post("/system/services/web/stop")).status_code == 200
    stopped = await http.get("/system/services/web", params={"include": "deployment"})
    assert stopped.json()["deployment"]["state"] == "stopped"


async def test_a_service_whose_instances_are_missing_is_listed_unavailable(
    http: httpx.AsyncClient, exposer: LoopbackExposer
) -> None:
    exposer.running.discard("web")
    exposer.states.clear()

    async def missing(service: object) -> DeploymentState:
        raise ExposedUnavailable("service web has no deployment")

    exposer.state = missing  # type: ignore[method-assign]
    listed = await http.get("/system/services", params={"include": "deployment"})
    assert listed.status_code == 200
    summary = {s["name"]: s["deployment"] for s in listed.json()}["web"]
    assert (summary["state"], summary["resource_kind"]) == ("unavailable", "unavailable")
    assert "no deployment" in summary["reason"]
