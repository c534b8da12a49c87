"""A JobReporter that keeps what a backend reported, for tests that drive a backend without a registry."""

from __future__ import annotations

from datetime import datetime

from oscar_manager.domain.jobs import JobOutcome


class RecordingReporter:
    def __init__(self) -> None:
        self.started_jobs: list[str] = []
        self.outcomes: dict[str, JobOutcome] = {}
        self.retries: dict[str, str] = {}

    async def started(self, job_id: str, *, at: datetime) -> None:
        self.started_jobs.append(job_id)

    async def finished(self, job_id: str, *, outcome: JobOutcome) -> None:
        self.outcomes[job_id] = outcome

    async def retry_later(self, job_id: str, *, reason: str) -> None:
        self.retries[job_id] = reason

    async def ended(self, job_ids: list[str]) -> set[str]:
        return set(job_ids) & self.outcomes.keys()
