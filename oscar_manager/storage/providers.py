"""Which store serves which storage provider reference (``minio.default``, ``minio.<id>``, ``s3.<id>``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

from oscar_manager.domain.service import ProviderRef, Service
from oscar_manager.errors import BadRequest
from oscar_manager.storage.base import ObjectStore
from oscar_manager.storage.s3 import S3ObjectStore

DEFAULT_PROVIDER = "minio.default"
# faas-supervisor's endpoint for a MinIO provider that names none.
DEFAULT_MINIO_ENDPOINT = "http://minio-service.minio:9000"
S3_PROVIDER_TYPES = ("minio", "s3")

StoreResolver = Callable[[str], ObjectStore]


def s3_settings(reference: ProviderRef, entry: Mapping[str, Any]) -> dict[str, Any]:
    """``S3ObjectStore.connect`` arguments for a ``minio.<id>`` or ``s3.<id>`` entry of
    ``storage_providers`` (the keys clients write: endpoint, access_key, secret_key, region, verify).
    An ``s3`` provider without an endpoint is AWS itself."""
    endpoint = str(entry.get("endpoint") or "")
    if reference.type == "minio" and not endpoint:
        endpoint = DEFAULT_MINIO_ENDPOINT
    verify = entry.get("verify", True)
    return {
        "endpoint": endpoint,
        "access_key": str(entry.get("access_key") or ""),
        "secret_key": str(entry.get("secret_key") or ""),
        "region": str(entry.get("region") or "us-east-1"),
        "verify": verify if isinstance(verify, bool) else str(verify).lower() != "false",
    }


class Stores:
    """Resolve provider references to stores. ``minio.default`` is the manager's own storage: local
    folders on the embedded default, MinIO when ``MINIO_ENDPOINT`` is set. Other MinIO and S3 providers
    come from a service's ``storage_providers``; their clients are opened on first use and kept (one per
    distinct endpoint and credentials) until :meth:`close`. ``timeout`` bounds connecting to such a
    provider and each wait for its answers (seconds), so one that never answers fails the operation."""

    def __init__(self, default: ObjectStore, *, timeout: float = 30.0) -> None:
        self.default = default
        self._timeout = timeout
        self._opened: dict[tuple[Any, ...], ObjectStore] = {}
        self._stack = contextlib.AsyncExitStack()
        self._lock = asyncio.Lock()

    def __call__(self, provider: str) -> ObjectStore:
        """The store of a provider that needs no service definition (only ``minio.default``)."""
        reference = str(ProviderRef(provider))
        if reference != DEFAULT_PROVIDER:
            raise BadRequest(f"storage provider {reference!r} needs a service's storage_providers")
        return self.default

    async def for_service(self, service: Service) -> StoreResolver:
        """A resolver for every provider ``service``'s inputs and outputs use, clients opened."""
        stores: dict[str, ObjectStore] = {DEFAULT_PROVIDER: self.default}
        for io_config in [*service.input, *service.output]:
            reference = ProviderRef(io_config.storage_provider)
            if str(reference) in stores or reference.type not in S3_PROVIDER_TYPES:
                continue
            entry = service.storage_providers.get(reference.type, {}).get(reference.id)
            if entry is None:
                raise BadRequest(f"storage provider {str(reference)!r} is not declared in storage_providers")
            stores[str(reference)] = await self._open(s3_settings(reference, entry))

        def resolve(provider: str) -> ObjectStore:
            store = stores.get(str(ProviderRef(provider)))
            if store is None:
                raise BadRequest(f"storage provider {provider!r} is not supported by this manager")
            return store

        return resolve

    async def _open(self, settings: dict[str, Any]) -> ObjectStore:
        identity = tuple(sorted(settings.items()))
        async with self._lock:
            store = self._opened.get(identity)
            if store is None:
                store = await self._stack.enter_async_context(
                    S3ObjectStore.connect(
                        **settings, connect_timeout=self._timeout, read_timeout=self._timeout
                    )
                )
                self._opened[identity] = store
            return store

    async def close(self) -> None:
        await self._stack.aclose()
        self._opened.clear()
