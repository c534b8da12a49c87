"""The Kubernetes objects of a service and of its jobs, as plain dicts: no client library, no I/O.

Compatible with upstream OSCAR where clients or scripts can tell (container ``oscar-container``, label
``oscar_service``, ``EVENT``/``JOB_UUID`` in the environment, the config at ``/oscar/config``, MinIO
credentials at ``/var/run/secrets/providers/minio.default``). Different on purpose: the supervisor is not
read from a shared PVC but copied by an init container from the manager's own image into an ``emptyDir``
at ``/oscar/bin``, so the user's image needs nothing but ``/bin/sh`` and the pod no volume of its node's
host (which is what lets a Job run on an interLink virtual node, ``backends.interlink``); the job name
comes from the intake's dedup key, so a redelivered event maps to the same Job (409 AlreadyExists =
already submitted); and a body too large for ``EVENT`` travels in Secrets the Job owns (``body_secrets``),
projected into the pod at ``/oscar/event``: a container cannot start with an environment string over
128 KiB, nor can etcd keep a Job over 1.5 MiB.

Pod Security: a Job's pod meets the "baseline" profile, which the services' namespace enforces, and of
"restricted" what users' images allow. The init container (ours: it copies the supervisor) meets all of
"restricted": it runs as the manager image's own non-root user (``SUPERVISOR_UID``), without privilege
escalation, with every capability dropped; the file it writes into the ``emptyDir`` keeps the image's
mode (0755), so the main container executes it whatever user it runs as. The pod's seccomp profile is
``RuntimeDefault`` (the container runtime's default filter, which ordinary programs never notice), and the
main container cannot gain privileges (``allowPrivilegeEscalation: false``: no setuid binary such as
``sudo`` takes effect; a process already root stays root). Left as the image says, as upstream does: the
main container's user (``runAsNonRoot`` would refuse the many scientific images that run as root) and its
capabilities (dropping ALL would break root images that ``chown`` files or bind to low ports).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from oscar_manager.backends import interlink
from oscar_manager.domain.service import SERVICE_LABEL, Service
from oscar_manager.domain.service_views import job_view
from oscar_manager.supervisor import body_parts, event_env, reads, response_frame
from oscar_manager.supervisor import deadline as deadlines
from oscar_manager.supervisor.stage import event_variable

CONTAINER = "oscar-container"
INIT_CONTAINER = "oscar-supervisor"
CONFIG_DIR = "/oscar/config"
SUPERVISOR_DIR = "/oscar/bin"
CREDENTIALS_DIR = "/var/run/secrets/providers/minio.default"
# Where the manager's image keeps the self-contained supervisor executable.
IMAGE_SUPERVISOR = "/opt/oscar-manager/bin/supervisor"
GPU_RESOURCE = "nvidia.com/gpu"
# Marks the Jobs of sync runs: the manager awaits those itself, the job watcher leaves them alone.
SYNC_LABEL = "oscar_sync"
# How long after the job's time limit Kubernetes kills a Job whose supervisor did not (a hung upload...).
DEADLINE_BACKSTOP_SECONDS = 60
# A sync Job outliving a crashed manager is collected after at most this long.
SYNC_TTL_SECONDS = 3600
# The manager image's own user (Dockerfile ``USER 10001:10001``): the init container runs as it.
SUPERVISOR_UID = 10001


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    manager_image: str  # image holding the supervisor executable (the manager's own)
    ttl_seconds: int  # TTL_JOB: finished Jobs are garbage-collected after this
    # The name of the Secret holding accessKey/secretKey of minio.default (a name, not a secret).
    credentials_secret: str = "minio"  # noqa: S105
    # OSCAR_JOB_TIMEOUT, as on the local backend: Kubernetes kills a Job running longer (None: never).
    job_timeout: int | None = None
    # The largest invocation body a Job may have to carry (the larger of OSCAR_MAX_BODY_BYTES and
    # OSCAR_MAX_RUN_BODY_BYTES): a service is refused if its Jobs could not carry that (``kube_limits``).
    max_body_bytes: int = 50 * 1024 * 1024
    # Exposed services (``exposed_manifests``): an Ingress per service besides the manager's proxy (off:
    # traffic goes through the manager), on INGRESS_HOST when set (and its TLS Secret of that name).
    exposed_ingress: bool = False
    ingress_host: str = ""
    # Where the manager sends an exposed service's traffic: the Service's cluster DNS name (True: the manager
    # runs in the cluster), or a ready pod's address from the Service's EndpointSlices (False: it runs
    # outside). None: in the cluster when it talks to the one it runs in (``KubernetesBackend.connect``).
    exposed_via_service: bool | None = None
    # Warm pods (``warm_scaling``): the most a service has when its ``max_scale`` is 0 (OSCAR_WARM_MAX_PODS),
    # and how long pods above ``min_scale`` stay idle before they go (OSCAR_WARM_IDLE_SECONDS).
    warm_max_pods: int = 10
    warm_idle_seconds: float = 300.0


def service_labels(service: Service) -> dict[str, str]:
    return {**service.labels, SERVICE_LABEL: service.name}


def _metadata(service: Service, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": service.namespace, "labels": service_labels(service)}


def function_config(service: Service) -> str:
    """The definition the supervisor reads (script apart, secret values blanked), as upstream stores it."""
    data = job_view(service)
    data.pop("script", None)
    return yaml.safe_dump(data, sort_keys=False)


def config_map(service: Service) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(service, service.name),
        "data": {"function_config.yaml": function_config(service), "script.sh": service.script},
    }


def secret(service: Service) -> dict[str, Any] | None:
    """The service's ``environment.secrets`` as a Secret the job takes its environment from (or None)."""
    if not service.environment.secrets:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(service, service.name),
        "type": "Opaque",
        "stringData": dict(service.environment.secrets),
    }


def container_resources(service: Service) -> dict[str, Any]:
    limits = {"cpu": service.cpu, "memory": service.memory}
    if service.enable_gpu:
        limits[GPU_RESOURCE] = "1"
    return {"limits": limits, "requests": dict(limits)}


def pod_security() -> dict[str, Any]:
    """The pod's ``securityContext`` (see the module's docstring for what is set, and what not, and why)."""
    return {"seccompProfile": {"type": "RuntimeDefault"}}


def init_security() -> dict[str, Any]:
    """The init container's: all of Pod Security "restricted"."""
    return {
        "runAsNonRoot": True,
        "runAsUser": SUPERVISOR_UID,
        "runAsGroup": SUPERVISOR_UID,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }


def container_security() -> dict[str, Any]:
    """The main container's: what users' images allow of "restricted"."""
    return {"allowPrivilegeEscalation": False}


def body_inline(service: Service, event: bytes) -> bool:
    """The body travels in the Job's ``EVENT`` (as upstream's): it fits there, as it is or, for a Job
    offloaded through interLink, base64-encoded (``supervisor.event_env``)."""
    if interlink.offloaded(service):
        return event_env.encoded(event) is not None
    text = event_variable(event)
    return text is not None and text.encode() == event


def _event_env(service: Service, event: bytes, *, inline: bool) -> list[dict[str, Any]]:
    """``EVENT`` (and its encoding), or the description of the body's parts for the supervisor."""
    if not inline:
        variables = body_parts.environment(event)
    elif interlink.offloaded(service):
        variables = event_env.encoded(event) or {}
    else:
        variables = {event_env.EVENT_ENV: event.decode()}
    return [{"name": name, "value": value} for name, value in variables.items()]


def body_volume(job_id: str, parts: int) -> dict[str, Any]:
    """The body's ``parts``, one Secret each, as the files of one read-only volume."""
    sources = [
        {
            "secret": {
                "name": _part_secret(job_id, index),
                "items": [{"key": body_parts.PART_KEY, "path": name}],
            }
        }
        for index, name in enumerate(map(body_parts.part_name, range(parts)))
    ]
    return {"name": "oscar-event", "projected": {"sources": sources}}


def _part_secret(job_id: str, index: int) -> str:
    return f"{job_id}-body-{index}"


def body_secrets(service: Service, *, job_id: str, job_uid: str, event: bytes) -> Iterator[dict[str, Any]]:
    """The Secrets holding the parts of a body that does not travel inline, one at a time (they are big).

    Owned by the Job (``ownerReferences`` with its uid), so the garbage collector deletes them with it:
    at its TTL, when it is cancelled, when its service is removed. Created after the Job, whose pod waits
    for its volumes until they are all there. No ``blockOwnerDeletion``: that would need the right to
    update the Job's finalizers.
    """
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": job_id, "uid": job_uid}
    for index, part in enumerate(body_parts.split(event)):
        metadata = _metadata(service, _part_secret(job_id, index))
        metadata["labels"]["job-id"] = job_id
        yield {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {**metadata, "ownerReferences": [owner]},
            "type": "Opaque",
            "immutable": True,
            "data": {body_parts.PART_KEY: base64.b64encode(part).decode()},
        }


def _env(
    service: Service,
    *,
    job_id: str,
    event_variables: list[dict[str, Any]],
    sync: bool,
    any_bucket: bool,
    max_response: int | None,
    timeout: int | None,
) -> list[dict[str, Any]]:
    ours = (
        reads.READ_ANY_BUCKET_ENV,
        event_env.ENCODING_ENV,
        body_parts.PARTS_ENV,
        body_parts.DIGEST_ENV,
        deadlines.DEADLINE_ENV,
    )
    variables = [
        {"name": name, "value": value}
        for name, value in service.environment.variables.items()
        # Ours to set: what the supervisor may read, how the body reached it, its time limit.
        if name not in ours
    ]
    if timeout is not None:
        time_limit = [{"name": deadlines.DEADLINE_ENV, "value": str(timeout)}]
    else:
        time_limit = []
    framing = [{"name": response_frame.ENV, "value": "1"}] if sync else []
    if sync and max_response is not None:
        # The supervisor refuses a larger answer before encoding it (and declares only its size).
        framing.append({"name": response_frame.MAX_ENV, "value": str(max_response)})
    return [
        *variables,
        # Always set, and after the service's variables (and over its envFrom secrets): the service
        # cannot widen what its supervisor reads.
        {"name": reads.READ_ANY_BUCKET_ENV, "value": "true" if any_bucket else "false"},
        {"name": "OSCAR_SERVICE_NAME", "value": service.name},
        *event_variables,
        {"name": "JOB_UUID", "value": job_id},
        {"name": "RESOURCE_ID", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        *framing,
        *time_limit,
    ]


def job(
    service: Service,
    *,
    job_id: str,
    event: bytes,
    cluster: ClusterConfig,
    sync_deadline: int | None = None,
    any_bucket: bool = False,
    sync_max_response: int | None = None,
) -> dict[str, Any]:
    """The batch/v1 Job that runs one invocation of ``service`` with ``event`` as its input.

    With ``sync_deadline`` (seconds) it is the Job of a sync run: labelled as such, its response framed in
    the log for the manager to read back (at most ``sync_max_response`` bytes before base64), and killed
    by Kubernetes itself past the deadline. With ``any_bucket`` a storage event may name objects outside
    the service's inputs (the admin's runs).
    """
    sync = sync_deadline is not None
    inline = body_inline(service, event)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": service.image,
        # No shell pipeline: the supervisor reads the event from $EVENT (or /oscar/event) when its stdin is
        # empty.
        "command": [f"{SUPERVISOR_DIR}/supervisor"],
        "env": _env(
            service,
            job_id=job_id,
            event_variables=_event_env(service, event, inline=inline),
            sync=sync,
            any_bucket=any_bucket,
            max_response=sync_max_response,
            timeout=None if sync else cluster.job_timeout,
        ),
        "resources": container_resources(service),
        "securityContext": container_security(),
        "volumeMounts": [
            {"name": "oscar-config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "oscar-supervisor", "mountPath": SUPERVISOR_DIR, "readOnly": True},
            {"name": "minio-credentials", "mountPath": CREDENTIALS_DIR, "readOnly": True},
        ],
    }
    volumes: list[dict[str, Any]] = [
        {"name": "oscar-config", "configMap": {"name": service.name}},
        {"name": "oscar-supervisor", "emptyDir": {}},
        {"name": "minio-credentials", "secret": {"secretName": cluster.credentials_secret}},
    ]
    if not inline:
        volumes.append(body_volume(job_id, body_parts.count(event)))
        container["volumeMounts"].append(
            {"name": "oscar-event", "mountPath": str(body_parts.BODY_DIR), "readOnly": True}
        )
    if service.environment.secrets:
        container["envFrom"] = [{"secretRef": {"name": service.name}}]
    init: dict[str, Any] = {
        "name": INIT_CONTAINER,
        "image": cluster.manager_image,
        "command": ["cp", IMAGE_SUPERVISOR, f"{SUPERVISOR_DIR}/supervisor"],
        "volumeMounts": [{"name": "oscar-supervisor", "mountPath": SUPERVISOR_DIR}],
        "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}},
        "securityContext": init_security(),
    }
    labels = {**service_labels(service), "job-id": job_id, **({SYNC_LABEL: "true"} if sync else {})}
    pod_metadata = {"labels": labels, "annotations": dict(service.annotations)}
    spec: dict[str, Any] = {
        "backoffLimit": 0,
        "ttlSecondsAfterFinished": min(cluster.ttl_seconds, SYNC_TTL_SECONDS)
        if sync
        else cluster.ttl_seconds,
    }
    # A sync run's Job is killed at its deadline (the manager answered 504 by then); another job's supervisor
    # keeps the job's time limit itself, so it ends with its log, and Kubernetes' deadline is a backstop.
    deadline = sync_deadline if sync else cluster.job_timeout
    if deadline is not None:
        spec["activeDeadlineSeconds"] = max(deadline, 1) + (0 if sync else DEADLINE_BACKSTOP_SECONDS)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            **_metadata(service, job_id),
            "labels": dict(labels),
            "annotations": dict(service.annotations),
        },
        "spec": {
            **spec,
            "template": {
                "metadata": pod_metadata,
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pod_security(),
                    "imagePullSecrets": [{"name": name} for name in service.image_pull_secrets],
                    "initContainers": [init],
                    "containers": [container],
                    "volumes": volumes,
                    **interlink.placement(service),
                },
            },
        },
    }
