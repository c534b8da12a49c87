"""Exposed services (issue 18): what every backend offers for a service with ``expose.api_port`` set.

Such a service is not run per event: its image's server (its script, or the image's own command with
``expose.default_command``) is kept running between ``min_scale`` and ``max_scale`` instances, listening
on ``api_port``, and the manager proxies ``/system/services/{name}/exposed/...`` to one of them
(``api.routes.exposed``). Each backend has an :class:`Exposer`: Kubernetes a Deployment, a Service and an
HPA (``backends.exposed_kube``), the local backend sandboxed long-lived processes
(``backends.exposed_local``). The proxy and the deployment routes only know this protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from oscar_manager.domain.service import Service
from oscar_manager.errors import OscarError

# Upstream's ``ServiceDeploymentStatus.state`` values for an exposed service.
DeploymentStateName = Literal["pending", "ready", "degraded", "failed", "stopped"]


class ExposedUnavailable(OscarError):
    """No instance can take a request now: the service is stopped, or none is up yet (503, said why)."""

    status_code = 503


class ExposedUnreachable(OscarError):
    """An instance was picked but its port did not answer: most likely ``api_port`` is not the port its
    server listens on (502, as upstream's proxy says)."""

    status_code = 502


@dataclass(frozen=True, slots=True)
class DeploymentState:
    """As upstream's ``ServiceDeploymentStatus`` shows it (``resource_kind`` ``exposed_service``)."""

    state: DeploymentStateName
    reason: str
    active_instances: int  # instances up and ready
    affected_instances: int  # instances failing, restarting or not ready
    last_transition_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where one instance takes requests: ``http://host:port`` (no trailing slash).

    ``unix_socket``: when set, connect to this Unix socket instead of the url's host and port (the url
    still gives the scheme and the Host header). The local backend's instances have no port reachable
    from the manager's network: a relay in each sandbox's network serves the instance's port on such a socket.
    Bytes pass through it unchanged (HTTP, websocket upgrades). A connection the relay accepts and closes
    without a byte (the caller reads an end of file, or a reset if its request was still unread) means
    nothing listens on ``api_port`` in the instance: answer it as :class:`ExposedUnreachable`, as a
    refused connection.
    """

    url: str
    unix_socket: str | None = None


class Exposer(Protocol):
    async def expose(self, service: Service, *, previous: Service | None = None) -> None:
        """Create or update the instances of ``service`` (``expose.api_port`` set); ``previous``: the
        version an update replaces (None on create). Raising fails the create or update, which is then
        rolled back. An update restarts the instances with the new definition."""

    async def unexpose(self, service: Service) -> None:
        """Remove the instances and whatever :meth:`expose` made (the service is deleted, or no longer
        exposed). Nothing if there is none."""

    async def endpoint(self, service: Service) -> Endpoint:
        """An instance to send a request to (spread over the ready ones). ``ExposedUnavailable`` when the
        service is stopped or none is ready."""
        ...

    async def state(self, service: Service) -> DeploymentState: ...

    async def logs(self, service: Service, *, tail_lines: int) -> list[tuple[str, str]]:
        """The last ``tail_lines`` lines of the instances' output, as (RFC 3339 time, line), oldest first."""
        ...

    async def stop(self, service: Service) -> None:
        """No instance runs until :meth:`start`. (Whether a service is stopped is the registry's to keep
        across manager restarts: the caller records it, and exposes a stopped service again stopped.)"""

    async def start(self, service: Service) -> None:
        """Back to ``min_scale`` instances (at least one) after :meth:`stop`; nothing if running."""

    async def restart(self, service: Service) -> None:
        """New instances replace the running ones (one at a time where the backend can)."""
