"""Reading a finished job's pod and log (``kube_jobs.job_outcome``) across an API server restart: a dropped
connection or a 403 of a server whose RBAC is not read yet is tried again, not taken as the job's end.
A double of the two calls, since a real API server cannot be made to drop exactly these (the restarts
themselves are in ``test_kubernetes_backend.py``)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from oscar_manager.backends import kube_jobs, manifests
from oscar_manager.domain.jobs import JobStatus

pytestmark = pytest.mark.asyncio


class FlakyCore:
    """Fails the first ``failures`` calls with the given errors, then answers."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)

    async def list_namespaced_pod(self, namespace: str, **_: Any) -> client.V1PodList:
        self._maybe_fail()
        terminated = client.V1ContainerStateTerminated(exit_code=0)
        status = client.V1ContainerStatus(
            name=manifests.CONTAINER,
            state=client.V1ContainerState(terminated=terminated),
            image="img",
            image_id="",
            ready=False,
            restart_count=0,
        )
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name="job-1-abc"),
            status=client.V1PodStatus(container_statuses=[status]),
        )
        return client.V1PodList(items=[pod])

    async def read_namespaced_pod_log(self, name: str, namespace: str, **_: Any) -> str:
        self._maybe_fail()
        return "the answer\n"


def finished_job() -> client.V1Job:
    condition = client.V1JobCondition(type="Complete", status="True")
    return client.V1Job(
        metadata=client.V1ObjectMeta(name="job-1"),
        spec=client.V1JobSpec(template=client.V1PodTemplateSpec()),
        status=client.V1JobStatus(conditions=[condition]),
    )


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube_jobs, "READ_BACKOFF", 0.001)
    monkeypatch.setattr(kube_jobs, "FORBIDDEN_PAUSE", 0.001)


@pytest.mark.parametrize(
    "failure",
    [
        aiohttp.ClientPayloadError("Response payload is not completed"),
        aiohttp.ServerDisconnectedError(),
        ApiException(status=403, reason="Forbidden"),
        ApiException(status=503, reason="Service Unavailable"),
    ],
)
async def test_a_passing_failure_is_tried_again(failure: BaseException) -> None:
    core = FlakyCore(failure)
    outcome = await kube_jobs.job_outcome(core, "ns", finished_job(), timestamps=False)  # type: ignore[arg-type]
    assert (outcome.status, outcome.exit_code, outcome.log) == (JobStatus.SUCCEEDED, 0, "the answer\n")


async def test_a_lasting_failure_is_said_in_the_log() -> None:
    core = FlakyCore(*[aiohttp.ServerDisconnectedError()] * kube_jobs.READ_ATTEMPTS)
    outcome = await kube_jobs.job_outcome(core, "ns", finished_job(), timestamps=False)  # type: ignore[arg-type]
    assert outcome.log.startswith("(the log could not be read:")
    assert core.calls == kube_jobs.READ_ATTEMPTS


async def test_a_lasting_refusal_is_not_tried_forever() -> None:
    core = FlakyCore(*[ApiException(status=403, reason="Forbidden")] * 10)
    outcome = await kube_jobs.job_outcome(core, "ns", finished_job(), timestamps=False)  # type: ignore[arg-type]
    assert "could not be read" in outcome.log
    assert core.calls == kube_jobs.READ_ATTEMPTS
