"""Who may see and change a service (upstream ``service_permissions.go``)."""

from __future__ import annotations

from oscar_manager.domain.principal import Principal
from oscar_manager.domain.service import Service


def can_view(principal: Principal, service: Service) -> bool:
    if principal.is_admin or service.owner == principal.uid:
        return True
    if service.visibility == "public":
        return True
    return service.visibility == "restricted" and principal.uid in service.allowed_users


def can_change(principal: Principal, service: Service) -> bool:
    return principal.is_admin or service.owner == principal.uid
