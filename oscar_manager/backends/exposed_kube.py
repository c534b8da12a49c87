"""Exposed services on Kubernetes: the ``Exposer`` of the Kubernetes backend (``backends.exposed``).

A service's instances are a Deployment, a Service in front of them, an HPA keeping them between the
service's bounds and, when the operator wants traffic to bypass the manager, an Ingress
(``exposed_manifests``). Created or replaced with the service; an update replaces the pod template, which
the Deployment rolls out, and keeps the replicas the HPA chose (within the new bounds), or none when the
service is stopped.

Stop scales the Deployment to zero, marks it stopped and deletes the HPA (as upstream: an HPA would scale
it back up); start restores ``min_scale`` replicas and the HPA; restart sets ``kubectl rollout restart``'s
annotation on the pod template.

Where the proxy sends a request: in the cluster, the Service's DNS name; outside it (tests, a manager on a
workstation) a ready pod's address from the Service's EndpointSlices, passed through ``resolve`` (tests map
a pod's address to a loopback server). A stopped service, or one with no instance ready, is a precise
503 rather than a refused connection: in the cluster the Deployment is read first (a ready answer trusted
for :data:`READY_FOR` seconds, so busy services cost no apiserver request per proxied one); outside, it
is read when the EndpointSlices list no ready pod, to say which.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, cast

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from oscar_manager.backends import exposed_manifests as objects
from oscar_manager.backends.exposed import DeploymentState, Endpoint, ExposedUnavailable
from oscar_manager.backends.exposed_kube_status import deployment_state, merged_logs
from oscar_manager.backends.kube_client import answers
from oscar_manager.backends.manifests import CONTAINER, ClusterConfig
from oscar_manager.domain.service import Service

# (pod address, port) -> (host, port) the manager can reach; identity unless a test maps it.
Resolve = Callable[[str, int], tuple[str, int]]
# How long a service seen with a ready instance is taken to still have one (seconds).
READY_FOR = 2.0
MERGE_PATCH = "application/merge-patch+json"
# Replacing the Deployment races the HPA's scale updates (409 Conflict): read it again this often.
_REPLACE_ATTEMPTS = 5


def _identity(address: str, port: int) -> tuple[str, int]:
    return address, port


class KubeExposer:
    def __init__(
        self,
        api: client.ApiClient,
        *,
        namespace: str,
        cluster: ClusterConfig,
        resolve: Resolve | None = None,
    ) -> None:
        self._core = client.CoreV1Api(api)
        self._apps = client.AppsV1Api(api)
        self._autoscaling = client.AutoscalingV2Api(api)
        self._networking = client.NetworkingV1Api(api)
        self._discovery = client.DiscoveryV1Api(api)
        self._namespace = namespace
        self._cluster = cluster
        self._resolve = resolve or _identity
        self._ready_until: dict[str, float] = {}
        self._turn = itertools.count()

    # --- create, update, delete ------------------------------------------------------------------

    async def expose(self, service: Service, *, previous: Service | None = None) -> None:
        stopped = await self._apply_deployment(service)
        await self._apply(self._core, "service", objects.kube_service(service))
        if stopped:
            await self._delete(self._autoscaling, "horizontal_pod_autoscaler", objects.hpa_name(service))
        else:
            await self._apply(self._autoscaling, "horizontal_pod_autoscaler", objects.hpa(service))
        if self._cluster.exposed_ingress:
            await self._apply(self._networking, "ingress", objects.ingress(service, cluster=self._cluster))
            if service.expose.set_auth:
                await self._apply(self._core, "secret", objects.auth_secret(service))
            elif previous is not None and previous.expose.set_auth:
                await self._delete(self._core, "secret", objects.auth_secret_name(service))
        self._ready_until.pop(service.name, None)

    async def _apply_deployment(self, service: Service) -> bool:
        """Create the Deployment, or replace it keeping its replicas (the HPA's, within the new bounds;
        none when stopped). True when the service is stopped."""
        name = objects.deployment_name(service)
        fresh = objects.deployment(service, cluster=self._cluster, replicas=objects.min_replicas(service))
        if await self._create(self._apps.create_namespaced_deployment, fresh, what=f"deployment {name}"):
            return False
        for _ in range(_REPLACE_ATTEMPTS):
            current = await self._read_deployment(service)
            if current is None:  # deleted meanwhile
                if await self._create(
                    self._apps.create_namespaced_deployment, fresh, what=f"deployment {name}"
                ):
                    return False
                continue
            stopped = _stopped(current)
            replicas = 0 if stopped else _within(current, service)
            body = objects.deployment(service, cluster=self._cluster, replicas=replicas, stopped=stopped)
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            with answers(f"replace deployment {name}"):
                try:
                    await self._apps.replace_namespaced_deployment(
                        name, self._namespace, cast("client.V1Deployment", body)
                    )
                    return stopped
                except ApiException as exc:
                    if exc.status != 409:
                        raise
        raise ExposedUnavailable(f"deployment {name} kept changing while it was replaced; try again")

    async def unexpose(self, service: Service) -> None:
        await self._delete(self._autoscaling, "horizontal_pod_autoscaler", objects.hpa_name(service))
        await self._delete(self._apps, "deployment", objects.deployment_name(service), background=True)
        await self._delete(self._core, "service", objects.service_name(service))
        # Whether or not Ingresses are on now: one may be left from when they were.
        await self._delete(self._networking, "ingress", objects.ingress_name(service))
        await self._delete(self._core, "secret", objects.auth_secret_name(service))
        self._ready_until.pop(service.name, None)

    # --- lifecycle -------------------------------------------------------------------------------

    async def stop(self, service: Service) -> None:
        patch = {"metadata": {"annotations": {objects.STOPPED_ANNOTATION: "true"}}, "spec": {"replicas": 0}}
        await self._patch_deployment(service, patch, what="stop")
        await self._delete(self._autoscaling, "horizontal_pod_autoscaler", objects.hpa_name(service))
        self._ready_until.pop(service.name, None)

    async def start(self, service: Service) -> None:
        current = await self._read_deployment(service)
        if current is None:
            raise ExposedUnavailable(f"service {service.name} has no deployment: update it to create one")
        if _stopped(current) or int(current["spec"].get("replicas", 0)) == 0:
            patch = {
                "metadata": {"annotations": {objects.STOPPED_ANNOTATION: "false"}},
                "spec": {"replicas": objects.min_replicas(service)},
            }
            await self._patch_deployment(service, patch, what="start")
        await self._apply(self._autoscaling, "horizontal_pod_autoscaler", objects.hpa(service))

    async def restart(self, service: Service) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        template = {"metadata": {"annotations": {objects.RESTARTED_AT_ANNOTATION: now}}}
        await self._patch_deployment(service, {"spec": {"template": template}}, what="restart")

    # --- what runs -------------------------------------------------------------------------------

    async def state(self, service: Service) -> DeploymentState:
        deployment = await self._read_deployment(service)
        if deployment is None:
            raise ExposedUnavailable(
                f"service {service.name} has no deployment (Current deployment resources are unavailable.)"
            )
        return deployment_state(deployment, await self._pods(service))

    async def logs(self, service: Service, *, tail_lines: int) -> list[tuple[str, str]]:
        texts = []
        for pod in await self._pods(service):
            name = pod["metadata"]["name"]
            with answers(f"read the log of pod {name}"):
                try:
                    texts.append(
                        await self._core.read_namespaced_pod_log(
                            name, self._namespace, container=CONTAINER, timestamps=True, tail_lines=tail_lines
                        )
                    )
                except ApiException as exc:
                    # 400: its container has not started yet (or was never created); 404: gone meanwhile.
                    if exc.status not in (400, 404):
                        raise
        return merged_logs(texts, tail_lines=tail_lines)

    async def endpoint(self, service: Service) -> Endpoint:
        port = objects.port(service)
        if self._cluster.exposed_via_service is not False:
            await self._check_ready(service)
            host = f"{objects.service_name(service)}.{self._namespace}.svc.cluster.local"
            return Endpoint(f"http://{host}:{port}")
        addresses = await self._ready_addresses(service)
        if not addresses:
            await self._check_ready(service, trust=False)  # says why: stopped, or none ready
            raise ExposedUnavailable(f"service {service.name} has no instance ready yet")
        address = addresses[next(self._turn) % len(addresses)]
        host, reached = self._resolve(address, port)
        return Endpoint(f"http://{_host(host)}:{reached}")

    async def _check_ready(self, service: Service, *, trust: bool = True) -> None:
        """Raise ``ExposedUnavailable`` unless the Deployment has an instance available (or had one less
        than :data:`READY_FOR` seconds ago)."""
        if trust and self._ready_until.get(service.name, 0.0) > time.monotonic():
            return
        deployment = await self._read_deployment(service)
        if deployment is None:
            raise ExposedUnavailable(f"service {service.name} has no deployment")
        if int(deployment["spec"].get("replicas", 0)) == 0:
            raise ExposedUnavailable(f"service {service.name} is stopped: start it first")
        if int(deployment.get("status", {}).get("availableReplicas", 0)) == 0:
            raise ExposedUnavailable(f"service {service.name} has no instance ready yet")
        self._ready_until[service.name] = time.monotonic() + READY_FOR

    async def _ready_addresses(self, service: Service) -> list[str]:
        selector = f"kubernetes.io/service-name={objects.service_name(service)}"
        with answers(f"list the endpoints of {service.name}"):
            slices = await self._json(
                self._discovery.list_namespaced_endpoint_slice, self._namespace, label_selector=selector
            )
        return sorted(
            endpoint["addresses"][0]
            for found in slices.get("items", [])
            for endpoint in found.get("endpoints") or []
            # An absent ``ready`` is to be read as ready (the API's own rule).
            if endpoint.get("addresses") and (endpoint.get("conditions") or {}).get("ready", True)
        )

    # --- calls -----------------------------------------------------------------------------------

    async def _pods(self, service: Service) -> list[dict[str, Any]]:
        with answers(f"list the pods of {service.name}"):
            found = await self._json(
                self._core.list_namespaced_pod, self._namespace, label_selector=objects.pod_selector(service)
            )
        return cast("list[dict[str, Any]]", found.get("items", []))

    async def _read_deployment(self, service: Service) -> dict[str, Any] | None:
        name = objects.deployment_name(service)
        with answers(f"read deployment {name}"):
            try:
                return await self._json(self._apps.read_namespaced_deployment, name, self._namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

    async def _patch_deployment(self, service: Service, patch: dict[str, Any], *, what: str) -> None:
        name = objects.deployment_name(service)
        with answers(f"{what} deployment {name}"):
            try:
                # (The client is typed without its ``_content_type`` option.)
                patch_deployment: Callable[..., Awaitable[object]] = self._apps.patch_namespaced_deployment
                await patch_deployment(name, self._namespace, patch, _content_type=MERGE_PATCH)
            except ApiException as exc:
                if exc.status == 404:
                    raise ExposedUnavailable(f"service {service.name} has no deployment") from None
                raise

    async def _create(
        self, create: Callable[..., Awaitable[object]], body: dict[str, Any], *, what: str
    ) -> bool:
        """POST ``body``; False when it exists already (409)."""
        with answers(f"create {what}"):
            try:
                await create(self._namespace, body)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                return False
        return True

    async def _apply(self, api: Any, kind: str, body: dict[str, Any]) -> None:
        """Create, or replace what is there (409): a Service keeps its cluster IP and node ports, which
        the apiserver carries over when the replacement leaves them out."""
        name = body["metadata"]["name"]
        if await self._create(getattr(api, f"create_namespaced_{kind}"), body, what=f"{kind} {name}"):
            return
        with answers(f"replace {kind} {name}"):
            await getattr(api, f"replace_namespaced_{kind}")(name, self._namespace, body)

    async def _delete(self, api: Any, kind: str, name: str, *, background: bool = False) -> None:
        """Delete, 404 being as good; ``background``: its dependents (a Deployment's ReplicaSets and pods)
        go after it."""
        options = {"propagation_policy": "Background"} if background else {}
        with answers(f"delete {kind} {name}"):
            try:
                await getattr(api, f"delete_namespaced_{kind}")(name, self._namespace, **options)
            except ApiException as exc:
                if exc.status != 404:
                    raise

    async def _json(
        self, call: Callable[..., Awaitable[object]], *args: Any, **params: Any
    ) -> dict[str, Any]:
        """The object a GET answers, as plain JSON (no client models: their parsing costs more than the
        call)."""
        answer = await call(*args, _preload_content=False, **params)
        async with cast("aiohttp.ClientResponse", answer) as raw:
            body = await raw.read()
            if not 200 <= raw.status <= 299:
                refused = ApiException(status=raw.status, reason=raw.reason)
                refused.body = body
                raise refused
        return cast("dict[str, Any]", json.loads(body))


def _stopped(deployment: dict[str, Any]) -> bool:
    annotations = deployment["metadata"].get("annotations") or {}
    return annotations.get(objects.STOPPED_ANNOTATION) == "true"


def _within(deployment: dict[str, Any], service: Service) -> int:
    """The Deployment's replicas (the HPA's choice) within the service's bounds."""
    current = int(deployment["spec"].get("replicas", 0))
    return min(max(current, objects.min_replicas(service)), objects.max_replicas(service))


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
