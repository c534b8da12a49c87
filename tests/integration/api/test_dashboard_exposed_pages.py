"""The OSCAR dashboard's exposed-service pages against the manager (grycap/oscar-dashboard, read at
bc98e6c): the Notebooks (``juno``), Flows, Terminals and File Browsers pages each fetch an FDL from the
app's repository (grycap/oscar-juno ``juno.yaml``, oscar-flows ``flows.yaml``, oscar-terminal and
oscar-filebrowser ``fdl.yml``), turn it into a service with ``yamlToServices`` (a scalar ``api_port`` or
``nodePort`` made a list, since our ``/system/info`` version is 4.1 or later), overwrite name, VO,
resources, environment, labels, ``mount`` (a bucket the user picked) or ``volume`` and POST it. A 400 there
breaks the page, so each body, as the page builds it, must be accepted.

Then each page lists services (``GET /system/services``), tells an exposed one by
``expose.api_port.length > 0`` and opens ``{endpoint}/system/services/{name}/exposed/{args}`` (Notebooks:
``?token=<JUPYTER_TOKEN>``, Terminals: ``?token=<service token>``, File Browsers: ``files/`` after a POST
to ``api/auth/renew?jwt=...``), with no credentials of the manager: the services are public at their path
unless ``set_auth``. Before that it asks ``/deployment`` and takes ``state == "ready"`` as alive, else probes
the URL (HEAD, then GET unless 503). Its "restart" in these pages is a PUT of the service as listed.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from oscar_manager.settings import Settings
from tests.support.app import NO_AUTH, app_client, give_local_backend
from tests.support.exposer import LoopbackExposer, LoopbackServer, loopback_server

pytestmark = pytest.mark.asyncio

BUCKET = "my-data"
# The hosted dashboard's origin, allowed by the operator (``OSCAR_CORS_ORIGINS``): its probes of the
# exposed URL and the File Browsers' log-in POST are cross-origin fetches.
DASHBOARD = "https://dashboard.example.org"
# What the Terminals and File Browsers forms send as the service's token (``genRandomString``); as
# upstream, a create makes a token of its own, which the pages then read from the listing.
FORM_TOKEN = "Zq3" * 40
JUPYTER_TOKEN = "Ab1" * 40


def _common(name: str, base: dict[str, Any], *, vo: str, memory: str, cpu: str) -> dict[str, Any]:
    """What every page does to the FDL's service (``yamlToServices`` then the form's overrides)."""
    body = copy.deepcopy(base)
    body.update(
        name=name,
        vo=vo,
        memory=memory,
        cpu=cpu,
        script="#!/bin/sh\nexec server\n",  # the app repository's script.sh, fetched by the page
        storage_providers={},
        clusters={},
        visibility="private",
        allowed_users=[],
        # The form's storage: the bucket the user picked (``volume: undefined`` is left out of the JSON).
        mount={**base.get("mount", {}), "path": BUCKET, "storage_provider": "minio.default"},
    )
    body.pop("volume", None)
    return body


def notebook(name: str) -> dict[str, Any]:
    fdl = {
        "name": "juno",
        "memory": "2Gi",
        "cpu": "1.0",
        "image": "ghcr.io/grycap/juno",
        "mount": {"storage_provider": "minio.default", "path": "home"},
        "expose": {
            "min_scale": 1,
            "max_scale": 2,
            "api_port": [8888],
            "cpu_threshold": 90,
            "rewrite_target": True,
        },
    }
    body = _common(name, fdl, vo="vo.example.eu", memory="2Gi", cpu="1.0")
    body["image"] = "ghcr.io/grycap/juno:latest"
    # The FDL's ``Variables`` (Go's spelling) is not read by the page: only its own variables go.
    body["environment"] = {
        "variables": {
            "JHUB_BASE_URL": f"/system/services/{name}/exposed",
            "JUPYTER_DIRECTORY": f"/mnt/{BUCKET}",
            "GRANT_SUDO": "yes",
            "OSCAR_ENDPOINT": "https://oscar.example.org",
            "JUPYTER_TOKEN": JUPYTER_TOKEN,
        },
        "secrets": {},
    }
    body["labels"] = {"jupyter_notebook": "true"}
    return body


def flow(name: str) -> dict[str, Any]:
    fdl = {
        "name": "node-red",
        "cpu": "1.0",
        "memory": "2Gi",
        "image": "ghcr.io/grycap/oscar-flows",
        "alpine": True,
        "mount": {"storage_provider": "minio.default", "path": "node-red"},
        "expose": {
            "min_scale": 1,
            "max_scale": 1,
            "api_port": [1880],
            "cpu_threshold": 90,
            "rewrite_target": True,
        },
    }
    body = _common(name, fdl, vo="vo.example.eu", memory="2Gi", cpu="1.0")
    body["environment"] = {
        "variables": {
            "NODE_RED_BASE_URL": f"/system/services/{name}/exposed",
            "NODE_RED_DIRECTORY": f"/mnt/{BUCKET}",
        },
        "secrets": {"PASSWORD": "admin-password", "SECRET": "Qx9" * 10},
    }
    body["labels"] = {"node_red": "true"}
    return body


def terminal(name: str) -> dict[str, Any]:
    fdl = {
        "name": "ghostty-web",
        "cpu": "1.0",
        "memory": "1Gi",
        "image": "ghcr.io/grycap/ghostty-web:latest",
        "log_level": "INFO",
        "mount": {"storage_provider": "minio.default", "path": "/ghostty-web"},
        "expose": {
            "min_scale": 1,
            "max_scale": 1,
            "api_port": [8080],
            "cpu_threshold": 90,
            "set_auth": False,
            "rewrite_target": True,
            "health_path": "/healthz",
        },
    }
    body = _common(name, fdl, vo="vo.example.eu", memory="1Gi", cpu="1.0")
    body["token"] = FORM_TOKEN
    body["environment"] = {
        "variables": {
            "SERVICE_NAME": name,
            "BASE_PATH": f"/system/services/{name}/exposed",
            "GHOSTTY_PORT": "8080",
            "WORKSPACE_DIR": f"/mnt/{BUCKET}",
            "OSCAR_CLUSTER_ID": "local-cluster",
            "OSCAR_CLUSTER_ENDPOINT": "http://oscar.oscar.svc.cluster.local:8080",
            "OSCAR_CLUSTER_SSL_VERIFY": "false",
        },
        # The FDL's refresh token is dropped, the user's put in when given.
        "secrets": {"OSCAR_OIDC_REFRESH_TOKEN": "a-refresh-token"},
    }
    body["labels"] = {"terminal": "true"}
    return body


def file_browser(name: str) -> dict[str, Any]:
    fdl = {
        "name": "filebrowser-quantum",
        "cpu": "0.5",
        "memory": "512Mi",
        "image": "ghcr.io/grycap/oscar-filebrowser:latest",
        "log_level": "INFO",
        "labels": {"filebrowser": "true"},
        "volume": {"name": "your-volume-name", "mount_path": "/data"},
        "expose": {
            "min_scale": 1,
            "max_scale": 1,
            "api_port": [80],  # a scalar 80 in the FDL
            "cpu_threshold": 80,
            "rewrite_target": True,
            "set_auth": False,
            "health_path": "/",
            "probe_mode": "direct",
        },
    }
    body = _common(name, fdl, vo="vo.example.eu", memory="512Mi", cpu="0.5")
    body["token"] = FORM_TOKEN
    body["environment"] = {
        "variables": {"FILEBROWSER_SOURCE_PATH": f"/mnt/{BUCKET}", "FILEBROWSER_JWT_SUB": "user"},
        "secrets": {},
    }
    body["labels"] = {"filebrowser": "true"}
    return body


# Each page's builder, and the exposed path it opens from the service as listed (``IntegratedApp``'s
# ``additionalExposedPathArgs`` or ``targetExposedPath``, its ``{{...}}`` read from that service).
PAGES: dict[str, tuple[Callable[[str], dict[str, Any]], Callable[[dict[str, Any]], str]]] = {
    "notebooks": (notebook, lambda listed: f"?token={listed['environment']['variables']['JUPYTER_TOKEN']}"),
    "flows": (flow, lambda _listed: ""),
    "terminals": (terminal, lambda listed: f"?token={listed['token']}"),
    "file-browsers": (file_browser, lambda _listed: "files/"),
}


@pytest.fixture
async def instance() -> AsyncIterator[LoopbackServer]:
    async with loopback_server() as server:
        yield server


@pytest.fixture
async def http(
    settings: Settings, instance: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    give_local_backend(monkeypatch, LoopbackExposer(instance))
    async with app_client(settings.model_copy(update={"oscar_cors_origins": [DASHBOARD]})) as client:
        made = await client.post("/system/buckets", json={"bucket_name": BUCKET})
        assert made.status_code == 201, made.text
        yield client


@pytest.mark.parametrize("page", list(PAGES))
async def test_a_page_deploys_its_service_and_opens_it(
    http: httpx.AsyncClient, instance: LoopbackServer, page: str
) -> None:
    build, opens = PAGES[page]
    name = f"{page}-abcde"[:20].rstrip("-")
    created = await http.post("/system/services", json=build(name))
    assert created.status_code == 201, created.text

    listed = {s["name"]: s for s in (await http.get("/system/services")).json()}[name]
    assert len(listed["expose"]["api_port"]) > 0  # what makes the page treat it as exposed
    # What each page filters its services by (the manager adds its own ``oscar_service``).
    assert build(name)["labels"].items() <= listed["labels"].items()
    args = opens(listed)

    status = (await http.get(f"/system/services/{name}/deployment")).json()
    assert (status["state"], status["resource_kind"]) == ("ready", "exposed_service")

    # The page's link, opened in a new tab: no manager credentials, the query passed on as it is.
    opened = await http.get(f"/system/services/{name}/exposed/{args}", auth=NO_AUTH)
    assert opened.status_code == 200, opened.text
    seen = opened.json()
    assert "authorization" not in seen["headers"]
    path, _, query = args.partition("?")
    # rewrite_target: the instance serves under its base path (JHUB_BASE_URL, NODE_RED_BASE_URL...).
    expected = f"/system/services/{name}/exposed/{path}"
    assert seen["path"] == expected + (f"?{query}" if query else "")
    # The probe when the state is not ready yet: a cross-origin HEAD without credentials, which the
    # browser hands to the page only with the origin allowed.
    alive = await http.head(f"/system/services/{name}/exposed/", auth=NO_AUTH, headers={"Origin": DASHBOARD})
    assert alive.status_code == 200
    assert alive.headers["access-control-allow-origin"] == DASHBOARD

    # The page's "restart": the service as listed, sent back.
    again = await http.put("/system/services", json=listed)
    assert again.status_code == 204, again.text


async def test_the_file_browser_login_post_reaches_the_instance(
    http: httpx.AsyncClient, instance: LoopbackServer
) -> None:
    """The File Browsers page POSTs ``api/auth/renew?jwt=...`` (cross-origin, cookies included: a simple
    request, no preflight) before opening ``files/``: the POST goes to the instance as sent, and the
    browser may read the answer (else the page falls back to a form post)."""
    created = await http.post("/system/services", json=file_browser("files-abcde"))
    assert created.status_code == 201, created.text
    renewed = await http.post(
        "/system/services/files-abcde/exposed/api/auth/renew?jwt=a.b.c",
        auth=NO_AUTH,
        headers={"Origin": DASHBOARD},
    )
    assert renewed.status_code == 200, renewed.text
    assert renewed.headers["access-control-allow-origin"] == DASHBOARD
    assert renewed.headers["access-control-allow-credentials"] == "true"
    assert renewed.json()["method"] == "POST"
    assert renewed.json()["path"] == "/system/services/files-abcde/exposed/api/auth/renew?jwt=a.b.c"
