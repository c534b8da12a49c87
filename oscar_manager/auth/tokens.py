"""Per-service tokens: the 64-hex ``token`` of a service admits callers of ``/job`` and ``/run``."""

from __future__ import annotations

import base64
import binascii
import hmac
import json

SERVICE_TOKEN_LENGTH = 64
BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="OSCAR service"'}


def bearer_token(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def jwt_issuer(token: str) -> str | None:
    """The ``iss`` a JWT claims, unverified, without its trailing slash (as the verifier keys issuers);
    None for anything else. For telling whose credentials a header carries, never for admitting."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return issuer.rstrip("/") if isinstance(issuer, str) else None


def is_service_token(token: str) -> bool:
    """Service tokens are 64 characters (32 random bytes in hex), as upstream tells them from JWTs."""
    return len(token) == SERVICE_TOKEN_LENGTH


def token_matches(expected: str, presented: str) -> bool:
    # An empty expected token must never match (a service without a token admits nobody this way).
    return bool(expected) and hmac.compare_digest(expected.encode(), presented.encode())
