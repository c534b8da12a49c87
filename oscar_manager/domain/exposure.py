"""What an ``expose`` block means, as upstream reads it (``pkg/backends/resources/expose.go``,
``pkg/utils/auth/service_token.go``): whether a service is exposed, its checks, its auth mode, the path it
is reached at and the cookie that ``/auth`` hands out.
"""

from __future__ import annotations

from typing import Literal

from oscar_manager.domain.service import Service
from oscar_manager.errors import BadRequest

AUTH_BASIC = "basic"
AUTH_FORWARD = "forward"
AUTH_TYPES = ("", AUTH_BASIC, AUTH_FORWARD)
MAX_PORT = 65535

AuthMode = Literal["none", "basic", "forward"]


def is_exposed(service: Service) -> bool:
    """Upstream's test: a first ``api_port`` that is not 0."""
    ports = service.expose.api_port
    return bool(ports) and ports[0] != 0


def base_path(name: str) -> str:
    """Where the service is reached (``OSCAR_SERVICE_BASE_PATH`` in its instances)."""
    return f"/system/services/{name}/exposed"


def auth_mode(service: Service) -> AuthMode:
    """No check unless ``set_auth``; then ``auth_type`` (trimmed, any case, "" being basic)."""
    if not service.expose.set_auth:
        return "none"
    return "forward" if service.expose.auth_type.strip().lower() == AUTH_FORWARD else "basic"


def cookie_name(name: str) -> str:
    """The cookie ``GET /system/services/{name}/auth`` sets when given the service's token."""
    return "oscar_service_" + name.replace("-", "_") + "_auth"


def check_expose(service: Service) -> None:
    """400 for an ``expose`` block no backend could honour. Only exposed services are checked: upstream
    reads the block of no other."""
    if not is_exposed(service):
        return
    expose = service.expose
    bad_ports = [port for port in expose.api_port if not 1 <= port <= MAX_PORT]
    if bad_ports:
        raise BadRequest(f"expose.api_port must be between 1 and {MAX_PORT}, not {bad_ports[0]}")
    if expose.min_scale < 0 or expose.max_scale < 0:
        raise BadRequest("expose.min_scale and expose.max_scale cannot be negative")
    # 0 is "not given" (Go's zero value): the backend's default then applies.
    if expose.max_scale and expose.max_scale < expose.min_scale:
        raise BadRequest(
            f"expose.max_scale ({expose.max_scale}) cannot be below expose.min_scale ({expose.min_scale})"
        )
    if expose.auth_type.strip().lower() not in AUTH_TYPES:
        raise BadRequest(
            f'unsupported expose auth_type "{expose.auth_type}" (use "{AUTH_BASIC}" or "{AUTH_FORWARD}")'
        )


def check_synchronous(service: Service) -> None:
    """400 for ``synchronous`` scales no backend could honour (upstream's Knative would refuse them when
    making the service, after the 201)."""
    synchronous = service.synchronous
    if synchronous.min_scale < 0 or synchronous.max_scale < 0:
        raise BadRequest("synchronous.min_scale and synchronous.max_scale cannot be negative")
    if synchronous.max_scale and synchronous.max_scale < synchronous.min_scale:
        raise BadRequest(
            f"synchronous.max_scale ({synchronous.max_scale}) cannot be below "
            f"synchronous.min_scale ({synchronous.min_scale})"
        )


def instance_target(service: Service, raw_path: str, query: str) -> str:
    """The path and query an instance is asked for, given the path the caller asked (undecoded). As
    upstream's routes: the ``/system/services/<name>/exposed`` prefix stripped (``/`` at least), or kept
    with ``rewrite_target``."""
    prefix = base_path(service.name)
    rest = raw_path[len(prefix) :] if raw_path.startswith(prefix) else ""
    target = prefix + rest if service.expose.rewrite_target else rest or "/"
    return f"{target}?{query}" if query else target
