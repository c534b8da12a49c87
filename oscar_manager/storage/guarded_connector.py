"""aiohttp's connector held to a provider's egress rule (``storage.egress``): every connection it opens
resolves here first, and only the addresses the guard admits are connected (IP literals too: aiohttp
resolves nothing for those, the check still runs). The S3 client (``storage.s3_client``) and the WebDAV
sink (``storage.webdav``) both connect through it, so one rule holds for every provider a service names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.abc import ResolveResult

from oscar_manager.storage.egress import ConnectGuard

if TYPE_CHECKING:
    from aiohttp.tracing import Trace

# The guard overrides the connector's resolution step: fail closed if aiohttp ever drops it.
if not callable(getattr(aiohttp.TCPConnector, "_resolve_host", None)):  # pragma: no cover
    raise ImportError("aiohttp.TCPConnector._resolve_host is gone: the provider egress guard cannot work")


class GuardedConnector(aiohttp.TCPConnector):
    """Connects only to the resolved addresses its guard admits (every connection resolves here first)."""

    def __init__(self, guard: ConnectGuard, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._guard = guard

    async def _resolve_host(
        self, host: str, port: int, traces: Sequence[Trace] | None = None
    ) -> list[ResolveResult]:
        resolved = await super()._resolve_host(host, port, traces=traces)
        admitted = [item for item in resolved if self._guard.check(host, item["host"]) is None]
        if not admitted:
            first = resolved[0]["host"] if resolved else host
            raise self._guard.refused(host, first, self._guard.check(host, first) or "refused")
        return admitted
