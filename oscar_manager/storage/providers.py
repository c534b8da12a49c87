"""Which store serves which storage provider reference (``minio.default``, ``minio.<id>``, ``s3.<id>``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

from oscar_manager.domain.service import ProviderRef, Service
from oscar_manager.errors import BadRequest
from oscar_manager.storage.base import ObjectStore
from oscar_manager.storage.egress import SETTING, EgressPolicy

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
    provider, endpoint and credentials) until :meth:`close`. Those clients connect only where ``egress``
    allows, and never sign with the manager's own AWS credentials. ``timeout`` bounds connecting to such a
    provider and each wait for its answers (seconds), so one that never answers fails the operation."""

    def __init__(
        self, default: ObjectStore, *, timeout: float = 30.0, egress: EgressPolicy | None = None
    ) -> None:
        self.default = default
        self._timeout = timeout
        self.egress = egress if egress is not None else EgressPolicy()
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
            stores[str(reference)] = await self._open(str(reference), s3_settings(reference, entry))

        def resolve(provider: str) -> ObjectStore:
            store = stores.get(str(ProviderRef(provider)))
            if store is None:
                raise BadRequest(f"storage provider {provider!r} is not supported by this manager")
            return store

        return resolve

    async def s3(self, provider: str, settings: dict[str, Any]) -> ObjectStore:
        """The store of an S3 endpoint named by ``settings`` (``S3ObjectStore.connect`` arguments) for
        ``provider`` (as named in messages), opened once and kept like a service's."""
        return await self._open(provider, settings)

    def check_endpoints(self, service: Service) -> None:
        """Refuse (400, naming the field) a declared endpoint that no connection could ever be allowed
        to: an IP literal the egress rule refuses, or ``localhost``."""
        for kind in S3_PROVIDER_TYPES:
            for provider_id, entry in service.storage_providers.get(kind, {}).items():
                if f"{kind}.{provider_id}" == DEFAULT_PROVIDER:
                    continue  # the operator's own (normalisation replaced whatever the service said)
                endpoint = str(entry.get("endpoint") or "")
                reason = self.egress.endpoint_refusal(endpoint) if endpoint else None
                if reason is not None:
                    raise BadRequest(
                        f"storage_providers.{kind}.{provider_id}.endpoint: {endpoint!r} is {reason}, "
                        f"which the manager does not connect to (the operator may allow it in {SETTING})"
                    )

    async def _open(self, provider: str, settings: dict[str, Any]) -> ObjectStore:
        identity = (provider, *sorted(settings.items()))
        async with self._lock:
            store = self._opened.get(identity)
            if store is None:
                # Here, not at the top: the S3 stack (aiobotocore, botocore) is tens of megabytes that a
                # manager whose services name no other provider never needs.
                from oscar_manager.storage.s3 import S3ObjectStore

                guard = self.egress.guard(provider, settings["endpoint"])
                connect = S3ObjectStore.connect(
                    **settings,
                    connect_timeout=self._timeout,
                    read_timeout=self._timeout,
                    guard=guard,
                    anonymous=True,
                )
                store = await self._stack.enter_async_context(connect)
                self._opened[identity] = store
            return store

    async def close(self) -> None:
        await self._stack.aclose()
        self._opened.clear()
