"""Connections to the outside systems the settings name: MinIO (objects, notifications, its admin API) and
Kubernetes. Each adapter is imported inside its opener, so a manager with neither (the embedded default)
never loads their client libraries: aiobotocore with botocore, miniopy-async, aiohttp and kubernetes-asyncio
were about half of an idle manager's memory."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from oscar_manager.settings import Settings

if TYPE_CHECKING:
    from oscar_manager.backends.base import Backend
    from oscar_manager.backends.exposed_kube import Resolve
    from oscar_manager.storage.base import ObjectStore
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
