"""What a Kubernetes Job says: whether it has ended and how, and its end as a ``JobOutcome``.

A Job's end is read from its conditions; its outcome adds its pod's log (copied, so that it outlives the
pod and the Job's TTL) and the container's exit code.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from oscar_manager.backends import manifests
from oscar_manager.backends.kube_answers import FORBIDDEN_PAUSE, reason, refused_for_now
from oscar_manager.backends.kube_client import TRANSPORT_ERRORS
from oscar_manager.domain import logtimes
from oscar_manager.domain.jobs import JobOutcome, JobStatus

# Models built without the client's checks for required fields (a slim Job has no pod template).
_UNCHECKED = client.Configuration()
# Reading a finished job's pod and log: tries, and the first pause between them (doubled each time).
READ_ATTEMPTS = 4
READ_BACKOFF = 0.5
_UNCHECKED.client_side_validation = False


def watched_job(raw: dict[str, Any]) -> client.V1Job:
    """What the job watcher reads of a Job (name, resourceVersion, its pods active and ready, conditions,
    active deadline) as a V1Job. Building models for the whole object, pod template and all, took a
    millisecond per watch event."""
    metadata = raw.get("metadata") or {}
    spec = raw.get("spec") or {}
    status = raw.get("status")
    return client.V1Job(
        metadata=client.V1ObjectMeta(
            name=metadata.get("name"),
            resource_version=metadata.get("resourceVersion"),
            labels=metadata.get("labels"),
        ),
        spec=client.V1JobSpec(
            template=None,
            active_deadline_seconds=spec.get("activeDeadlineSeconds"),
            local_vars_configuration=_UNCHECKED,
        ),
        status=None
        if status is None
        else client.V1JobStatus(
            active=status.get("active"),
            ready=status.get("ready"),
            conditions=[
                client.V1JobCondition(
                    type=condition.get("type"),
                    status=condition.get("status"),
                    reason=condition.get("reason"),
                    local_vars_configuration=_UNCHECKED,
                )
                for condition in status.get("conditions") or []
            ],
        ),
    )


def _conditions(job: client.V1Job) -> dict[str, str]:
    """The Job's true conditions, by type, with their reasons (``Failed`` -> ``DeadlineExceeded``...)."""
    status = job.status
    return {c.type: c.reason or "" for c in (status.conditions or []) if c.status == "True"} if status else {}


def ended(job: client.V1Job) -> bool:
    return bool(_conditions(job).keys() & {"Complete", "Failed"})


def past_deadline(job: client.V1Job) -> bool:
    """Killed by Kubernetes at its ``activeDeadlineSeconds``."""
    return _conditions(job).get("Failed") == "DeadlineExceeded"


async def job_outcome(
    core: client.CoreV1Api, namespace: str, job: client.V1Job, *, timestamps: bool
) -> JobOutcome:
    """The job's end, with its pod's log copied (so it outlives the pod). With ``timestamps`` the log is
    read with the kubelet's time of each line, kept apart from the text (a sync run's answer frame is
    read from the plain log)."""
    job_name = job.metadata.name
    succeeded = "Complete" in _conditions(job)
    deadline = job.spec.active_deadline_seconds if job.spec else None
    text = ""
    times: logtimes.LineTimes | None = None
    exit_code: int | None = 0 if succeeded else None
    # When the container started: a job can end between two looks of the watcher, never seen running.
    started_at: datetime | None = None
    for attempt in range(READ_ATTEMPTS):
        try:
            pods = await core.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}")
            for pod in pods.items[:1]:
                text = await core.read_namespaced_pod_log(
                    pod.metadata.name, namespace, container=manifests.CONTAINER, timestamps=timestamps
                )
                if timestamps:
                    text, times = logtimes.unstamp(text)
                for container in (pod.status.container_statuses or []) if pod.status else []:
                    terminated = container.state.terminated if container.state else None
                    if container.name == manifests.CONTAINER and terminated is not None:
                        exit_code = terminated.exit_code
                        started_at = terminated.started_at
            break
        except ApiException as exc:
            # A restarted API server answers 5xx, or 403 until its RBAC has caught up, for a while.
            if attempt + 1 < READ_ATTEMPTS and refused_for_now(exc, attempt + 1):
                pause = READ_BACKOFF * 2**attempt
                await asyncio.sleep(max(pause, FORBIDDEN_PAUSE) if exc.status == 403 else pause)
                continue
            text = f"(the log could not be read: {reason(exc)})\n"
            break
        except TRANSPORT_ERRORS as exc:
            # A connection the API server dropped (it restarted): the next one is new.
            if attempt + 1 < READ_ATTEMPTS:
                await asyncio.sleep(READ_BACKOFF * 2**attempt)
                continue
            text = f"(the log could not be read: {exc or type(exc).__name__})\n"
    if past_deadline(job):
        text += f"Kubernetes killed the job after its {deadline} s timeout (DeadlineExceeded)\n"
    return JobOutcome(
        status=JobStatus.SUCCEEDED if succeeded else JobStatus.FAILED,
        exit_code=exit_code,
        log=text,
        finished_at=datetime.now(UTC),
        log_times=times,  # lines added here have none: they show the job's end
        started_at=started_at,
    )
