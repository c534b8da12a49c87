"""Which store serves which storage provider reference (``minio.default``, ``minio.<id>``, ``s3.<id>``), and
which sink takes the outputs of a write-only one (``webdav.<id>``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from oscar_manager.domain.providers import ProviderRef
from oscar_manager.domain.service import Service
from oscar_manager.errors import BadRequest
from oscar_manager.storage.base import ObjectSink, ObjectStore
from oscar_manager.storage.egress import SETTING, EgressPolicy

DEFAULT_PROVIDER = "minio.default"
# faas-supervisor's endpoint for a MinIO provider that names none.
DEFAULT_MINIO_ENDPOINT = "http://minio-service.minio:9000"
S3_PROVIDER_TYPES: tuple[str, ...] = ("minio", "s3")
WEBDAV = "webdav"
# The provider types a job's outputs can be written to (not ``onedata``: skipped with a warning).
SINK_PROVIDER_TYPES: tuple[str, ...] = (*S3_PROVIDER_TYPES, WEBDAV)

StoreResolver = Callable[[str], ObjectStore]
SinkResolver = Callable[[str], ObjectSink]


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


@dataclass(frozen=True, slots=True)
class WebDavSettings:
    """A ``webdav.<id>`` entry as the sink uses it: the base URL, Basic credentials, TLS verification."""

    url: str
    login: str
    password: str
    verify: bool


def webdav_settings(entry: Mapping[str, Any]) -> WebDavSettings:
    """A ``webdav.<id>`` entry of ``storage_providers`` (``hostname, login, password``, optional ``verify``,
    true unless false). ``hostname`` is a host with an optional port and base path, reached over HTTPS as
    faas-supervisor does; one that names its scheme (``http://...``) keeps it."""
    hostname = str(entry.get("hostname") or "").strip()
    url = hostname if hostname.lower().startswith(("http://", "https://")) else f"https://{hostname}"
    verify = entry.get("verify", True)
    return WebDavSettings(
        url=url.rstrip("/"),
        login=str(entry.get("login") or ""),
        password=str(entry.get("password") or ""),
        verify=verify if isinstance(verify, bool) else str(verify).lower() != "false",
    )


class ServiceProviders:
    """The stores and sinks of one service's providers: ``self(provider)`` for the buckets a job reads
    (and writes), :meth:`sink` for where its outputs go, write-only providers included."""

    def __init__(self, stores: Mapping[str, ObjectStore], sinks: Mapping[str, ObjectSink]) -> None:
        self._stores = dict(stores)
        self._sinks = dict(sinks)

    def __call__(self, provider: str) -> ObjectStore:
        store = self._stores.get(str(ProviderRef(provider)))
        if store is None:
            raise BadRequest(f"storage provider {provider!r} is not configured for this service")
        return store

    def sink(self, provider: str) -> ObjectSink:
        reference = str(ProviderRef(provider))
        sink = self._sinks.get(reference)
        return sink if sink is not None else self(reference)


class Stores:
    """Resolve provider references to stores. ``minio.default`` is the manager's own storage: local
    folders on the embedded default, MinIO when ``MINIO_ENDPOINT`` is set. Other MinIO and S3 providers,
    and WebDAV ones for outputs, come from a service's ``storage_providers``; their clients are opened on
    first use and kept (one per provider, endpoint and credentials) until :meth:`close`. Those clients
    connect only where ``egress`` allows, and never sign with the manager's own AWS credentials.
    ``timeout`` bounds connecting to such a provider and each wait for its answers (seconds), so one that
    never answers fails the operation."""

    def __init__(
        self, default: ObjectStore, *, timeout: float = 30.0, egress: EgressPolicy | None = None
    ) -> None:
        self.default = default
        self._timeout = timeout
        self.egress = egress if egress is not None else EgressPolicy()
        self._opened: dict[tuple[Any, ...], ObjectStore] = {}
        self._opened_sinks: dict[tuple[str, WebDavSettings], ObjectSink] = {}
        self._stack = contextlib.AsyncExitStack()
        self._lock = asyncio.Lock()

    def __call__(self, provider: str) -> ObjectStore:
        """The store of a provider that needs no service definition (only ``minio.default``)."""
        reference = str(ProviderRef(provider))
        if reference != DEFAULT_PROVIDER:
            raise BadRequest(f"storage provider {reference!r} needs a service's storage_providers")
        return self.default

    async def for_service(self, service: Service) -> ServiceProviders:
        """The stores and sinks of every provider ``service``'s inputs and outputs use, clients opened."""
        stores: dict[str, ObjectStore] = {DEFAULT_PROVIDER: self.default}
        sinks: dict[str, ObjectSink] = {}
        # WebDAV inputs are fed by others (DCNiOS): only outputs open a sink.
        used = [(io, S3_PROVIDER_TYPES) for io in service.input]
        used += [(io, SINK_PROVIDER_TYPES) for io in service.output]
        for io_config, types in used:
            reference = ProviderRef(io_config.storage_provider)
            name = str(reference)
            if name in stores or name in sinks or reference.type not in types:
                continue
            entry = service.storage_providers.get(reference.type, {}).get(reference.id)
            if entry is None:
                raise BadRequest(f"storage provider {name!r} is not declared in storage_providers")
            if reference.type == WEBDAV:
                sinks[name] = await self._open_webdav(name, webdav_settings(entry))
            else:
                stores[name] = await self._open(name, s3_settings(reference, entry))
        return ServiceProviders(stores, sinks)

    async def s3(self, provider: str, settings: dict[str, Any]) -> ObjectStore:
        """The store of an S3 endpoint named by ``settings`` (``S3ObjectStore.connect`` arguments) for
        ``provider`` (as named in messages), opened once and kept like a service's."""
        return await self._open(provider, settings)

    def check_endpoints(self, service: Service) -> None:
        """Refuse (400, naming the field) a declared endpoint that no connection could ever be allowed
        to: an IP literal the egress rule refuses, or ``localhost``."""
        for kind in SINK_PROVIDER_TYPES:
            field = "hostname" if kind == WEBDAV else "endpoint"
            for provider_id, entry in service.storage_providers.get(kind, {}).items():
                if f"{kind}.{provider_id}" == DEFAULT_PROVIDER:
                    continue  # the operator's own (normalisation replaced whatever the service said)
                if not entry.get(field):
                    continue
                endpoint = webdav_settings(entry).url if kind == WEBDAV else str(entry[field])
                reason = self.egress.endpoint_refusal(endpoint)
                if reason is not None:
                    raise BadRequest(
                        f"storage_providers.{kind}.{provider_id}.{field}: {entry[field]!r} is {reason}, "
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

    async def _open_webdav(self, provider: str, settings: WebDavSettings) -> ObjectSink:
        identity = (provider, settings)
        async with self._lock:
            sink = self._opened_sinks.get(identity)
            if sink is None:
                # Here, not at the top: aiohttp is for the services that name such a provider.
                from oscar_manager.storage.webdav import WebDavSink

                guard = self.egress.guard(provider, settings.url)
                connect = WebDavSink.connect(provider, settings, timeout=self._timeout, guard=guard)
                sink = await self._stack.enter_async_context(connect)
                self._opened_sinks[identity] = sink
            return sink

    async def close(self) -> None:
        await self._stack.aclose()
        self._opened.clear()
        self._opened_sinks.clear()
