"""Exposed services above the backends (issue 18): the calls made to the backend's ``Exposer`` as services
change, validation, the stopped flag across a restart, ``/deployment`` and the lifecycle routes, the
auth modes and ``/auth``, and the proxy's errors. The exposer is the test's (``tests.support.exposer``),
its instance a real loopback server; streaming and websockets are in ``test_exposed_streams``."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from oscar_manager.backends.exposed import DeploymentState, Endpoint
from oscar_manager.settings import Settings
from tests.support.app import NO_AUTH, app_client, bearer, give_local_backend, running_app
from tests.support.components import free_port
from tests.support.exposer import LoopbackExposer, LoopbackServer, loopback_server
from tests.support.factories import service_body


@pytest.fixture
async def instance() -> AsyncIterator[LoopbackServer]:
    async with loopback_server() as server:
        yield server


@pytest.fixture
def exposer(instance: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> LoopbackExposer:
    found = LoopbackExposer(instance)
    give_local_backend(monkeypatch, found)
    return found


@pytest.fixture
async def http(settings: Settings, exposer: LoopbackExposer) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(settings) as client:
        yield client


async def create(http: httpx.AsyncClient, name: str, **expose: Any) -> str:
    """An exposed service (``api_port`` 8080 unless given); its token."""
    created = await http.post(
        "/system/services", json=service_body(name, expose={"api_port": 8080, **expose})
    )
    assert created.status_code == 201, created.text
    token: str = (await http.get(f"/system/services/{name}")).json()["token"]
    return token


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# --- service changes ------------------------------------------------------------------------------


async def test_an_exposed_service_is_exposed_on_create_updated_and_unexposed_on_delete(
    http: httpx.AsyncClient, exposer: LoopbackExposer
) -> None:
    await create(http, "web")
    plain = await http.post("/system/services", json=service_body("plain"))
    assert plain.status_code == 201
    assert exposer.calls == [("expose", "web")]

    changed = await http.put("/system/services", json=service_body("web", expose={"api_port": 9090}))
    assert changed.status_code == 204, changed.text
    assert exposer.calls[-1] == ("update", "web")

    # A service that becomes exposed is exposed as new (the exposer had no previous version of it).
    made = await http.put("/system/services", json=service_body("plain", expose={"api_port": 8000}))
    assert made.status_code == 204
    assert exposer.calls[-1] == ("expose", "plain")
    unmade = await http.put("/system/services", json=service_body("plain"))
    assert unmade.status_code == 204
    assert exposer.calls[-1] == ("unexpose", "plain")

    assert (await http.delete("/system/services/web")).status_code == 204
    assert exposer.calls[-1] == ("unexpose", "web")


@pytest.mark.parametrize(
    ("expose", "words"),
    [
        ({"api_port": 8080, "min_scale": 3, "max_scale": 2}, "max_scale (2) cannot be below"),
        ({"api_port": 70000}, "between 1 and 65535"),
        ({"api_port": [8080, -1]}, "between 1 and 65535"),
        ({"api_port": 8080, "min_scale": -1}, "cannot be negative"),
        (
            {"api_port": 8080, "set_auth": True, "auth_type": "digest"},
            'unsupported expose auth_type "digest"',
        ),
    ],
)
async def test_an_expose_block_no_backend_could_honour_is_refused_and_nothing_is_written(
    http: httpx.AsyncClient, exposer: LoopbackExposer, expose: dict[str, Any], words: str
) -> None:
    refused = await http.post("/system/services", json=service_body("bad", expose=expose))
    assert refused.status_code == 400, refused.text
    assert words in refused.text
    assert (await http.get("/system/services/bad")).status_code == 404
    await create(http, "good")
    refused = await http.put("/system/services", json=service_body("good", expose=expose))
    assert refused.status_code == 400
    assert words in refused.text
    assert exposer.calls == [("expose", "good")]


@pytest.mark.parametrize(
    ("synchronous", "words"),
    [
        (
            {"min_scale": 3, "max_scale": 1},
            "synchronous.max_scale (1) cannot be below synchronous.min_scale (3)",
        ),
        ({"min_scale": -1}, "cannot be negative"),
    ],
)
async def test_synchronous_scales_no_backend_could_honour_are_refused(
    http: httpx.AsyncClient, synchronous: dict[str, Any], words: str
) -> None:
    refused = await http.post("/system/services", json=service_body("bad", synchronous=synchronous))
    assert refused.status_code == 400, refused.text
    assert words in refused.text
    assert (await http.get("/system/services/bad")).status_code == 404
    accepted = service_body("fine", synchronous={"min_scale": 1, "max_scale": 0})  # 0: not given
    assert (await http.post("/system/services", json=accepted)).status_code == 201


async def test_what_upstream_accepts_is_accepted(http: httpx.AsyncClient, exposer: LoopbackExposer) -> None:
    # max_scale not given (0) below min_scale, auth types in any case, and no check of a block whose
    # api_port is unset (upstream reads it only then).
    await create(http, "a", min_scale=3)
    await create(http, "b", set_auth=True, auth_type=" Forward ")
    plain = await http.post("/system/services", json=service_body("c", expose={"auth_type": "digest"}))
    assert plain.status_code == 201
    assert exposer.calls == [("expose", "a"), ("expose", "b")]


async def test_a_backend_without_exposed_services_refuses_an_exposed_one(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    give_local_backend(monkeypatch, None)
    async with app_client(settings) as http:
        refused = await http.post("/system/services", json=service_body("web", expose={"api_port": 80}))
        assert refused.status_code == 400
        assert "runs no exposed services" in refused.text
        assert (await http.get("/system/services/web")).status_code == 404


async def test_a_failed_expose_fails_the_whole_document_and_removes_what_was_exposed(
    http: httpx.AsyncClient, exposer: LoopbackExposer
) -> None:
    exposer.fail_expose.add("second")
    document = {
        "functions": {
            "oscar": [
                {"c": service_body("first", expose={"api_port": 80})},
                {"c": service_body("second", expose={"api_port": 80})},
            ]
        }
    }
    failed = await http.post("/system/services", content=json.dumps(document))
    assert failed.status_code == 500
    assert (await http.get("/system/services/first")).status_code == 404
    assert exposer.calls == [("expose", "first"), ("expose", "second"), ("unexpose", "first")]
    assert exposer.running == set()


# --- the proxy -------------------------------------------------------------------------------------


async def test_requests_reach_the_instance_without_the_prefix_with_forwarding_headers(
    http: httpx.AsyncClient, exposer: LoopbackExposer
) -> None:
    await create(http, "web")
    answer = await http.get(
        "/system/services/web/exposed/some/a%2Fb?x=1&y=%20",
        auth=NO_AUTH,
        headers={"Connection": "keep-alive, X-Hop", "X-Hop": "dropped", "X-Kept": "kept"},
    )
    assert answer.status_code == 200, answer.text
    seen = answer.json()
    assert seen["path"] == "/some/a%2Fb?x=1&y=%20"
    headers = seen["headers"]
    assert headers["host"] == "oscar.test"
    assert headers["x-forwarded-host"] == "oscar.test"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-kept"] == "kept"
    assert "x-hop" not in headers
    assert answer.headers["x-instance"] == "loopback"
    assert answer.headers["set-cookie"] == "app=1; Path=/"

    root = await http.get("/system/services/web/exposed", auth=NO_AUTH)
    assert root.json()["path"] == "/"
    posted = await http.post("/system/services/web/exposed/", content=b"x" * 1000, auth=NO_AUTH)
    assert posted.json() | {"headers": None} == {
        "method": "POST",
        "path": "/",
        "headers": None,
        "body_bytes": 1000,
    }
    head = await http.head("/system/services/web/exposed/h", auth=NO_AUTH)
    assert (head.status_code, head.content) == (200, b"")
    deleted = await http.delete("/system/services/web/exposed/d", auth=NO_AUTH)
    assert deleted.json()["method"] == "DELETE"


async def test_the_managers_own_credentials_never_reach_an_instance(
    http: httpx.AsyncClient, exposer: LoopbackExposer
) -> None:
    """A browser sends the admin's cached Basic credentials with every request below the manager's paths:
    an instance (a stranger's script) must not get them, right or wrong; its own schemes pass."""
    await create(http, "web")
    as_admin = await http.get("/system/services/web/exposed/x")  # the client's auth: the admin's Basic
    assert as_admin.status_code == 200
    assert "authorization" not in as_admin.json()["headers"]
    wrong = await http.get("/system/services/web/exposed/x", auth=NO_AUTH, headers=basic("oscar", "guess"))
    assert "authorization" not in wrong.json()["headers"]
    for own in ("Bearer the-apps-own-key", "Token abc"):
        passed = await http.get(
            "/system/services/web/exposed/x", auth=NO_AUTH, headers={"Authorization": own}
        )
        assert passed.json()["headers"]["authorization"] == own


async def test_rewrite_target_keeps_the_prefix(http: httpx.AsyncClient, exposer: LoopbackExposer) -> None:
    await create(http, "kept", rewrite_target=True)
    answer = await http.get("/system/services/kept/exposed/p?q=1", auth=NO_AUTH)
    assert answer.json()["path"] == "/system/services/kept/exposed/p?q=1"


async def test_an_instance_behind_a_unix_socket(
    http: httpx.AsyncClient, exposer: LoopbackExposer, instance: LoopbackServer
) -> None:
    await create(http, "sock")
    exposer.endpoints["sock"] = Endpoint("http://instance", unix_socket=instance.unix_socket)
    answer = await http.get("/system/services/sock/exposed/via-socket", auth=NO_AUTH)
    assert answer.status_code == 200
    assert answer.json()["path"] == "/via-socket"


async def test_errors_of_the_proxy(http: httpx.AsyncClient, exposer: LoopbackExposer) -> None:
    await create(http, "web")
    plain = await http.post("/system/services", json=service_body("plain"))
    assert plain.status_code == 201

    exposer.endpoints["web"] = Endpoint(f"http://127.0.0.1:{free_port()}")
    unreachable = await http.get("/system/services/web/exposed/", auth=NO_AUTH)
    assert unreachable.status_code == 502
    assert "most likely the port its server listens on does not match expose.api_port" in unreachable.text
    assert "port 8080" in unreachable.text

    exposer.running.discard("web")
    down = await http.get("/system/services/web/exposed/", auth=NO_AUTH)
    assert down.status_code == 503
    assert "no instance of web is up" in down.text

    missing = await http.get("/system/services/nothing/exposed/", auth=NO_AUTH)
    assert missing.status_code == 404
    not_exposed = await http.get("/system/services/plain/exposed/", auth=NO_AUTH)
    assert not_exposed.status_code == 404
    assert "is not exposed" in not_exposed.text


# --- auth --------------------------------------------------------------------------------------------


async def test_basic_auth_takes_the_service_name_and_token(
    http: httpx.AsyncClient, exposer: LoopbackExposer
) -> None:
    token = await create(http, "locked", set_auth=True)
    path = "/system/services/locked/exposed/x"
    none = await http.get(path, auth=NO_AUTH)
    assert none.status_code == 401
    assert none.headers["www-authenticate"] == 'Basic realm="Authentication Required"'
    assert (await http.get(path, auth=NO_AUTH, headers=basic("locked", "wrong"))).status_code == 401
    # The admin is no user of the service's own Basic auth (its ingress knows only the service's pair).
    assert (await http.get(path)).status_code == 401
    admitted = await http.get(path, auth=NO_AUTH, headers=basic("locked", token))
    assert admitted.status_code == 200
    assert admitted.json()["headers"]["authorization"] == basic("locked", token)["Authorization"]
    # Without set_auth: public, as upstream.
    await create(http, "open", auth_type="basic")
    assert (await http.get("/system/services/open/exposed/", auth=NO_AUTH)).status_code == 200


async def test_forward_auth_admits_the_token_and_then_its_cookie(
    http: httpx.AsyncClient, exposer: LoopbackExposer
) -> None:
    token = await create(http, "my-nb", set_auth=True, auth_type="forward")
    path = "/system/services/my-nb/exposed/tree"
    assert (await http.get(path, auth=NO_AUTH)).status_code == 401
    assert (await http.get(path, auth=NO_AUTH, params={"token": "f" * 64})).status_code == 401
    assert (await http.get(path, auth=NO_AUTH, headers=bearer("f" * 64))).status_code == 401

    first = await http.get(path, auth=NO_AUTH, params={"token": token})
    assert first.status_code == 200
    cookies = first.headers.get_list("set-cookie")
    assert "app=1; Path=/" in cookies
    assert (
        f"oscar_service_my_nb_auth={token}; Path=/system/services/my-nb/exposed; HttpOnly; SameSite=Lax"
        in cookies
    )
    by_cookie = await http.get(path, auth=NO_AUTH, headers={"Cookie": f"oscar_service_my_nb_auth={token}"})
    assert by_cookie.status_code == 200
    assert (await http.get(path, auth=NO_AUTH, headers=bearer(token))).status_code == 200
    assert (await http.get(path)).status_code == 200  # the admin
    behind_https = await http.get(
        path, auth=NO_AUTH, params={"token": token}, headers={"X-Forwarded-Proto": "https"}
    )
    assert any("; Secure" in cookie for cookie in behind_https.headers.get_list("set-cookie"))


async def test_the_auth_route(http: httpx.AsyncClient, exposer: LoopbackExposer) -> None:
    token = await create(http, "svc")
    cookie = f"oscar_service_svc_auth={token}; Path=/system/services/svc/exposed; HttpOnly; SameSite=Lax"
    by_bearer = await http.get("/system/services/svc/auth", auth=NO_AUTH, headers=bearer(token))
    assert (by_bearer.status_code, by_bearer.content) == (200, b"")
    assert by_bearer.headers["set-cookie"] == cookie
    by_query = await http.get("/system/services/svc/auth", auth=NO_AUTH, params={"token": token})
    assert by_query.headers["set-cookie"] == cookie
    forwarded = await http.get(
        "/system/services/svc/auth", auth=NO_AUTH, headers={"X-Forwarded-Uri": f"/x?token={token}"}
    )
    assert forwarded.headers["set-cookie"] == cookie
    admin = await http.get("/system/services/svc/auth")
    assert admin.status_code == 200
    assert "set-cookie" not in admin.headers
    assert (await http.get("/system/services/svc/auth", auth=NO_AUTH)).status_code == 401
    wrong = await http.get("/system/services/svc/auth", auth=NO_AUTH, headers=bearer("0" * 64))
    assert wrong.status_code == 401
    missing = await http.get("/system/services/nope/auth", auth=NO_AUTH, headers=bearer(token))
    assert missing.status_code == 404


# --- deployment and lifecycle --------------------------------------------------------------------


async def test_deployment_status_and_logs_come_from_the_exposer(
    http: httpx.AsyncClient, exposer: LoopbackExposer, settings: Settings
) -> None:
    await create(http, "web")
    moment = datetime(2026, 12, 1, 10, 20, 30, 123456, tzinfo=UTC)
    exposer.states["web"] = DeploymentState(
        state="degraded",
        reason="1 of 2 instances are affected.",
        active_instances=1,
        affected_instances=1,
        last_transition_time=moment,
    )
    status = await http.get("/system/services/web/deployment")
    assert status.json() == {
        "service_name": "web",
        "namespace": settings.oscar_services_namespace,
        "state": "degraded",
        "reason": "1 of 2 instances are affected.",
        "last_transition_time": "2026-12-01T10:20:30Z",
        "active_instances": 1,
        "affected_instances": 1,
        "resource_kind": "exposed_service",
    }

    empty = await http.get("/system/services/web/deployment/logs")
    assert empty.json() == {
        "service_name": "web",
        "available": False,
        "message": "Deployment logs are not yet available.",
        "entries": [],
    }
    exposer.log_lines["web"] = [
        ("2026-12-01T10:00:00.123456789Z", "  starting  "),
        ("2026-12-01T10:00:01Z", ""),
        ("2026-12-01T11:00:02.5+01:00", "listening"),
        ("2026-12-01T10:00:03Z", "GET /"),
    ]
    logs = await http.get(
        "/system/services/web/deployment/logs", params={"timestamps": "true", "tailLines": 2}
    )
    assert logs.json() == {
        "service_name": "web",
        "available": True,
        "entries": [
            {"timestamp": "2026-12-01T10:00:02Z", "message": "listening"},
            {"timestamp": "2026-12-01T10:00:03Z", "message": "GET /"},
        ],
    }
    plain = await http.get("/system/services/web/deployment/logs")
    assert [entry for entry in plain.json()["entries"]] == [
        {"message": "starting"},
        {"message": "listening"},
        {"message": "GET /"},
    ]


async def test_stop_start_restart(
    http: httpx.AsyncClient, exposer: LoopbackExposer, settings: Settings
) -> None:
    await create(http, "web")
    plain = await http.post("/system/services", json=service_body("plain"))
    assert plain.status_code == 201

    stopped = await http.post("/system/services/web/stop")
    assert stopped.status_code == 200, stopped.text
    assert stopped.json() == {
        "service_name": "web",
        "namespace": settings.oscar_services_namespace,
        "state": "stopped",
        "reason": "Deployment is stopped.",
        "active_instances": 0,
        "affected_instances": 0,
        "resource_kind": "exposed_service",
    }
    assert (await http.get("/system/services/web/deployment")).json()["state"] == "stopped"
    refused = await http.get("/system/services/web/exposed/", auth=NO_AUTH)
    assert refused.status_code == 503
    assert "service 'web' is stopped: POST /system/services/web/start runs it again" in refused.text
    logs = await http.get("/system/services/web/deployment/logs")
    assert logs.json()["message"] == "Deployment logs are unavailable for this service."

    # A restart leaves a stopped service stopped; an update keeps it stopped and touches no instance.
    assert (await http.post("/system/services/web/restart")).json()["state"] == "stopped"
    changed = await http.put("/system/services", json=service_body("web", expose={"api_port": 9000}))
    assert changed.status_code == 204
    assert exposer.calls == [("expose", "web"), ("stop", "web")]

    started = await http.post("/system/services/web/start")
    assert started.status_code == 200
    assert started.json()["state"] == "ready"
    assert exposer.calls[-2:] == [("expose", "web"), ("start", "web")]
    assert (await http.get("/system/services/web/exposed/", auth=NO_AUTH)).status_code == 200
    assert (await http.post("/system/services/web/start")).status_code == 200
    assert exposer.calls[-1] == ("start", "web")  # running: start only (the exposer does nothing)
    assert (await http.post("/system/services/web/restart")).json()["state"] == "ready"
    assert exposer.calls[-1] == ("restart", "web")

    for action in ("stop", "start", "restart"):
        answer = await http.post(f"/system/services/plain/{action}")
        assert answer.status_code == 400
        assert answer.text == 'service "plain" is not exposed'
    assert (await http.post("/system/services/nothing/stop")).status_code == 404


async def test_a_stopped_service_stays_stopped_when_the_manager_starts_again(
    settings: Settings, instance: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = LoopbackExposer(instance)
    give_local_backend(monkeypatch, before)
    async with app_client(settings) as http:
        await create(http, "kept-running")
        await create(http, "kept-stopped")
        assert (await http.post("/system/services/kept-stopped/stop")).status_code == 200

    after = LoopbackExposer(instance)
    give_local_backend(monkeypatch, after)
    async with running_app(settings) as (app, http):
        assert (await http.get("/system/services/kept-stopped/deployment")).json()["state"] == "stopped"
        for _ in range(500):
            if after.calls:
                break
            await _tick()
        assert after.calls == [("expose", "kept-running")]
        answer = await http.get("/system/services/kept-running/exposed/", auth=NO_AUTH)
        assert answer.status_code == 200
        assert (await http.get("/system/services/kept-stopped/exposed/", auth=NO_AUTH)).status_code == 503
        assert (await http.post("/system/services/kept-stopped/start")).json()["state"] == "ready"
        assert after.calls[-2:] == [("expose", "kept-stopped"), ("start", "kept-stopped")]


async def _tick() -> None:
    import asyncio

    await asyncio.sleep(0.01)
