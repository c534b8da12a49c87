"""Connections to the outside systems the settings name: MinIO (objects, notifications, its admin API) and
Kubernetes. Each adapter is imported inside its opener, so a manager with neither (the embedded default)
never loads their client libraries: aiobotocore with botocore, miniopy-async, aiohttp and kubernetes-asyncio
were about half of an idle manager's memory."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from oscar_manager.domain.events import InputRoute, ObjectEvent
from oscar_manager.domain.providers import ProviderRef
from oscar_manager.domain.s3_inputs import S3_INPUT_TYPE, QueueSource, queue_of
from oscar_manager.domain.service import Service
from oscar_manager.events.s3_sqs import S3QueueConsumer
from oscar_manager.operations.input_routes import InputRoutes
from oscar_manager.operations.intake import Intake
from oscar_manager.settings import Settings
from oscar_manager.storage.base import ObjectStore, StorageError
from oscar_manager.storage.providers import Stores
from oscar_manager.storage.queues import MessageQueue

if TYPE_CHECKING:
    from oscar_manager.backends.base import Backend
    from oscar_manager.backends.exposed_kube import Resolve
    from oscar_manager.storage.minio import MinioEndpoint, MinioExtras
    from oscar_manager.storage.minio_users import MinioUsers


@dataclass(frozen=True, slots=True)
class MinioConnection:
    """MinIO as ``minio.default``: its objects, its notifications, and (only when users get MinIO identities
    of their own) its users."""

    store: ObjectStore
    extras: MinioExtras
    users: MinioUsers | None


def minio_endpoint(settings: Settings) -> MinioEndpoint:
    from oscar_manager.storage.minio import MinioEndpoint

    return MinioEndpoint(
        url=settings.minio_endpoint,
        access_key=settings.minio_access_key,
        secret_key=settings.minio_secret_key,
        region=settings.minio_region,
        verify=settings.minio_tls_verify,
    )


async def open_minio(stack: contextlib.AsyncExitStack, settings: Settings) -> MinioConnection:
    """Clients for ``MINIO_ENDPOINT``, closed with ``stack``."""
    from oscar_manager.storage.minio import MinioExtras
    from oscar_manager.storage.minio_users import MinioUsers
    from oscar_manager.storage.s3 import S3ObjectStore

    endpoint = minio_endpoint(settings)
    store = await stack.enter_async_context(
        S3ObjectStore.connect(
            endpoint=endpoint.url,
            access_key=endpoint.access_key,
            secret_key=endpoint.secret_key,
            region=endpoint.region,
            verify=endpoint.verify,
        )
    )
    extras = await stack.enter_async_context(MinioExtras.connect(endpoint))
    users = None
    if settings.gives_users_minio_identities:
        users = await stack.enter_async_context(MinioUsers.connect(endpoint))
    return MinioConnection(store=store, extras=extras, users=users)


async def open_kubernetes(
    stack: contextlib.AsyncExitStack, settings: Settings, *, resolve: Resolve | None = None
) -> Backend:
    """The Kubernetes backend of the settings, its API client closed with ``stack``. ``resolve``: where
    the manager reaches an exposed service's pod address (``backends.exposed_kube``); only tests give
    one, to stand a loopback server in for pods that do not run, so it is no setting."""
    from oscar_manager.backends.kubernetes import KubernetesBackend
    from oscar_manager.backends.manifests import ClusterConfig

    return await stack.enter_async_context(
        KubernetesBackend.connect(
            kubeconfig=settings.oscar_kubeconfig,
            namespace=settings.oscar_services_namespace,
            cluster=ClusterConfig(
                manager_image=settings.oscar_manager_image,
                ttl_seconds=settings.ttl_job,
                job_timeout=math.ceil(settings.oscar_job_timeout),
                max_body_bytes=max(settings.oscar_max_body_bytes, settings.oscar_max_run_body_bytes),
                exposed_ingress=settings.oscar_exposed_ingress,
                ingress_host=settings.ingress_host,
                exposed_via_service={"auto": None, "service": True, "pods": False}[
                    settings.oscar_exposed_endpoints
                ],
                warm_max_pods=settings.oscar_warm_max_pods,
                warm_idle_seconds=settings.oscar_warm_idle_seconds,
            ),
            concurrency=settings.oscar_kubernetes_concurrency,
            resolve=resolve,
        )
    )


class S3QueueAccess:
    """How the consumer of Amazon S3 inputs (``events.s3_sqs``) reaches queues and buckets: SQS clients
    and the S3 notification rules are imported on first use, so a manager whose services read no queue
    never loads them; S3 stores come from ``stores`` (kept open, egress-guarded like a service's)."""

    def __init__(self, stores: Stores, *, timeout: float) -> None:
        self._stores = stores
        self._timeout = timeout

    def open_queue(self, source: QueueSource) -> contextlib.AbstractAsyncContextManager[MessageQueue]:
        from oscar_manager.storage.sqs import SqsQueue, queue_endpoint

        endpoint = queue_endpoint(source.queue, source.endpoint)
        return SqsQueue.connect(
            queue=source.queue,
            endpoint=source.endpoint,
            access_key=source.access_key,
            secret_key=source.secret_key,
            region=source.region,
            verify=source.verify,
            connect_timeout=self._timeout,
            guard=self._stores.egress.guard(f"queue {source.label}", endpoint),
        )

    async def open_store(self, source: QueueSource) -> ObjectStore:
        settings = {
            "endpoint": source.endpoint,
            "access_key": source.access_key,
            "secret_key": source.secret_key,
            "region": source.region,
            "verify": source.verify,
        }
        return await self._stores.s3(f"the S3 buckets of queue {source.label}", settings)

    async def check(self, service: Service) -> None:
        """Each queue the service's S3 inputs name exists and answers (``QueueNotFound`` is a 400, a
        queue that does not answer a 502), the error naming the provider's field."""
        for provider in sorted({io.storage_provider for io in service.input}):
            source = queue_of(service, provider)
            if source is None:
                continue
            try:
                async with self.open_queue(source) as queue:
                    await queue.arn()
            except StorageError as exc:
                field = f"storage_providers.s3.{ProviderRef(provider).id}.queue"
                raise type(exc)(f"{field}: {exc.message}") from None

    async def set_rules(self, store: ObjectStore, bucket: str, arn: str, prefixes: set[str]) -> bool:
        from oscar_manager.storage.s3 import S3ObjectStore
        from oscar_manager.storage.s3_queue_rules import set_queue_rules

        assert isinstance(store, S3ObjectStore)
        return await set_queue_rules(store, bucket, queue_arn=arn, prefixes=prefixes)


def s3_queue_consumer(
    access: S3QueueAccess, intake: Intake, *, inputs: InputRoutes, interval: float
) -> S3QueueConsumer:
    """The consumer of the queues the services' ``s3.<id>`` inputs name (idle while none does). ``inputs``:
    every input's route, kept between reads: they are asked for again after each change to services."""

    async def sources() -> tuple[list[Service], list[InputRoute]]:
        routes, services = await inputs.on_provider_type(S3_INPUT_TYPE)
        return services, routes

    async def enqueue(service: str, event: ObjectEvent) -> None:
        await intake.object_event(service=service, event=event)

    async def fail(services: list[str], key: str, payload: bytes, reason: str) -> None:
        await intake.failed_deliveries(services=services, dedup_key=key, payload=payload, reason=reason)

    return S3QueueConsumer(
        sources=sources,
        open_queue=access.open_queue,
        open_store=access.open_store,
        set_rules=access.set_rules,
        deliver=lambda events, select: intake.storage_events(events, sources=select),
        enqueue=enqueue,
        fail=fail,
        refresh_interval=interval,
    )
