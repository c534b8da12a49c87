"""What the cluster offers (GPUs, interLink virtual nodes) for ``/system/config``, kept for some seconds.

The dashboard asks for ``/system/config`` on every page load: the nodes are listed once per period, not per
request, and callers arriving together share that one list. A list that fails (RBAC without ``list`` on
nodes, an API server away or too slow) answers that nothing is offered, logged, and is kept for the period
too: ``/system/config`` never fails for it, nor waits on a failing API server at every page load.

Upstream reads both once, at start-up (where a failed list also leaves them false); here they follow the
nodes that come and go, a period late at most.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from oscar_manager.backends.kube_answers import KubernetesError
from oscar_manager.backends.kube_client import TRANSPORT_ERRORS
from oscar_manager.domain.cluster import ClusterOffers

log = logging.getLogger(__name__)

KEPT_SECONDS = 30.0
# Past this the answer is "nothing offered": the page the dashboard loads must not hang on the list.
READ_TIMEOUT_SECONDS = 5.0


class KeptOffers:
    """``read``'s answer (``kube_nodes.cluster_offers``), read again once ``kept`` seconds have passed
    (``clock``: monotonic seconds)."""

    def __init__(
        self,
        read: Callable[[], Awaitable[ClusterOffers]],
        *,
        kept: float = KEPT_SECONDS,
        timeout: float = READ_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._kept = kept
        self._timeout = timeout
        self._clock = clock
        self._lock = asyncio.Lock()
        self._offers: ClusterOffers | None = None
        self._until = 0.0

    async def get(self) -> ClusterOffers:
        async with self._lock:  # one read for the callers that arrive while it runs
            if self._offers is None or self._clock() >= self._until:
                self._offers = await self._read_or_nothing()
                self._until = self._clock() + self._kept
            return self._offers

    async def _read_or_nothing(self) -> ClusterOffers:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._read()
        except KubernetesError as exc:
            log.warning("no GPUs nor interLink reported: %s", exc)
        except TRANSPORT_ERRORS as exc:  # TimeoutError among them: ours above, or the client's
            log.warning("no GPUs nor interLink reported: the Kubernetes API is unreachable: %r", exc)
        return ClusterOffers()
