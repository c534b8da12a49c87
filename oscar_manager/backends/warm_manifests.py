"""The Deployment of a service's warm pods, as a plain dict: no I/O.

Upstream keeps sync services warm with Knative (``autoscaling.knative.dev/min-scale`` from
``synchronous.min_scale``, one request per container); here, on plain Kubernetes, a service that is not
exposed asks for a Deployment ``<svc>-warm`` of warm pods (``backends.warm_kube`` routes ``/run`` to them)
with ``min_scale`` > 0 (that many kept up), or with the annotation ``oscar-manager/warm: "true"``
(:data:`WARM_ANNOTATION`), which also allows ``min_scale: 0``: no pod until a run asks for one, and none
again after an idle period. Between ``min_scale`` and ``max_scale`` (0: ``ClusterConfig.warm_max_pods``)
the count follows the runs (``backends.warm_scaling``); the bounds ride on the Deployment as annotations
(:data:`MIN_ANNOTATION`, :data:`MAX_ANNOTATION`) for the leader's scale-down, which reads no registry.

Each pod is a sync Job's pod (``manifests.job``: the same image, init container, volumes, credentials,
security and environment), so a run in a warm pod sees what a run in a Job sees; only the container's
argument differs: ``serve`` (``supervisor.serve``, an HTTP server on :data:`PORT`), and with it the port,
the readiness probe (``GET /ready``: 200 while idle) and the key the manager sends with each run. What is
per run (the body, its id, time limit, response limit, ``any_bucket``) comes with the request, not the
environment. The pods carry the service's labels and ``app: oscar-svc-warm-<svc>``.
"""

from __future__ import annotations

import secrets
from typing import Any

from oscar_manager.backends import interlink, manifests
from oscar_manager.backends.exposed import DeploymentState, DeploymentStateName
from oscar_manager.backends.exposed_kube_status import pod_failure
from oscar_manager.domain.service import Service
from oscar_manager.supervisor import deadline as deadlines
from oscar_manager.supervisor import response_frame, serve

APP_LABEL = "app"
# Marks the warm pods' Deployment and pods.
WARM_LABEL = "oscar_warm"
# A service's ask for warm pods even with ``min_scale: 0`` (scaled to zero when idle).
WARM_ANNOTATION = "oscar-manager/warm"
MIN_ANNOTATION = "oscar-manager/warm-min-scale"
MAX_ANNOTATION = "oscar-manager/warm-max-scale"
PORT = serve.DEFAULT_PORT
# A Job's, not a warm pod's: what is per run the server sets per request (``supervisor.serve``), and the
# response goes back in the HTTP answer, not framed in the log.
_JOB_ONLY = {"EVENT", "JOB_UUID", deadlines.DEADLINE_ENV, response_frame.MAX_ENV, response_frame.ENV}
# Probed often: a pod is taken out of the ready ones soon after it starts a run, back soon after it ends.
_READINESS = {"periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1, "successThreshold": 1}


def is_warm(service: Service) -> bool:
    """Whether the service asks for warm pods: ``synchronous.min_scale`` > 0 or the annotation, on a
    service that is not exposed (an exposed service's pods run its own server, ``backends.exposed``) nor
    offloaded through interLink (its runs go to the virtual node as Jobs, ``backends.interlink``)."""
    asked = service.annotations.get(WARM_ANNOTATION, "").lower() in ("true", "1", "yes", "enabled")
    return (
        (service.synchronous.min_scale > 0 or asked)
        and not service.expose.api_port
        and not interlink.offloaded(service)
    )


def deployment_name(service: Service) -> str:
    return f"{service.name}-warm"


def app_label(service: Service) -> str:
    return f"oscar-svc-warm-{service.name}"


def pod_selector(service: Service) -> str:
    return f"{APP_LABEL}={app_label(service)}"


def bounds(service: Service, *, default_cap: int) -> tuple[int, int]:
    """The fewest and most warm pods: ``min_scale`` (at most the cap), and ``max_scale`` or, when it is
    0, ``default_cap``."""
    cap = int(service.synchronous.max_scale) or default_cap
    return min(int(service.synchronous.min_scale), cap), cap


def replicas(service: Service, *, default_cap: int, current: int | None = None) -> int:
    """How many pods the Deployment asks for: ``min_scale`` for a new one; for one that is replaced, as
    many as it has now (runs may be using them), within the new bounds."""
    low, high = bounds(service, default_cap=default_cap)
    return low if current is None else max(low, min(current, high))


def deployment(
    service: Service,
    *,
    cluster: manifests.ClusterConfig,
    key: str | None = None,
    current_replicas: int | None = None,
) -> dict[str, Any]:
    """The apps/v1 Deployment of the warm pods; ``key``: what the manager must send with each run (a new
    random one by default); ``current_replicas``: the count of the Deployment it replaces, if any."""
    name = deployment_name(service)
    low, high = bounds(service, default_cap=cluster.warm_max_pods)
    job = manifests.job(service, job_id=name, event=b"", cluster=cluster)
    pod = job["spec"]["template"]
    labels = {
        **manifests.service_labels(service),
        WARM_LABEL: "true",
        APP_LABEL: app_label(service),
    }
    pod["metadata"]["labels"] = labels
    spec = pod["spec"]
    spec["restartPolicy"] = "Always"  # the only policy a Deployment takes; a crashed server comes back
    container = spec["containers"][0]
    container["args"] = ["serve"]
    container["env"] = [
        *(item for item in container["env"] if item["name"] not in _JOB_ONLY),
        {"name": serve.PORT_ENV, "value": str(PORT)},
        {"name": serve.KEY_ENV, "value": key or secrets.token_hex(32)},
    ]
    container["ports"] = [{"name": "warm", "containerPort": PORT, "protocol": "TCP"}]
    container["readinessProbe"] = {"httpGet": {"path": "/ready", "port": PORT}, **_READINESS}
    metadata = {
        "name": name,
        "namespace": service.namespace,
        "labels": {**manifests.service_labels(service), WARM_LABEL: "true"},
        "annotations": {
            **service.annotations,
            MIN_ANNOTATION: str(low),
            MAX_ANNOTATION: str(high),
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": replicas(service, default_cap=cluster.warm_max_pods, current=current_replicas),
            "selector": {"matchLabels": {APP_LABEL: app_label(service)}},
            "template": pod,
        },
    }


def pod_key(pod: dict[str, Any]) -> str:
    """The key a warm pod takes (from its own spec: every manager replica that can list it knows it)."""
    for item in pod["spec"]["containers"][0].get("env", []):
        if item.get("name") == serve.KEY_ENV:
            return str(item.get("value", ""))
    return ""


def deployment_bounds(deployment: dict[str, Any]) -> tuple[int, int]:
    """The (fewest, most) pods a warm Deployment was made with (its annotations; absent: 0 and 0)."""
    annotations = deployment["metadata"].get("annotations") or {}
    values = (annotations.get(MIN_ANNOTATION, ""), annotations.get(MAX_ANNOTATION, ""))
    low, high = (int(value) if value.isdigit() else 0 for value in values)
    return low, high


def state_of(deployment: dict[str, Any], pods: list[dict[str, Any]]) -> DeploymentState:
    """The warm pods' state as upstream's deployment status words it. Not the Deployment's available
    count: a pod in a run is not Ready (its probe says busy), yet it is up. None wanted (scaled to zero
    while idle) is ready: the next run starts a pod."""
    live = [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")]
    up = sum(1 for pod in live if (pod.get("status") or {}).get("phase") == "Running")
    failures = [failure for failure in map(pod_failure, live) if failure is not None]
    wanted = int(deployment["spec"].get("replicas") or 0)
    if failures:
        name: DeploymentStateName = "degraded" if up > len(failures) else "failed"
        return DeploymentState(name, failures[0], max(up - len(failures), 0), len(failures))
    if wanted == 0:
        return DeploymentState("ready", "No warm pod while idle: the next run starts one.", 0, 0)
    if up >= wanted:
        return DeploymentState("ready", f"{up} warm pods.", up, 0)
    if up > 0:
        return DeploymentState("degraded", f"{up} of {wanted} warm pods are up.", up, wanted - up)
    return DeploymentState("pending", "Waiting for the warm pods to start.", 0, wanted)
