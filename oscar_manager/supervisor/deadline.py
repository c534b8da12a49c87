"""One time limit for a whole job: staging in, the script, staging out and the response.

A storage provider that never answers must fail its own job within the job's time, naming the provider,
rather than hold the job (and whatever slot it occupies) past it. Each step gets what is left.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping
from typing import TypeVar

from oscar_manager.errors import OscarError

_T = TypeVar("_T")


class StagingTimeout(OscarError):
    """A storage step did not finish within the job's time limit."""

    status_code = 504


class Deadline:
    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._end = None if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float | None:
        """Seconds left (never negative), or None without a limit."""
        return None if self._end is None else max(self._end - time.monotonic(), 0.0)

    async def run(self, what: str, step: Awaitable[_T]) -> _T:
        """Await ``step`` within the time left; past it, cancel it and fail with a message that says what
        was under way (``what``: "downloading 'b/k' from 'minio.x'")."""
        scope = asyncio.timeout(self.remaining())
        try:
            async with scope:
                return await step
        except TimeoutError:
            if not scope.expired():
                raise  # the step's own timeout, not ours
            raise StagingTimeout(f"{what} did not finish within the {self.seconds:g} s time limit") from None


NO_DEADLINE = Deadline(None)

# In a Kubernetes Job: the job's time limit in seconds, which the supervisor keeps itself, so that the pod
# ends as any failed run does, with its log (a Job killed at its activeDeadlineSeconds loses its pod, and
# the log with it, before the manager can copy it; that deadline stays, later, as a backstop).
DEADLINE_ENV = "OSCAR_JOB_TIMEOUT"


def from_environment(env: Mapping[str, str]) -> Deadline:
    value = env.get(DEADLINE_ENV, "")
    try:
        return Deadline(float(value)) if value else NO_DEADLINE
    except ValueError:
        return NO_DEADLINE
