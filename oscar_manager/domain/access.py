"""Who may see and change a service (upstream ``service_permissions.go``)."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from oscar_manager.domain.principal import Principal
from oscar_manager.domain.service import Service
from oscar_manager.errors import BadRequest


def can_view(principal: Principal, service: Service) -> bool:
    return sees(
        principal, owner=service.owner, visibility=service.visibility, allowed_users=service.allowed_users
    )


def sees(principal: Principal, *, owner: str, visibility: str, allowed_users: Collection[str]) -> bool:
    """``can_view`` on the fields it depends on (for lists that keep only those)."""
    if principal.is_admin or owner == principal.uid:
        return True
    if visibility == "public":
        return True
    return visibility == "restricted" and principal.uid in allowed_users


def can_change(principal: Principal, service: Service) -> bool:
    return owns(principal, service.owner)


def owns(principal: Principal, owner: str) -> bool:
    """``can_change`` on the owner's uid alone."""
    return principal.is_admin or owner == principal.uid


def service_vo(principal: Principal, vo: str, *, cluster_groups: Sequence[str]) -> str:
    """The VO a user's service belongs to (upstream ``create.go``), or 400.

    A VO the user names must be one of their groups. With none named, the first group of
    ``OIDC_GROUPS`` the user belongs to is taken. The admin's choice is taken as given.
    """
    if principal.is_admin:
        return vo
    vo = vo.strip()
    if vo:
        # Upstream checks only VOs listed in OIDC_GROUPS; we check every one, so a service never claims
        # a VO its owner is not in.
        if vo not in principal.groups:
            raise BadRequest(f"user {principal.uid!r} is not enrolled in the VO {vo!r}")
        return vo
    for group in cluster_groups:
        if group in principal.groups:
            return group
    if cluster_groups:
        raise BadRequest(f"the service must be part of one of these VOs: {', '.join(cluster_groups)}")
    return ""
