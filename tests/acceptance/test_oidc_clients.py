"""OIDC end to end: ``oscar-manager serve`` as its own process trusting a fake issuer on loopback, driven by
oscar-python with ``oidc_token`` (as EGI users do) and by a browser-like CORS preflight."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from oscar_python.client import Client

from tests.support.components import free_port
from tests.support.oidc import ALLOWED_VO, OTHER_VO, FakeIssuer, serve_issuer
from tests.support.server import RunningServer, start_server, stop_server

pytestmark = pytest.mark.server

DASHBOARD = "https://dashboard.oscar.test"
FDL = """\
functions:
  oscar:
  - egi:
      name: mine
      cpu: 0.5
      memory: 256Mi
      image: ghcr.io/grycap/cowsay
      script: script.sh
"""


@pytest.fixture
def issuer() -> Iterator[FakeIssuer]:
    with serve_issuer() as running:
        running.add_user("alice@egi.test", ALLOWED_VO)
        running.add_user("bob@egi.test", ALLOWED_VO)
        running.add_user("eve@egi.test", OTHER_VO)
        yield running


@pytest.fixture
def oidc_server(tmp_path: Path, issuer: FakeIssuer) -> Iterator[RunningServer]:
    env = {
        "OIDC_ENABLE": "true",
        "OIDC_ISSUERS": issuer.url,
        "OIDC_GROUPS": ALLOWED_VO,
        "OSCAR_CORS_ORIGINS": DASHBOARD,
        "AUTHLIB_INSECURE_TRANSPORT": "1",  # the fake issuer is plain http on loopback
    }
    running = start_server(tmp_path, free_port(), env=env)
    try:
        yield running
    finally:
        stop_server(running)


def client_as(server: RunningServer, token: str) -> Any:
    return Client({"cluster_id": "egi", "endpoint": server.url, "oidc_token": token, "ssl": False})


def test_egi_user_with_oscar_python(oidc_server: RunningServer, issuer: FakeIssuer, tmp_path: Path) -> None:
    alice = client_as(oidc_server, issuer.token("alice@egi.test"))
    (tmp_path / "script.sh").write_text('#!/bin/sh\necho "hello $(cat "$INPUT_FILE_PATH")"\n')
    (tmp_path / "mine.yaml").write_text(FDL)
    assert alice.create_service(str(tmp_path / "mine.yaml")).status_code == 201

    service = alice.get_service("mine").json()
    assert (service["owner"], service["visibility"], service["vo"]) == (
        "alice@egi.test",
        "private",
        ALLOWED_VO,
    )
    # The sync run is authorised by the user's own token, as oscar-python sends it.
    ran = alice.run_service("mine", input="world", timeout=60)
    assert ran.status_code == 200
    assert "hello world" in ran.text

    bob = client_as(oidc_server, issuer.token("bob@egi.test"))
    assert bob.list_services().json() == []
    with pytest.raises(requests.HTTPError) as caught:
        bob.get_service("mine")
    assert caught.value.response.status_code == 403
    with pytest.raises(requests.HTTPError) as caught:
        bob.run_service("mine", input="x", timeout=60)
    assert caught.value.response.status_code == 403

    eve = client_as(oidc_server, issuer.token("eve@egi.test"))
    with pytest.raises(requests.HTTPError) as caught:
        eve.list_services().raise_for_status()
    assert caught.value.response.status_code == 403

    # The admin (Basic) still sees everything.
    admin = Client(
        {
            "cluster_id": "egi",
            "endpoint": oidc_server.url,
            "user": "oscar",
            "password": oidc_server.password(),
            "ssl": False,
        }
    )
    assert [s["name"] for s in admin.list_services().json()] == ["mine"]


def test_dashboard_preflight_and_bearer_call(oidc_server: RunningServer, issuer: FakeIssuer) -> None:
    preflight = httpx.options(
        f"{oidc_server.url}/system/services",
        headers={
            "Origin": DASHBOARD,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == DASHBOARD
    listed = httpx.get(
        f"{oidc_server.url}/system/services",
        headers={"Origin": DASHBOARD, "Authorization": f"Bearer {issuer.token('alice@egi.test')}"},
    )
    assert listed.status_code == 200
    assert listed.headers["access-control-allow-origin"] == DASHBOARD
