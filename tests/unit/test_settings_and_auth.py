from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import httpx
import pytest

from oscar_manager.auth.authenticator import Authenticator
from oscar_manager.auth.basic import BasicAuthenticator
from oscar_manager.auth.oidc import OidcVerifier
from oscar_manager.auth.tokens import jwt_issuer
from oscar_manager.errors import Unauthorized
from oscar_manager.settings import BackendKind, Settings


def test_defaults_need_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.oscar_username == "oscar"
    assert settings.oscar_backend is BackendKind.LOCAL
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'oscar-data' / 'oscar.db'}"
    assert settings.oscar_service_port == 8080
    assert settings.ttl_job == 2_592_000
    assert settings.job_listing_limit == 70


def test_upstream_variable_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OSCAR_USERNAME", "admin")
    monkeypatch.setenv("OSCAR_SERVICE_PORT", "9090")
    monkeypatch.setenv("MINIO_ENDPOINT", "http://minio:9000")
    monkeypatch.setenv("MINIO_TLS_VERIFY", "false")
    monkeypatch.setenv("OIDC_ISSUERS", "https://aai.egi.eu/auth/realms/egi, https://other/ ,")
    monkeypatch.setenv("OIDC_GROUPS", "vo.a,vo.b")
    monkeypatch.setenv("TTL_JOB", "60")
    monkeypatch.setenv("OSCAR_DATABASE_URL", "postgresql+asyncpg://u@h/db")
    monkeypatch.setenv("OSCAR_BACKEND", "kubernetes")
    settings = Settings()
    assert settings.oscar_username == "admin"
    assert settings.oscar_service_port == 9090
    assert settings.minio_tls_verify is False
    assert settings.oidc_issuers == ["https://aai.egi.eu/auth/realms/egi", "https://other/"]
    assert settings.oidc_groups == ["vo.a", "vo.b"]
    assert settings.ttl_job == 60
    assert settings.database_url == "postgresql+asyncpg://u@h/db"
    assert settings.oscar_backend is BackendKind.KUBERNETES


def test_invalid_values_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OSCAR_SERVICE_PORT", "0")
    with pytest.raises(ValueError, match="oscar_service_port"):
        Settings()


def test_generated_password_is_kept_private_and_stable(tmp_path: Path) -> None:
    settings = Settings(oscar_data_dir=tmp_path / "data")
    first = settings.with_admin_password()
    second = Settings(oscar_data_dir=tmp_path / "data").with_admin_password()
    assert len(first.oscar_password) >= 20
    assert first.oscar_password == second.oscar_password
    assert stat.S_IMODE(settings.password_file.stat().st_mode) == 0o600


def test_given_password_is_not_written(tmp_path: Path) -> None:
    settings = Settings(oscar_data_dir=tmp_path, oscar_password="chosen").with_admin_password()
    assert settings.oscar_password == "chosen"
    assert not settings.password_file.exists()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_authenticator() -> None:
    auth = BasicAuthenticator(username="oscar", password="pw")
    principal = auth.authenticate(basic("oscar", "pw"))
    assert principal.is_admin
    assert principal.uid == "cluster_admin"
    for header in (
        None,
        "",
        basic("oscar", "pW"),
        basic("Oscar", "pw"),
        "Basic",
        "Basic ===",
        basic("oscarpw", ""),
    ):
        with pytest.raises(Unauthorized) as caught:
            auth.authenticate(header)
        assert caught.value.headers["WWW-Authenticate"].startswith("Basic")


def test_the_presign_key_is_hex_of_at_least_32_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OSCAR_PRESIGN_KEY", "ab" * 32)
    assert Settings().oscar_presign_key == "ab" * 32
    for bad, reason in (("ab" * 31, "at least 32 bytes"), ("zz" * 32, "hexadecimal")):
        monkeypatch.setenv("OSCAR_PRESIGN_KEY", bad)
        with pytest.raises(ValueError, match=reason):
            Settings()


def _jwt(claims: dict[str, object]) -> str:
    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


async def test_own_credentials_are_the_admins_basic_and_trusted_issuers_jwts() -> None:
    """What the exposed services' proxy withholds from instances (``Authenticator.own_credentials``)."""
    basic = BasicAuthenticator(username="oscar", password="secret")
    async with httpx.AsyncClient() as http:
        trusting = Authenticator(basic, OidcVerifier(["https://aai.example/oidc/"], http=http))
        plain = Authenticator(basic)

        def header(user: str, password: str) -> str:
            return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

        for authenticator in (trusting, plain):
            assert authenticator.own_credentials(header("oscar", "secret"))
            assert authenticator.own_credentials(header("oscar", "wrong"))  # a guess is still the admin's
            assert not authenticator.own_credentials(header("someone", "secret"))
            assert not authenticator.own_credentials("Basic %%%")
            assert not authenticator.own_credentials(None)
            assert not authenticator.own_credentials("Bearer an-apps-own-key")
        ours = "Bearer " + _jwt({"iss": "https://aai.example/oidc", "sub": "u"})
        theirs = "Bearer " + _jwt({"iss": "https://elsewhere.example", "sub": "u"})
        assert trusting.own_credentials(ours)
        assert not trusting.own_credentials(theirs)
        assert not plain.own_credentials(ours)  # OIDC off: no JWT is this manager's
        assert jwt_issuer("a.b") is None
        assert jwt_issuer("a.!!!.c") is None
