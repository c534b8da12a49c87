"""How long what the cluster offers is kept, and what a failed read answers (``backends.kube_offers``).

The reads here are functions standing in for the node list: the control plane cannot be made to hang, or
its clock to move 30 s, on demand (the real list, and its refusal by RBAC, are in
``test_cluster_offers_kubernetes`` and ``test_rbac``)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from oscar_manager.backends.kube_answers import KubernetesError
from oscar_manager.backends.kube_offers import KeptOffers
from oscar_manager.domain.cluster import ClusterOffers

pytestmark = pytest.mark.asyncio

GPUS = ClusterOffers(gpu=True)


class Reads:
    """Answers each read with the next of ``answers`` (an exception is raised), counting the reads."""

    def __init__(self, *answers: ClusterOffers | BaseException, delay: float = 0.0) -> None:
        self.answers = list(answers)
        self.delay = delay
        self.count = 0

    async def __call__(self) -> ClusterOffers:
        self.count += 1
        await asyncio.sleep(self.delay)
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_kept_for_the_period_then_read_again() -> None:
    reads, clock = Reads(ClusterOffers(), GPUS), Clock()
    kept = KeptOffers(reads, kept=30, clock=clock)
    assert await kept.get() == ClusterOffers()
    clock.now += 29.9
    assert await kept.get() == ClusterOffers()
    assert reads.count == 1
    clock.now += 0.1
    assert await kept.get() == GPUS
    assert reads.count == 2


async def test_callers_arriving_together_share_one_read() -> None:
    reads = Reads(GPUS, delay=0.05)
    kept = KeptOffers(reads)
    assert await asyncio.gather(*(kept.get() for _ in range(5))) == [GPUS] * 5
    assert reads.count == 1


@pytest.mark.parametrize(
    "failure",
    [
        KubernetesError("Kubernetes refused to list the nodes: forbidden"),
        aiohttp.ClientConnectionError("connection refused"),
        ConnectionRefusedError(111, "Connection refused"),
    ],
)
async def test_a_failed_read_offers_nothing_logs_and_is_kept_for_the_period(
    failure: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    reads, clock = Reads(failure, GPUS), Clock()
    kept = KeptOffers(reads, kept=30, clock=clock)
    assert await kept.get() == ClusterOffers()
    assert str(failure.args[-1]) in caplog.text
    assert await kept.get() == ClusterOffers()  # not read again at every page load
    clock.now += 30
    assert await kept.get() == GPUS


async def test_a_read_that_hangs_offers_nothing_past_the_timeout(caplog: pytest.LogCaptureFixture) -> None:
    kept = KeptOffers(Reads(GPUS, delay=60), timeout=0.05)
    assert await asyncio.wait_for(kept.get(), timeout=5) == ClusterOffers()
    assert "unreachable" in caplog.text
