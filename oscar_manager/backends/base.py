"""The ``Backend`` protocol: where jobs and sync runs execute (local processes or Kubernetes)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from oscar_manager.backends.exposed import DeploymentState, Exposer
from oscar_manager.domain.cluster import ClusterOffers, NodeStatus
from oscar_manager.domain.jobs import JobOutcome
from oscar_manager.domain.service import Service
from oscar_manager.errors import OscarError
from oscar_manager.supervisor.answer import SyncAnswer


class BackendUnavailable(OscarError):
    """The backend could not take the job now; the dispatcher retries with backoff."""

    status_code = 503


class SubmissionRefused(OscarError):
    """The backend refused the job for good (an invalid manifest, no permission): retrying cannot help."""

    status_code = 502


class RunTimeout(OscarError):
    status_code = 504


class ScriptFailed(OscarError):
    """A sync run whose script exited non-zero: the caller sees the exit code and the script's output."""

    status_code = 500


@dataclass(frozen=True, slots=True)
class JobRequest:
    job_id: str
    service: Service
    payload: bytes
    attempt: int


@dataclass(frozen=True, slots=True)
class SyncRequest:
    service: Service
    body: bytes
    timeout: float
    # A storage event in the body may name objects outside the service's inputs (the admin's run).
    any_bucket: bool = False
    # Past this many bytes (before base64) the answer is ResponseTooLarge; None: no limit.
    max_response_bytes: int | None = None


class JobReporter(Protocol):
    """Where a backend reports job progress (the registry, in the manager)."""

    async def started(self, job_id: str, *, at: datetime) -> None: ...

    async def finished(self, job_id: str, *, outcome: JobOutcome) -> None: ...

    async def retry_later(self, job_id: str, *, reason: str) -> None:
        """The job could not run for a reason outside it (the store is read-only or full): run it again
        after a backoff, instead of recording an end."""

    async def ended(self, job_ids: list[str]) -> set[str]:
        """Those of ``job_ids`` whose end is recorded already (a backend need not report them again)."""
        ...


@runtime_checkable
class WarmScaling(Protocol):
    """A backend with warm pods (Kubernetes, ``backends.warm_kube``): their scale-down is the leader's
    work, every ``warm_scale_interval`` seconds (``backends.warm_scaling``), so that two replicas never
    undo each other's choices; their state is a service's deployment status."""

    warm_scale_interval: float

    async def scale_down_warm_pods(self) -> int: ...

    async def warm_state(self, service: Service) -> DeploymentState | None:
        """The state of the service's warm pods (None: it has none)."""
        ...


class Backend(Protocol):
    # True when an accepted submission survives a manager crash (a Kubernetes Job object); False when it
    # lives in this process only (local jobs), so its event must stay claimed until the job finishes.
    durable_submissions: bool
    # True when its jobs' starts and ends come from following the cluster (:meth:`follow_jobs`), which
    # one manager of several does; False when each process reports the jobs it runs (local jobs).
    follows_jobs: bool
    # Its exposed services' side (``backends.exposed``); None: it runs none (yet).
    exposed: Exposer | None

    async def start(self, reporter: JobReporter) -> None: ...

    async def stop(self) -> None: ...

    async def follow_jobs(self, up: Callable[[], None]) -> None:
        """Report the starts and ends of every manager's jobs to the reporter given to :meth:`start`,
        until cancelled (calling ``up`` once following): the leader's work, when ``follows_jobs``."""

    def free_slots(self) -> int:
        """How many more jobs it would accept right now (the dispatcher claims no more than that)."""
        ...

    async def submit(self, request: JobRequest) -> None:
        """Accept a job; idempotent per ``job_id``. Raise ``BackendUnavailable`` to be retried."""

    async def run_sync(self, request: SyncRequest) -> SyncAnswer:
        """Run the service on ``body`` and return what the supervisor renders (to be streamed, then
        closed); ``RunTimeout`` past timeout, ``ResponseTooLarge`` past ``max_response_bytes``."""

    async def cancel(self, job_id: str) -> None:
        """Stop a job if it is running or queued; nothing if it is unknown."""

    async def prepare_service(self, service: Service, *, previous: Service | None = None) -> None:
        """Whatever the backend keeps per service (Kubernetes: its ConfigMap and Secret), created or
        replaced (``previous``: the version an update replaces); raising fails the create or update,
        which is then rolled back."""

    async def remove_service(self, service: Service) -> None:
        """Remove what ``prepare_service`` made, and the service's jobs."""

    async def nodes(self) -> list[NodeStatus]:
        """The machines jobs run on, with their capacity, what running jobs request of them and their
        measured usage (None where nothing measures it)."""
        ...

    async def offers(self) -> ClusterOffers:
        """What jobs may ask for beyond CPU and memory (``/system/config``): cheap enough for every request
        (kept for a while where finding out costs a call), and never raising (nothing offered instead)."""
        ...

    def describe(self) -> dict[str, Any]: ...
