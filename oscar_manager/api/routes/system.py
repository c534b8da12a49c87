from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from oscar_manager.api.deps import (
    BackendDep,
    CallerDep,
    IdentitiesDep,
    IntakeDep,
    SettingsDep,
    StoresDep,
    TransactionDep,
)
from oscar_manager.operations import status, system
from oscar_manager.settings import Settings

router = APIRouter(prefix="/system", tags=["system"])


@router.get("/info", summary="Version and platform of this manager")
async def get_info(
    request: Request, backend: BackendDep, settings: SettingsDep, intake: IntakeDep, _caller: CallerDep
) -> dict[str, Any]:
    commit: str = request.app.state.git_commit
    status: dict[str, Any] = request.app.state.event_status()
    return system.info(
        commit=commit,
        execution=backend.describe(),
        storage=system.storage(settings, events=intake.counters, status=status),
    )


# oscar-python asks for ``/system/config/`` (trailing slash), others without: serve both directly.
@router.get("/config", summary="Cluster configuration and the MinIO provider clients use")
@router.get("/config/", include_in_schema=False)
async def get_config(
    request: Request,
    settings: SettingsDep,
    caller: CallerDep,
    identities: IdentitiesDep,
    backend: BackendDep,
) -> dict[str, Any]:
    # An OIDC user's own MinIO keys, their MinIO user checked again: the keys handed out work.
    user_keys = await identities.keys(caller.uid) if identities is not None and not caller.is_admin else None
    return system.config(
        settings,
        principal=caller,
        offers=await backend.offers(),
        s3_endpoint=s3_endpoint(settings, request),
        user_keys=user_keys,
    )


def s3_endpoint(settings: Settings, request: Request) -> str:
    """The S3 face as the caller reaches it: the configured public URL, else the host the caller called
    the manager by, on the S3 port. Empty when the manager serves no S3."""
    if not settings.serves_s3:
        return ""
    if settings.oscar_s3_public_url:
        return settings.oscar_s3_public_url.rstrip("/")
    host = request.url.hostname or settings.oscar_host
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    return f"{request.url.scheme}://{host}:{settings.oscar_s3_port}"


@router.get("/status", summary="The cluster's nodes, the manager, and (admin) job and storage counts")
async def get_status(
    caller: CallerDep, tx: TransactionDep, settings: SettingsDep, backend: BackendDep, stores: StoresDep
) -> dict[str, Any]:
    return await status.status(tx, principal=caller, settings=settings, backend=backend, store=stores.default)
