"""An exposed service's state and logs from what the apiserver says of its Deployment and pods: no I/O.

The state follows upstream's ``deploymentStatusFromDeployment`` (``pkg/handlers/deployment.go``): stopped
at zero replicas, ready when as many are available as wanted, degraded when some are, failed when none is
and the Deployment says it cannot progress (``Progressing`` False, ``ReplicaFailure`` True), else
pending. Beyond upstream, a pod whose container waits for a reason that will not pass by itself
(``CrashLoopBackOff``, an image that cannot be pulled...) makes the service failed (none available) or
degraded, with that reason: the Deployment's own conditions say nothing of it for ten minutes (its
progress deadline).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from oscar_manager.backends.exposed import DeploymentState, DeploymentStateName
from oscar_manager.domain import logtimes

# A container waiting for one of these will not become ready by waiting.
FAILING_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _latest_condition(conditions: list[dict[str, Any]]) -> tuple[str, datetime | None]:
    """The most recent condition's "Reason: message", and its time (upstream's reason)."""
    latest: tuple[datetime, dict[str, Any]] | None = None
    for condition in conditions:
        when = _time(condition.get("lastUpdateTime") or condition.get("lastTransitionTime"))
        if when is not None and (latest is None or when > latest[0]):
            latest = (when, condition)
    if latest is None:
        return "", None
    when, condition = latest
    text = f"{condition.get('reason', '')}: {condition.get('message', '')}".strip().strip(":").strip()
    return text, when


def _cannot_progress(conditions: list[dict[str, Any]]) -> bool:
    return any(
        (c.get("type"), c.get("status")) in (("ReplicaFailure", "True"), ("Progressing", "False"))
        for c in conditions
    )


def pod_failure(pod: dict[str, Any]) -> str | None:
    """Why the pod's container cannot run, when it waits for a reason that will not pass ("CrashLoopBackOff:
    back-off 40s restarting failed container..."), else None."""
    if pod["metadata"].get("deletionTimestamp"):
        return None  # on its way out (a rollout, a scale down): not the service's failure
    for status in pod.get("status", {}).get("containerStatuses") or []:
        waiting = (status.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in FAILING_REASONS:
            message = waiting.get("message", "")
            return f"{waiting['reason']}: {message}" if message else str(waiting["reason"])
    return None


def deployment_state(deployment: dict[str, Any], pods: list[dict[str, Any]]) -> DeploymentState:
    """The service's state from its Deployment and the pods it selects."""
    spec, status = deployment.get("spec", {}), deployment.get("status", {})
    desired = max(int(spec.get("replicas", 1)), 0)
    observed = max(int(status.get("replicas", 0)), 0)
    available = max(int(status.get("availableReplicas", 0)), 0)
    affected = max(observed - available, 0)
    conditions = status.get("conditions") or []
    reason, transitioned = _latest_condition(conditions)
    failures = [failure for failure in map(pod_failure, pods) if failure is not None]
    if desired == 0:
        return DeploymentState("stopped", "Deployment is stopped.", available, 0, transitioned)
    if failures:
        affected = max(affected, len(failures))
        state: DeploymentStateName = "degraded" if available > 0 else "failed"
        return DeploymentState(state, failures[0], available, affected, transitioned)
    if available >= desired:
        return DeploymentState("ready", reason or "Deployment is ready.", available, affected, transitioned)
    if available > 0:
        why = reason or f"{affected} of {desired} instances are affected."
        return DeploymentState("degraded", why, available, affected, transitioned)
    if _cannot_progress(conditions):
        return DeploymentState("failed", reason, available, affected, transitioned)
    return DeploymentState(
        "pending", reason or "Waiting for the instances to start.", available, affected, transitioned
    )


def _order(stamp: str) -> str:
    """A stamp whose text sorts as its time: the fraction padded to nine digits (the kubelet writes nine;
    a runtime trimming zeros would not)."""
    whole, dot, rest = stamp.partition(".")
    if not dot:
        return f"{stamp.removesuffix('Z')}.000000000Z"
    fraction = rest.removesuffix("Z")
    return f"{whole}.{fraction:0<9}Z"


def merged_logs(pod_logs: list[str], *, tail_lines: int) -> list[tuple[str, str]]:
    """The last ``tail_lines`` lines of several pods' logs read with ``timestamps=true``, merged by time
    (oldest first; a pod's lines of one time keep their order), each as (stamp, line without its end)."""
    lines: list[tuple[str, str, str]] = []
    for text in pod_logs:
        log, times = logtimes.unstamp(text)
        for stamp, line in logtimes.timed_lines(log, times, fallback=logtimes.UNKNOWN):
            lines.append((_order(stamp) if stamp else "", stamp, line.rstrip("\n")))
    lines.sort(key=lambda entry: entry[0])
    return [(stamp, line) for _, stamp, line in lines[-tail_lines:]] if tail_lines > 0 else []
