"""Who may reach an exposed service through the proxy, and ``GET /system/services/{name}/auth``.

As upstream: no check unless ``set_auth`` (the service is public at its path). With ``auth_type`` basic,
what its ingress asks: Basic with the service's name and token. With ``forward``, what upstream's
``/auth`` (Traefik's forwardAuth target) admits: the admin's Basic credentials; else the service token
(a 64-character Bearer token, or ``?token=``, or the token in ``X-Forwarded-Uri``, or the cookie that
``/auth`` sets), which then sets that cookie; else an OIDC user who may see the service.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from oscar_manager.auth.authenticator import Authenticator
from oscar_manager.auth.basic import BasicAuthenticator
from oscar_manager.auth.tokens import bearer_token, is_service_token
from oscar_manager.domain.access import can_view
from oscar_manager.domain.exposure import auth_mode
from oscar_manager.domain.service import Service
from oscar_manager.errors import Forbidden, Unauthorized

# nginx's challenge for an exposed service with Basic auth (upstream's Ingress ``auth-realm``).
BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="Authentication Required"'}


@dataclass(frozen=True, slots=True)
class Presented:
    """What a request carries that may admit it."""

    authorization: str | None = None
    query_token: str | None = None  # ``?token=``
    cookie_token: str | None = None  # the service's cookie
    forwarded_uri: str | None = None  # ``X-Forwarded-Uri`` (a proxy in front asking ``/auth``)


@dataclass(frozen=True, slots=True)
class Admission:
    # The service token that admitted the request: the caller gets the cookie that carries it.
    token: str | None = None


async def admit(service: Service, authenticator: Authenticator, presented: Presented) -> Admission:
    """A request to the service's exposed path: admitted, or 401/403."""
    mode = auth_mode(service)
    if mode == "none":
        return Admission()
    if mode == "basic":
        _basic(service, presented.authorization)
        return Admission()
    return await service_auth(service, authenticator, presented)


def _basic(service: Service, authorization: str | None) -> None:
    if not service.token:
        raise Unauthorized("this service has no token to check", headers=BASIC_CHALLENGE)
    try:
        BasicAuthenticator(username=service.name, password=service.token).authenticate(authorization)
    except Unauthorized as refused:
        raise Unauthorized(
            f"{refused.message} (Basic: the service's name and its token)", headers=BASIC_CHALLENGE
        ) from None


async def service_auth(service: Service, authenticator: Authenticator, presented: Presented) -> Admission:
    """Upstream's ``/auth`` chain: the admin (Basic), the service token, or an OIDC user who may see it."""
    authorization = presented.authorization
    scheme = (authorization or "").partition(" ")[0].lower()
    if scheme == "basic":
        authenticator.basic.authenticate(authorization)
        return Admission()
    candidates = _token_candidates(presented)
    if candidates:
        for token in candidates:
            if service.token and hmac.compare_digest(token.encode(), service.token.encode()):
                return Admission(token=token)
        raise Unauthorized("invalid token for this service")
    principal = await authenticator.authenticate(authorization)
    if not can_view(principal, service):
        raise Forbidden(f"user {principal.uid!r} may not use service {service.name!r}")
    return Admission()


def _token_candidates(presented: Presented) -> list[str]:
    """Service tokens presented, as upstream gathers them: a Bearer header alone counts when there is
    one (its token if 64 characters, else none: an OIDC token); otherwise ``?token=``, then the token in
    ``X-Forwarded-Uri``, then the cookie."""
    token = bearer_token(presented.authorization)
    if token is not None:
        return [token] if is_service_token(token) else []
    found = [
        (presented.query_token or "").strip(),
        _forwarded_token(presented.forwarded_uri),
        (presented.cookie_token or "").strip(),
    ]
    return [token for token in found if is_service_token(token)]


def _forwarded_token(uri: str | None) -> str:
    if not uri or not uri.strip():
        return ""
    try:
        values = parse_qs(urlsplit(uri.strip()).query).get("token", [""])
    except ValueError:
        return ""
    return values[0].strip()
