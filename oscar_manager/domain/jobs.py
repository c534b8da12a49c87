"""Jobs: one run of a service's script for one event."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from oscar_manager.domain.logtimes import LineTimes


class JobStatus(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED)


def job_name(service: str, dedup_key: str) -> str:
    """The job's id, derived from its event's dedup key so a redelivered event names the same job.

    ``<service>-<16 hex>`` is at most 56 characters: a valid Kubernetes Job name whose pods' names and
    ``job-name`` labels stay within 63.
    """
    return f"{service}-{hashlib.sha256(dedup_key.encode()).hexdigest()[:16]}"


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: str
    service: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    exit_code: int | None
    attempts: int
    # The OIDC user who started it through ``/job``; None for events, service tokens and the admin.
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How a run ended, as the backend reports it."""

    status: JobStatus
    exit_code: int | None
    log: str
    finished_at: datetime
    # When each line of ``log`` was written; None when not known (such lines show the job's end).
    log_times: LineTimes | None = None
    # When it started, where the backend knows (a job that ended before its start was seen gets it).
    started_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class JobLog:
    """A job's log as kept, with what is needed to show it with times."""

    text: str
    times: LineTimes | None
    # The time given to lines whose own is not known: when the job ended (or started, or was created).
    fallback: datetime
