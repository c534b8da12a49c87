"""Dependencies shared by the routers, declared once as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import BackgroundTasks, Depends, Request

from oscar_manager.auth.authenticator import Authenticator
from oscar_manager.backends.base import Backend
from oscar_manager.domain.principal import Principal
from oscar_manager.errors import PayloadTooLarge
from oscar_manager.operations import Database, Transaction
from oscar_manager.operations.buckets import BucketPolicies
from oscar_manager.operations.identities import StorageIdentities
from oscar_manager.operations.intake import Intake
from oscar_manager.operations.service_listing import RenderedServices
from oscar_manager.operations.services import InputNotifications, Provisioning
from oscar_manager.settings import Settings
from oscar_manager.storage.presign import PresignSigner
from oscar_manager.storage.providers import Stores


# Dependencies are ``async def``: FastAPI runs plain ``def`` ones on a worker thread, a hop per request each.
async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


async def get_rendered_services(request: Request) -> RenderedServices:
    rendered: RenderedServices = request.app.state.rendered_services
    return rendered


async def get_backend(request: Request) -> Backend:
    backend: Backend = request.app.state.backend
    return backend


async def get_stores(request: Request) -> Stores:
    stores: Stores = request.app.state.stores
    return stores


async def get_intake(request: Request) -> Intake:
    intake: Intake = request.app.state.intake
    return intake


async def get_presigner(request: Request) -> PresignSigner:
    presigner: PresignSigner = request.app.state.presigner
    return presigner


async def get_notifications(request: Request) -> InputNotifications | None:
    notifications: InputNotifications | None = request.app.state.webhook_rules
    return notifications


async def get_bucket_policies(request: Request) -> BucketPolicies | None:
    policies: BucketPolicies | None = request.app.state.bucket_policies
    return policies


async def get_provisioning(request: Request) -> Provisioning:
    return Provisioning(
        stores=await get_stores(request),
        backend=await get_backend(request),
        notifications=await get_notifications(request),
        policies=await get_bucket_policies(request),
        queues=getattr(request.app.state, "queue_inputs", None),
        brokers=getattr(request.app.state, "kafka_brokers", None),
    )


async def after_services_change(request: Request, background: BackgroundTasks) -> None:
    """Once the response is out (so the transaction is committed), tell the listeners."""
    changed: Callable[[], None] = request.app.state.services_changed
    background.add_task(changed)


async def get_authenticator(request: Request) -> Authenticator:
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator


async def get_transaction(request: Request) -> AsyncIterator[Transaction]:
    """The request's unit of work: committed when the route returns, before the response is sent."""
    async with (await get_database(request)).transaction() as tx:
        yield tx


async def get_reading(request: Request) -> AsyncIterator[Transaction]:
    """For routes that write nothing: on SQLite they neither wait for nor hold up the writers
    (``Database.reading``); each statement sees what is committed when it runs."""
    async with (await get_database(request)).reading() as tx:
        yield tx


async def get_identities(request: Request) -> StorageIdentities | None:
    identities: StorageIdentities | None = request.app.state.identities
    return identities


async def authenticate(request: Request) -> Principal:
    """The caller; an OIDC user's own MinIO user is made on their first request (issue 16)."""
    caller = await (await get_authenticator(request)).authenticate(request.headers.get("authorization"))
    identities = await get_identities(request)
    if identities is not None and not caller.is_admin:
        await identities.ensure(caller.uid)
    return caller


async def read_body(request: Request) -> bytes:
    """The whole body, refused with 413 as soon as it passes ``OSCAR_MAX_BODY_BYTES``."""
    return await read_limited(request, (await get_settings(request)).oscar_max_body_bytes)


async def read_run_body(request: Request) -> bytes:
    """A sync invocation's body (usually a base64 file), limited by ``OSCAR_MAX_RUN_BODY_BYTES``."""
    return await read_limited(request, (await get_settings(request)).oscar_max_run_body_bytes)


async def read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
BackendDep = Annotated[Backend, Depends(get_backend)]
RenderedServicesDep = Annotated[RenderedServices, Depends(get_rendered_services)]
StoresDep = Annotated[Stores, Depends(get_stores)]
IntakeDep = Annotated[Intake, Depends(get_intake)]
PresignerDep = Annotated[PresignSigner, Depends(get_presigner)]
ProvisioningDep = Annotated[Provisioning, Depends(get_provisioning)]
AuthenticatorDep = Annotated[Authenticator, Depends(get_authenticator)]
BucketPoliciesDep = Annotated[BucketPolicies | None, Depends(get_bucket_policies)]
IdentitiesDep = Annotated[StorageIdentities | None, Depends(get_identities)]
RunBodyDep = Annotated[bytes, Depends(read_run_body)]
TransactionDep = Annotated[Transaction, Depends(get_transaction, scope="function")]
ReadingDep = Annotated[Transaction, Depends(get_reading, scope="function")]
CallerDep = Annotated[Principal, Depends(authenticate)]
BodyDep = Annotated[bytes, Depends(read_body)]
