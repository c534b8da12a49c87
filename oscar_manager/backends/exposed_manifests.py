"""The Kubernetes objects of an exposed service (``expose.api_port`` set), as plain dicts: no I/O.

Named as upstream names them (``pkg/backends/resources/expose.go``): Deployment ``<svc>-dpl`` whose pods
carry ``app: oscar-svc-exp-<svc>``, Service ``<svc>-svc``, HorizontalPodAutoscaler ``<svc>-hpa`` and, when
the operator asks for one, Ingress ``<svc>-ing`` (with the basic-auth Secret ``<svc>-auth-expose`` for a
service with ``set_auth``). Every object also carries the service's labels and ``oscar_service``.

Different from upstream on purpose:
- The pods run the script with ``/bin/sh`` (as upstream), or the image's own command with
  ``default_command``; the supervisor executable is delivered at ``/oscar/bin`` as for Jobs (upstream's
  pods see it there too) but does not wrap the server: it keeps what the script prints in memory until the
  script ends, and would stage outputs out when a server stops, neither of which suits a long-lived server.
- The Service listens on ``api_port`` itself (upstream: 80 + index), the HPA is ``autoscaling/v2``, the
  readiness probe is a TCP connect to the port unless ``health_path`` names an HTTP one (upstream probes
  ``/`` over HTTP always, failing servers that answer ``/`` with an error).
- Zero ``min_scale``, ``max_scale`` and ``cpu_threshold`` take upstream's documented defaults (1, 10 and 80):
  upstream passes the zeros to the HPA, which the apiserver refuses.
- Pod security as the Jobs' (``manifests``): "baseline", and of "restricted" what users' images allow.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any

from oscar_manager.backends import manifests
from oscar_manager.domain.service import Service

APP_LABEL = "app"
# Marks every object of an exposed service (the Jobs' watcher and listings ignore them).
EXPOSED_LABEL = "oscar_exposed"
# Set on the Deployment while the service is stopped (``stop``): an update keeps it stopped.
STOPPED_ANNOTATION = "oscar.grycap.io/stopped"
# What ``kubectl rollout restart`` sets on the pod template.
RESTARTED_AT_ANNOTATION = "kubectl.kubernetes.io/restartedAt"
DEFAULT_MIN_SCALE = 1
DEFAULT_MAX_SCALE = 10
DEFAULT_CPU_THRESHOLD = 80
SCRIPT_PATH = f"{manifests.CONFIG_DIR}/script.sh"
# Upstream's probe timings: a slow server (a model loading its weights) is not killed while it starts.
_READINESS = {"initialDelaySeconds": 10, "periodSeconds": 5, "timeoutSeconds": 10}
_LIVENESS = {"initialDelaySeconds": 60, "periodSeconds": 10, "timeoutSeconds": 10, "failureThreshold": 12}


def deployment_name(service: Service) -> str:
    return f"{service.name}-dpl"


def service_name(service: Service) -> str:
    return f"{service.name}-svc"


def hpa_name(service: Service) -> str:
    return f"{service.name}-hpa"


def ingress_name(service: Service) -> str:
    return f"{service.name}-ing"


def auth_secret_name(service: Service) -> str:
    return f"{service.name}-auth-expose"


def app_label(service: Service) -> str:
    """The pods' ``app`` label, upstream's: what the Deployment and the Service select."""
    return f"oscar-svc-exp-{service.name}"


def pod_selector(service: Service) -> str:
    return f"{APP_LABEL}={app_label(service)}"


def base_path(service: Service) -> str:
    """Where the manager (or the Ingress) serves the service: ``OSCAR_SERVICE_BASE_PATH``."""
    return f"/system/services/{service.name}/exposed"


def port(service: Service) -> int:
    """The port the instances listen on, the proxy's target: ``api_port[0]``."""
    return int(service.expose.api_port[0])


def min_replicas(service: Service) -> int:
    return max(service.expose.min_scale, DEFAULT_MIN_SCALE)


def max_replicas(service: Service) -> int:
    return max(service.expose.max_scale or DEFAULT_MAX_SCALE, min_replicas(service))


def cpu_threshold(service: Service) -> int:
    return service.expose.cpu_threshold if service.expose.cpu_threshold > 0 else DEFAULT_CPU_THRESHOLD


def _labels(service: Service) -> dict[str, str]:
    return {**manifests.service_labels(service), EXPOSED_LABEL: "true"}


def _metadata(service: Service, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": service.namespace, "labels": _labels(service)}


def _probe_path(service: Service) -> str:
    """``health_path`` as upstream probes it: under the base path when the server is given whole paths
    (``rewrite_target``), unless ``probe_mode: direct``."""
    path = service.expose.health_path
    path = path if path.startswith("/") else f"/{path}"
    if service.expose.rewrite_target and service.expose.probe_mode.strip().lower() != "direct":
        return base_path(service) + path
    return path


def _probes(service: Service) -> dict[str, Any]:
    if service.expose.health_path:
        check: dict[str, Any] = {"httpGet": {"path": _probe_path(service), "port": port(service)}}
        return {"readinessProbe": {**check, **_READINESS}, "livenessProbe": {**check, **_LIVENESS}}
    return {"readinessProbe": {"tcpSocket": {"port": port(service)}, **_READINESS}}


def _env(service: Service) -> list[dict[str, Any]]:
    ours = {"OSCAR_SERVICE_NAME", "OSCAR_SERVICE_TOKEN", "OSCAR_SERVICE_BASE_PATH"}
    variables = [
        {"name": name, "value": value}
        for name, value in service.environment.variables.items()
        if name not in ours
    ]
    return [
        *variables,
        {"name": "OSCAR_SERVICE_NAME", "value": service.name},
        {"name": "OSCAR_SERVICE_TOKEN", "value": service.token},
        {"name": "OSCAR_SERVICE_BASE_PATH", "value": base_path(service)},
    ]


def _container(service: Service) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": manifests.CONTAINER,
        "image": service.image,
        "env": _env(service),
        "ports": [
            {"name": f"api-{index}", "containerPort": int(number), "protocol": "TCP"}
            for index, number in enumerate(service.expose.api_port)
        ],
        **_probes(service),
        "resources": manifests.container_resources(service),
        "securityContext": manifests.container_security(),
        "volumeMounts": [
            {"name": "oscar-config", "mountPath": manifests.CONFIG_DIR, "readOnly": True},
            {"name": "oscar-supervisor", "mountPath": manifests.SUPERVISOR_DIR, "readOnly": True},
        ],
    }
    if not service.expose.default_command:
        container["command"] = ["/bin/sh", SCRIPT_PATH]
    if service.environment.secrets:
        container["envFrom"] = [{"secretRef": {"name": service.name}}]
    return container


def _init_container(cluster: manifests.ClusterConfig) -> dict[str, Any]:
    return {
        "name": manifests.INIT_CONTAINER,
        "image": cluster.manager_image,
        "command": ["cp", manifests.IMAGE_SUPERVISOR, f"{manifests.SUPERVISOR_DIR}/supervisor"],
        "volumeMounts": [{"name": "oscar-supervisor", "mountPath": manifests.SUPERVISOR_DIR}],
        "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}},
        "securityContext": manifests.init_security(),
    }


def deployment(
    service: Service, *, cluster: manifests.ClusterConfig, replicas: int, stopped: bool = False
) -> dict[str, Any]:
    """The apps/v1 Deployment of the service's instances, ``replicas`` of them (0 and ``stopped``: kept
    stopped until started)."""
    pod_labels = {**_labels(service), APP_LABEL: app_label(service)}
    metadata = _metadata(service, deployment_name(service))
    metadata["annotations"] = {**service.annotations, STOPPED_ANNOTATION: "true" if stopped else "false"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {APP_LABEL: app_label(service)}},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": dict(service.annotations)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": manifests.pod_security(),
                    "imagePullSecrets": [{"name": name} for name in service.image_pull_secrets],
                    "initContainers": [_init_container(cluster)],
                    "containers": [_container(service)],
                    "volumes": [
                        {"name": "oscar-config", "configMap": {"name": service.name}},
                        {"name": "oscar-supervisor", "emptyDir": {}},
                    ],
                },
            },
        },
    }


def kube_service(service: Service) -> dict[str, Any]:
    """The v1 Service in front of the instances: ClusterIP on each ``api_port``, NodePort when ``nodePort``
    is given (0: one the cluster picks)."""
    node_ports = list(service.expose.node_port)
    ports: list[dict[str, Any]] = []
    for index, number in enumerate(service.expose.api_port):
        entry: dict[str, Any] = {
            "name": f"api-{index}",
            "port": int(number),
            "targetPort": int(number),
            "protocol": "TCP",
        }
        if index < len(node_ports) and node_ports[index]:
            entry["nodePort"] = int(node_ports[index])
        ports.append(entry)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(service, service_name(service)),
        "spec": {
            "type": "NodePort" if node_ports else "ClusterIP",
            "selector": {APP_LABEL: app_label(service)},
            "ports": ports,
        },
    }


def hpa(service: Service) -> dict[str, Any]:
    """The autoscaling/v2 HorizontalPodAutoscaler keeping the Deployment between its bounds on CPU."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(service, hpa_name(service)),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": deployment_name(service),
            },
            "minReplicas": min_replicas(service),
            "maxReplicas": max_replicas(service),
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": cpu_threshold(service)},
                    },
                }
            ],
        },
    }


def ingress(service: Service, *, cluster: manifests.ClusterConfig) -> dict[str, Any]:
    """The networking/v1 Ingress (ingress-nginx) serving the base path straight from the Service, as
    upstream's: the prefix stripped, or kept with ``rewrite_target``; basic auth with ``set_auth``."""
    path = base_path(service)
    annotations = {
        "nginx.ingress.kubernetes.io/rewrite-target": f"{path}/$1"
        if service.expose.rewrite_target
        else "/$1",
        "nginx.ingress.kubernetes.io/use-regex": "true",
        "nginx.ingress.kubernetes.io/proxy-body-size": "0",
    }
    if service.expose.set_auth:
        annotations |= {
            "nginx.ingress.kubernetes.io/auth-type": "basic",
            "nginx.ingress.kubernetes.io/auth-secret": auth_secret_name(service),
            "nginx.ingress.kubernetes.io/auth-realm": "Authentication Required",
        }
    rule: dict[str, Any] = {
        "http": {
            "paths": [
                {
                    "path": f"{path}/?(.*)",
                    "pathType": "ImplementationSpecific",
                    "backend": {
                        "service": {"name": service_name(service), "port": {"number": port(service)}}
                    },
                }
            ]
        }
    }
    spec: dict[str, Any] = {"ingressClassName": "nginx", "rules": [rule]}
    if cluster.ingress_host:
        rule["host"] = cluster.ingress_host
        spec["tls"] = [{"hosts": [cluster.ingress_host], "secretName": cluster.ingress_host}]
    metadata = _metadata(service, ingress_name(service))
    metadata["annotations"] = annotations
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": metadata, "spec": spec}


def auth_secret(service: Service) -> dict[str, Any]:
    """The Ingress's basic-auth file (ingress-nginx's ``auth`` key): user the service's name, password its
    token, salted SHA-1 (``{SSHA}``, which nginx reads; the token is 256 random bits, so the hash's
    speed does not matter)."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(service.token.encode() + salt, usedforsecurity=False).digest()
    hashed = "{SSHA}" + base64.b64encode(digest + salt).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(service, auth_secret_name(service)),
        "type": "Opaque",
        "stringData": {"auth": f"{service.name}:{hashed}\n"},
    }
