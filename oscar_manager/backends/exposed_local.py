"""Exposed services without a cluster: each runs as long-lived sandboxed processes on this machine.

An instance is the service's script run with /bin/sh, as a job's, in the same bubblewrap sandbox and
cgroup limits (memory, cpu, the service's network choice), with ``OSCAR_SERVICE_BASE_PATH``,
``OSCAR_SERVICE_NAME``, ``OSCAR_SERVICE_TOKEN`` and the service's variables and secrets in its environment.
Its port is in a network namespace of its own, reached by the manager's proxy only, through a relay that
joins that namespace from the host (``exposed_relay``): :meth:`LocalExposer.endpoint` answers a Unix
socket. Instances are
probed, restarted with backoff and scaled between ``min_scale`` and ``max_scale`` by one controller per
service (``exposed_deployment``, ``exposed_policy``).

Instances run in the service's image as its jobs do (``backends.images``; the relay is not in the image,
so images need nothing but their server). ``expose.default_command`` runs the image's Entrypoint
and Cmd; it is refused (400) where images are not run (``OSCAR_LOCAL_IMAGES=host``, no bubblewrap).

What differs from a cluster:
- A service that asks for the host's network (``oscar-manager/network``), or a manager without
  bubblewrap (``OSCAR_ALLOW_UNSANDBOXED``), runs one instance only, its port on the host's network:
  several would all bind the same port, and nothing isolates it from local users.
- Instances live as long as the manager (bubblewrap's ``--die-with-parent``); the manager exposes its
  services again at start-up, so :meth:`LocalExposer.expose` is idempotent.
"""

from __future__ import annotations

from pathlib import Path

from oscar_manager.backends.exposed import DeploymentState, Endpoint, ExposedUnavailable
from oscar_manager.backends.exposed_deployment import Deployment
from oscar_manager.backends.exposed_instance import InstancePlaces
from oscar_manager.backends.exposed_policy import ExposeTimings
from oscar_manager.backends.images.service_images import ImageMode, ServiceImages
from oscar_manager.backends.sandbox import Sandbox
from oscar_manager.domain.service import Service
from oscar_manager.errors import BadRequest


class LocalExposer:
    def __init__(
        self,
        *,
        sandbox: Sandbox,
        work_root: Path,
        images: ServiceImages | None = None,
        timings: ExposeTimings | None = None,
        max_pids: int | None = None,
        disk_bytes: int | None = None,
    ) -> None:
        """``images``: where the jobs' images come from (None: this machine's tools); ``max_pids``,
        ``disk_bytes``: the jobs' bounds, for instances too (see ``ScriptRun``)."""
        self._sandbox = sandbox
        self._images = images or ServiceImages(None, mode=ImageMode.HOST, sandboxed=sandbox.sandboxed)
        self._work_root = work_root
        self._max_pids = max_pids
        self._disk_bytes = disk_bytes
        self._timings = timings or ExposeTimings()
        self._places: InstancePlaces | None = None
        self._deployments: dict[str, Deployment] = {}

    async def expose(self, service: Service, *, previous: Service | None = None) -> None:
        _check_exposable(service, runs_images=self._images.runs_images)
        self._sandbox.check_allowed()
        deployment = self._deployments.get(service.name)
        if deployment is None:
            if self._places is None:
                self._places = InstancePlaces.make(
                    self._work_root,
                    images=self._images,
                    max_pids=self._max_pids,
                    disk_bytes=self._disk_bytes,
                    pull_seconds=self._timings.startup_timeout,
                )
            self._deployments[service.name] = Deployment(
                service, sandbox=self._sandbox, places=self._places, timings=self._timings
            )
        elif deployment.service != service:
            deployment.update(service)

    async def unexpose(self, service: Service) -> None:
        deployment = self._deployments.pop(service.name, None)
        if deployment is not None:
            await deployment.close()

    async def endpoint(self, service: Service) -> Endpoint:
        return await self._deployment(service).endpoint()

    async def state(self, service: Service) -> DeploymentState:
        deployment = self._deployments.get(service.name)
        if deployment is None:
            return DeploymentState(
                state="pending", reason="Not deployed yet.", active_instances=0, affected_instances=0
            )
        return deployment.state()

    async def logs(self, service: Service, *, tail_lines: int) -> list[tuple[str, str]]:
        deployment = self._deployments.get(service.name)
        return [] if deployment is None else deployment.logs(tail_lines)

    async def stop(self, service: Service) -> None:
        await self._deployment(service).stop()

    async def start(self, service: Service) -> None:
        self._deployment(service).start()

    async def restart(self, service: Service) -> None:
        self._deployment(service).restart()

    async def close(self) -> None:
        """End every instance (the backend stops)."""
        deployments, self._deployments = list(self._deployments.values()), {}
        for deployment in deployments:
            await deployment.close()
        if self._places is not None:
            self._places.remove()
            self._places = None

    def _deployment(self, service: Service) -> Deployment:
        deployment = self._deployments.get(service.name)
        if deployment is None:
            raise ExposedUnavailable(f"the service {service.name} is not exposed on this manager")
        return deployment


def _check_exposable(service: Service, *, runs_images: bool) -> None:
    if not service.expose.api_port:
        raise BadRequest(f"the service {service.name} has no expose.api_port: nothing to expose")
    if service.expose.default_command and not runs_images:
        raise BadRequest(
            "expose.default_command runs the image's own command, and this manager runs no images"
            " (scripts run with this machine's tools): start the server from the service's script instead"
        )
