"""/health, /system/info, /system/config, authentication and the offline API docs."""

from __future__ import annotations

import gc
import re
import socket

import httpx
import pytest

from oscar_manager.settings import Settings
from tests.support.app import NO_AUTH, app_client
from tests.support.components import free_port
from tests.support.factories import ADMIN_PASSWORD, service_body

pytestmark = pytest.mark.asyncio

PROTECTED = [
    ("GET", "/system/info"),
    ("GET", "/system/config"),
    ("GET", "/system/config/"),
    ("GET", "/system/services"),
    ("GET", "/system/services/cowsay"),
    ("POST", "/system/services"),
    ("PUT", "/system/services"),
    ("DELETE", "/system/services/cowsay"),
]


async def test_health_is_public(settings: Settings) -> None:
    async with app_client(settings, auth=False) as anonymous:
        response = await anonymous.get("/health")
    assert response.status_code == 200
    assert response.text == "Ok"


class TestBasicAuth:
    @pytest.mark.parametrize(("method", "path"), PROTECTED)
    @pytest.mark.parametrize(
        "credentials",
        [None, ("oscar", "wrong"), ("root", ADMIN_PASSWORD), ("oscar", ""), ("", "")],
        ids=["none", "wrong-password", "wrong-user", "empty-password", "empty"],
    )
    async def test_refused_with_challenge(
        self, settings: Settings, method: str, path: str, credentials: tuple[str, str] | None
    ) -> None:
        async with app_client(settings, auth=False) as anonymous:
            response = await anonymous.request(
                method, path, auth=credentials, json=service_body() if method in ("POST", "PUT") else None
            )
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == 'Basic realm="Authorization Required"'
            # Nothing was written by the refused request.
            listed = await anonymous.get("/system/services", auth=("oscar", ADMIN_PASSWORD))
            assert listed.json() == []

    @pytest.mark.parametrize(
        "header", ["Basic", "Basic !!!notbase64", "Bearer abc", "Basic " + "b3NjYXI=", "Digest x"]
    )
    async def test_malformed_headers(self, settings: Settings, header: str) -> None:
        async with app_client(settings, auth=False) as anonymous:
            response = await anonymous.get("/system/info", headers={"Authorization": header})
        assert response.status_code == 401

    async def test_password_with_colon(self, settings: Settings) -> None:
        custom = settings.model_copy(update={"oscar_password": "pa:ss:word"})
        async with app_client(custom, auth=False) as anonymous:
            assert (await anonymous.get("/system/info", auth=("oscar", "pa:ss:word"))).status_code == 200
            assert (await anonymous.get("/system/info", auth=("oscar", "pa:ss"))).status_code == 401

    async def test_custom_username(self, settings: Settings) -> None:
        custom = settings.model_copy(update={"oscar_username": "admin"})
        async with app_client(custom, auth=False) as anonymous:
            assert (await anonymous.get("/system/info", auth=("admin", ADMIN_PASSWORD))).status_code == 200
            assert (await anonymous.get("/system/info", auth=("oscar", ADMIN_PASSWORD))).status_code == 401


async def test_what_start_up_built_is_frozen_while_serving_and_given_back_at_shutdown(
    settings: Settings,
) -> None:
    # Frozen, the collector's full collections skip it (they were pauses of hundreds of ms under load).
    assert gc.get_freeze_count() == 0
    async with app_client(settings) as http:
        assert (await http.get("/health")).status_code == 200
        assert gc.get_freeze_count() > 10_000  # the modules, models and routes at least
    assert gc.get_freeze_count() == 0


async def test_info(client: httpx.AsyncClient) -> None:
    response = await client.get("/system/info")
    assert response.status_code == 200
    info = response.json()
    assert re.fullmatch(r"v\d+\.\d+\.\d+", info["version"])
    # The dashboard enables its v4 forms only from v4.1.0 on.
    assert tuple(int(part) for part in info["version"][1:].split(".")) >= (4, 1, 0)
    assert info["git_commit"] == "0123456789ab"
    assert info["architecture"]
    assert isinstance(info["kubernetes_version"], str)
    assert "serverless_backend" not in info


async def test_info_and_readiness_show_each_event_source_state(settings: Settings) -> None:
    """Local storage: the folder watcher and the periodic reconcile that backs it up, each running."""
    async with app_client(settings) as client:
        await _states_and_readiness(client)


async def _states_and_readiness(client: httpx.AsyncClient) -> None:
    states = (await client.get("/system/info")).json()["storage"]["source_states"]
    assert states == {
        "folder-watch": {"state": "running", "last_error": ""},
        "reconciler": {"state": "running", "last_error": ""},
    }
    ready = await client.get("/health", params={"ready": "1"}, auth=NO_AUTH)
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["ready"] is True
    assert body["database"] == {"ok": True}
    assert body["storage"] == {"ok": True}
    assert body["event_sources"]["folder-watch"] == {"ok": True, "state": "running"}
    # The liveness probe stays plain.
    live = await client.get("/health", auth=NO_AUTH)
    assert live.text == "Ok"


@pytest.mark.parametrize("path", ["/system/config", "/system/config/"])
async def test_config_shape(client: httpx.AsyncClient, backend_settings: Settings, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"config", "minio_provider", "allowed_image_repositories"}
    config = body["config"]
    assert config["name"] == "oscar"
    assert config["services_namespace"] == backend_settings.oscar_services_namespace
    assert config["oidc_groups"] == []
    for flag in ("gpu_available", "interLink_available", "yunikorn_enable", "kueue_enable", "volume_enable"):
        assert config[flag] is False
    assert set(body["minio_provider"]) == {"endpoint", "verify", "access_key", "secret_key", "region"}
    assert isinstance(body["minio_provider"]["verify"], bool)
    assert body["allowed_image_repositories"] == []


async def test_config_reports_settings(settings: Settings) -> None:
    custom = settings.model_copy(
        update={
            "oidc_groups": ["vo.example.eu", "other"],
            "minio_endpoint": "http://minio:9000",
            "minio_access_key": "root",
            "minio_secret_key": "rootsecret",
            "minio_region": "eu-west-1",
        }
    )
    async with app_client(custom) as admin:
        body = (await admin.get("/system/config")).json()
    assert body["config"]["oidc_groups"] == ["vo.example.eu", "other"]
    assert body["minio_provider"] == {
        "endpoint": "http://minio:9000",
        "verify": True,
        "access_key": "root",
        "secret_key": "rootsecret",
        "region": "eu-west-1",
    }


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def test_config_points_the_admin_at_the_s3_face(settings: Settings) -> None:
    port = free_port()
    async with app_client(settings.model_copy(update={"oscar_s3_port": port})) as admin:
        provider = (await admin.get("/system/config")).json()["minio_provider"]
        async with httpx.AsyncClient() as s3:
            anonymous = await s3.get(f"http://127.0.0.1:{port}/")
        assert (anonymous.status_code, anonymous.headers["content-type"]) == (403, "application/xml")
    assert provider == {
        "endpoint": f"http://oscar.test:{port}",  # the host the caller called the manager by
        "verify": True,
        "access_key": "oscar",
        "secret_key": ADMIN_PASSWORD,
        "region": "us-east-1",
    }
    assert not _listening(port)  # stopped with the manager
    public = {"oscar_s3_port": free_port(), "oscar_s3_public_url": "https://s3.oscar.example.org/"}
    async with app_client(settings.model_copy(update=public)) as admin:
        provider = (await admin.get("/system/config")).json()["minio_provider"]
    assert provider["endpoint"] == "https://s3.oscar.example.org"


async def test_with_minio_there_is_no_s3_face(settings: Settings) -> None:
    port = free_port()
    with_minio = {
        "oscar_s3_port": port,
        "minio_endpoint": "http://minio:9000",
        "minio_access_key": "root",
        "minio_secret_key": "rootsecret",
    }
    async with app_client(settings.model_copy(update=with_minio)) as admin:
        provider = (await admin.get("/system/config")).json()["minio_provider"]
        assert not _listening(port)
    assert (provider["endpoint"], provider["access_key"]) == ("http://minio:9000", "root")


async def test_a_taken_s3_port_stops_the_start_with_the_setting_named(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match="OSCAR_S3_PORT"):
            async with app_client(settings.model_copy(update={"oscar_s3_port": port})):
                pass


class TestDocs:
    async def test_swagger_ui_served_from_local_assets(self, client: httpx.AsyncClient) -> None:
        page = await client.get("/docs")
        assert page.status_code == 200
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert assets, page.text
        for asset in assets:
            assert asset.startswith("/"), f"{asset} would be fetched from another host"
            response = await client.get(asset)
            assert response.status_code == 200, asset
            assert len(response.content) > 1000
        assert "openapi.json" in page.text

    async def test_redoc_served_from_local_assets(self, client: httpx.AsyncClient) -> None:
        page = await client.get("/redoc")
        assert page.status_code == 200
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert all(asset.startswith("/") for asset in assets), assets
        assert "fonts.googleapis" not in page.text

    async def test_oauth2_redirect_page(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/docs/oauth2-redirect")
        assert response.status_code == 200
        assert "oauth2" in response.text.lower()

    async def test_openapi_describes_the_api(self, client: httpx.AsyncClient) -> None:
        spec = (await client.get("/openapi.json")).json()
        paths = spec["paths"]
        assert set(paths["/system/services"]) == {"get", "post", "put"}
        assert set(paths["/system/services/{name}"]) == {"get", "delete"}
        assert "Service" in spec["components"]["schemas"]
        assert spec["components"]["securitySchemes"]["BasicAuth"]["scheme"] == "basic"
        assert paths["/system/services"]["post"]["security"] == [{"BasicAuth": []}]
        assert "security" not in paths["/health"]["get"]
