"""What OIDC changes outside the verifier: the OpenAPI document and Swagger UI's log-in, CORS with a
wildcard, and the principal an admitted token becomes."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from oscar_manager.app import create_app
from oscar_manager.auth.authenticator import Authenticator, build_authenticator
from oscar_manager.auth.basic import BasicAuthenticator
from oscar_manager.auth.oidc import OidcIdentity, OidcVerifier
from oscar_manager.errors import Forbidden
from oscar_manager.settings import Settings

EGI = "https://aai.egi.eu/auth/realms/egi"
LAB = "https://login.lab.test/realms/lab/"


def oidc_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "oidc_enable": True,
        "oidc_issuers": [EGI, LAB],
        "oidc_groups": ["vo.example.eu"],
        "oidc_client_id": "oscar-docs",
    }
    values.update(overrides)
    return Settings(**values)


async def docs_page(settings: Settings) -> str:
    # /docs needs no start-up, so the app is driven without its lifespan.
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://oscar.test") as http:
        response = await http.get("/docs")
    assert response.status_code == 200
    return response.text


def test_openapi_offers_oidc_log_in_per_issuer() -> None:
    spec = create_app(oidc_settings()).openapi()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["BasicAuth"] == {"type": "http", "scheme": "basic"}
    assert schemes["BearerAuth"]["scheme"] == "bearer"
    assert schemes["OIDC"]["type"] == "openIdConnect"
    assert schemes["OIDC"]["openIdConnectUrl"] == f"{EGI}/.well-known/openid-configuration"
    assert (
        schemes["OIDC2"]["openIdConnectUrl"]
        == "https://login.lab.test/realms/lab/.well-known/openid-configuration"
    )
    listing = spec["paths"]["/system/services"]["get"]["security"]
    assert listing == [{"BasicAuth": []}, {"BearerAuth": []}, {"OIDC": []}, {"OIDC2": []}]
    # /job and /run take bearer tokens only (a user's, or the service's own).
    assert spec["paths"]["/job/{name}"]["post"]["security"] == [
        {"BearerAuth": []},
        {"OIDC": []},
        {"OIDC2": []},
    ]
    assert "OIDC" in spec["info"]["description"]


def test_openapi_without_oidc_is_basic_only() -> None:
    spec = create_app(Settings()).openapi()
    assert set(spec["components"]["securitySchemes"]) == {"BasicAuth"}
    assert "security" not in spec["paths"]["/run/{name}"]["post"]
    assert spec["paths"]["/system/services"]["get"]["security"] == [{"BasicAuth": []}]


def _init_oauth(page: str) -> dict[str, Any]:
    found = re.search(r"ui\.initOAuth\((\{.*?\})\)", page, re.DOTALL)
    assert found, "Swagger UI is not configured for OAuth"
    config: dict[str, Any] = json.loads(found.group(1))
    return config


@pytest.mark.asyncio
async def test_swagger_ui_logs_in_with_pkce() -> None:
    config = _init_oauth(await docs_page(oidc_settings(oidc_client_secret="never-in-a-page")))
    assert config["clientId"] == "oscar-docs"
    assert config["usePkceWithAuthorizationCodeGrant"] is True
    # EGI Check-In lists VOs in userinfo only when asked for them.
    assert config["scopes"].split() == ["openid", "profile", "email", "entitlements", "eduperson_entitlement"]
    assert "never-in-a-page" not in json.dumps(config)


@pytest.mark.asyncio
async def test_swagger_ui_scopes_without_egi() -> None:
    config = _init_oauth(await docs_page(oidc_settings(oidc_issuers=[LAB])))
    assert config["scopes"] == "openid profile email"


@pytest.mark.asyncio
async def test_swagger_ui_without_oidc_has_no_oauth() -> None:
    assert "initOAuth" not in await docs_page(Settings())


@pytest.mark.asyncio
async def test_cors_wildcard_never_allows_credentials() -> None:
    transport = httpx.ASGITransport(app=create_app(Settings(oscar_cors_origins="*")))
    async with httpx.AsyncClient(transport=transport, base_url="http://oscar.test") as http:
        response = await http.options(
            "/health", headers={"Origin": "https://any.test", "Access-Control-Request-Method": "GET"}
        )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers


class StubVerifier(OidcVerifier):
    def __init__(self, identity: OidcIdentity) -> None:
        self.identity = identity

    async def identify(self, token: str) -> OidcIdentity:
        return self.identity


def authenticator(identity: OidcIdentity) -> Authenticator:
    basic = BasicAuthenticator(username="oscar", password="pw")
    return Authenticator(basic, StubVerifier(identity), groups=["vo.a", "vo.b"], users_admin=["root@egi"])


@pytest.mark.asyncio
async def test_admitted_user_principal() -> None:
    identity = OidcIdentity(issuer=EGI, subject="root@egi", groups=("vo.x", "vo.b"), name="Root")
    principal = await authenticator(identity).authenticate("Bearer a.b.c")
    assert (principal.uid, principal.name, principal.groups) == ("root@egi", "Root", ("vo.x", "vo.b"))
    assert principal.users_admin
    assert not principal.is_admin  # USERS_ADMIN is no Basic admin: it bypasses no ownership
    other = await authenticator(OidcIdentity(EGI, "u", ("vo.a",))).authenticate("Bearer a.b.c")
    assert not other.users_admin


@pytest.mark.asyncio
async def test_no_allowed_group_is_forbidden() -> None:
    with pytest.raises(Forbidden):
        await authenticator(OidcIdentity(EGI, "u", ("vo.x",))).authenticate("Bearer a.b.c")
    # Empty OIDC_GROUPS admits nobody, as upstream.
    basic = BasicAuthenticator(username="oscar", password="pw")
    nobody = Authenticator(basic, StubVerifier(OidcIdentity(EGI, "u", ("vo.a",))))
    with pytest.raises(Forbidden):
        await nobody.authenticate("Bearer a.b.c")


@pytest.mark.asyncio
async def test_basic_goes_to_the_admin_even_with_oidc_on() -> None:
    principal = await authenticator(OidcIdentity(EGI, "u", ("vo.a",))).authenticate("Basic b3NjYXI6cHc=")
    assert principal.is_admin


def test_identity_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OIDC_ENABLE", "true")
    monkeypatch.setenv("USERS_ADMIN", "root@egi, ops@egi")
    monkeypatch.setenv("OSCAR_CORS_ORIGINS", "https://dashboard.oscar.grycap.net, http://localhost:5173,")
    monkeypatch.setenv("OSCAR_OIDC_USERINFO_TTL", "5")
    monkeypatch.setenv("OSCAR_OIDC_MAX_TOKEN_BYTES", "4096")
    settings = Settings()
    assert settings.oidc_enable
    assert settings.users_admin == ["root@egi", "ops@egi"]
    assert settings.oscar_cors_origins == ["https://dashboard.oscar.grycap.net", "http://localhost:5173"]
    assert (settings.oscar_oidc_userinfo_ttl, settings.oscar_oidc_max_token_bytes) == (5, 4096)


@pytest.mark.asyncio
async def test_build_authenticator_owns_a_bounded_client() -> None:
    assert not build_authenticator(Settings()).oidc_enabled
    built = build_authenticator(oidc_settings(oscar_oidc_timeout=3, oscar_oidc_max_token_bytes=100))
    assert built.oidc is not None
    assert built.oidc.options.max_token_bytes == 100
    assert set(built.oidc.issuers) == {EGI, LAB.rstrip("/")}
    http = built._http
    assert http is not None
    assert http.timeout.read == 3
    assert not http.follow_redirects
    await built.aclose()
    assert http.is_closed
