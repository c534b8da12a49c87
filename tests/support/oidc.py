"""A fake OIDC issuer: discovery, key set and userinfo answered through respx, tokens signed with authlib's
joserfc using RSA keys made once per test session."""

from __future__ import annotations

import base64
import functools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import respx
from joserfc import jwt
from joserfc.jwk import RSAKey

from oscar_manager.settings import Settings

EGI_ISSUER = "https://aai.egi.test/auth/realms/egi"
OTHER_ISSUER = "https://login.other.test/realms/lab"
ALLOWED_VO = "vo.example.eu"
OTHER_VO = "vo.other.eu"


@functools.cache
def rsa_key(kid: str) -> RSAKey:
    """RSA key generation takes tens of milliseconds: each kid is made once per session."""
    return RSAKey.generate_key(2048, parameters={"kid": kid})


def entitlement(vo: str) -> str:
    return f"urn:mace:egi.eu:group:{vo}:role=member#aai.egi.test"


def sign(claims: dict[str, Any], key: RSAKey, *, alg: str = "RS256", kid: str | None = None) -> str:
    header: dict[str, Any] = {"alg": alg, "kid": kid if kid is not None else key.kid}
    return jwt.encode(header, claims, key, algorithms=[alg])


@dataclass
class FakeIssuer:
    """One issuer. ``users`` maps a subject to the extra claims its userinfo answers with."""

    url: str
    router: respx.MockRouter | None
    keys: list[RSAKey] = field(default_factory=lambda: [rsa_key("key-1")])
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    discovery_issuer: str | None = None

    def __post_init__(self) -> None:
        if self.router is None:
            return  # answered by serve_issuer() on loopback instead
        self.discovery = self.router.get(f"{self.url}/.well-known/openid-configuration").mock(
            side_effect=self._discovery
        )
        self.jwks = self.router.get(f"{self.url}/keys").mock(side_effect=self._jwks)
        self.userinfo = self.router.get(f"{self.url}/userinfo").mock(side_effect=self._userinfo)

    def answer(self, request: httpx.Request) -> httpx.Response:
        """The issuer's answer to any request (for a real HTTP server in front of it)."""
        path = request.url.path.removeprefix(httpx.URL(self.url).path)
        handler = {
            "/.well-known/openid-configuration": self._discovery,
            "/keys": self._jwks,
            "/userinfo": self._userinfo,
        }.get(path)
        return handler(request) if handler else httpx.Response(404)

    def _discovery(self, _request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            json={
                "issuer": self.discovery_issuer or self.url,
                "authorization_endpoint": f"{self.url}/auth",
                "token_endpoint": f"{self.url}/token",
                "jwks_uri": f"{self.url}/keys",
                "userinfo_endpoint": f"{self.url}/userinfo",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
            },
        )

    def _jwks(self, _request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"keys": [key.as_dict(private=False) for key in self.keys]})

    def _userinfo(self, request: httpx.Request) -> httpx.Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        try:
            payload = token.split(".")[1]
            subject = json.loads(_b64decode(payload))["sub"]
        except (IndexError, KeyError, ValueError):
            return httpx.Response(401)
        if scheme != "Bearer" or subject not in self.users:
            return httpx.Response(401)
        return httpx.Response(200, json={"sub": subject, **self.users[subject]})

    def add_user(self, subject: str, *groups: str, name: str = "") -> None:
        """A user of this issuer in the given groups, expressed the way this issuer lists them."""
        claims: dict[str, Any] = {"name": name or subject.title()}
        if "/realms/egi" in self.url:
            claims["entitlements"] = [entitlement(group) for group in groups]
        else:
            claims["group_membership"] = list(groups)
        self.users[subject] = claims

    def token(
        self,
        subject: str,
        *,
        lifetime: int = 600,
        key: RSAKey | None = None,
        alg: str = "RS256",
        kid: str | None = None,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        body: dict[str, Any] = {"iss": self.url, "sub": subject, "iat": now, "exp": now + lifetime}
        body.update(claims)
        return sign({k: v for k, v in body.items() if v is not None}, key or self.keys[0], alg=alg, kid=kid)


def _b64decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def unsigned(claims: dict[str, Any], header: dict[str, Any]) -> str:
    """A token with any header (``alg: none``) and no signature: what an attacker can always make."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part(header)}.{part(claims)}."


@contextmanager
def serve_issuer(realm: str = "egi") -> Iterator[FakeIssuer]:
    """A fake issuer over real HTTP on loopback, for a manager running as its own process (which then
    needs ``AUTHLIB_INSECURE_TRANSPORT=1``: the issuer is plain http)."""
    holder: list[FakeIssuer] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            request = httpx.Request(
                "GET", holder[0].url.split("/realms")[0] + self.path, headers=dict(self.headers)
            )
            response = holder[0].answer(request)
            self.send_response(response.status_code)
            for name, value in response.headers.items():
                if name.lower() not in ("content-length", "transfer-encoding"):
                    self.send_header(name, value)
            self.send_header("Access-Control-Allow-Origin", "*")  # a browser on /docs reads discovery too
            self.send_header("Content-Length", str(len(response.content)))
            self.end_headers()
            self.wfile.write(response.content)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder.append(FakeIssuer(f"http://127.0.0.1:{server.server_port}/realms/{realm}", None))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def egi_issuer(*users: str) -> Iterator[FakeIssuer]:
    """The fake EGI issuer, its HTTP answered in-process (respx), ``users`` members of ``ALLOWED_VO``."""
    with respx.mock(assert_all_called=False) as router:
        issuer = FakeIssuer(EGI_ISSUER, router)
        for user in users:
            issuer.add_user(user, ALLOWED_VO)
        yield issuer


def with_egi(settings: Settings) -> Settings:
    """``settings`` with OIDC on, trusting the fake EGI issuer and admitting ``ALLOWED_VO``."""
    return settings.model_copy(
        update={"oidc_enable": True, "oidc_issuers": [EGI_ISSUER], "oidc_groups": [ALLOWED_VO]}
    )
