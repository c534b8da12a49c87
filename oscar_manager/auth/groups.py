"""Which groups (VOs) a user belongs to, read from the issuer's userinfo claims as upstream does.

- EGI Check-In (a ``/realms/egi`` issuer): entitlements ``urn:mace:egi.eu:group:<vo>[:...]`` give ``<vo>``,
  lower-cased. Check-In sends them as ``entitlements``; older deployments as ``eduperson_entitlement``.
- AI4EOSC (``/realms/ai4eosc``): the Keycloak realm roles, ``realm_access.roles``.
- Any other issuer: ``group_membership``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

EGI_GROUP_PREFIX = "urn:mace:egi.eu:group:"
EGI_ENTITLEMENT_CLAIMS = ("entitlements", "eduperson_entitlement")


def realm(issuer: str) -> str:
    """The Keycloak realm named in an issuer URL (``.../realms/<realm>``), or ``""``."""
    parts = [part for part in urlsplit(issuer).path.split("/") if part]
    for index, part in enumerate(parts[:-1]):
        if part == "realms":
            return parts[index + 1]
    return ""


def _strings(value: Any) -> list[str]:
    # Claims come from another system: a single string or stray non-strings must not break the mapping.
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def egi_groups(entitlements: Iterable[str]) -> list[str]:
    groups = []
    for entitlement in entitlements:
        urn = entitlement.strip().lower()
        if urn.startswith(EGI_GROUP_PREFIX):
            vo = urn.split(":")[4]
            if vo:
                groups.append(vo)
    return groups


def groups_from_claims(issuer: str, claims: Mapping[str, Any]) -> list[str]:
    """The user's groups, without duplicates, in the order the issuer listed them."""
    match realm(issuer):
        case "egi":
            found = egi_groups(item for name in EGI_ENTITLEMENT_CLAIMS for item in _strings(claims.get(name)))
        case "ai4eosc":
            access = claims.get("realm_access")
            found = _strings(access.get("roles")) if isinstance(access, Mapping) else []
        case _:
            found = _strings(claims.get("group_membership"))
    return list(dict.fromkeys(found))
