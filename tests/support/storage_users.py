"""OIDC users with MinIO identities of their own (issue 16), for tests against the real MinIO: the settings
that turn them on, fresh users of the fake issuer, their keys as ``/system/config`` gives them, and S3
clients holding those keys."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import botocore.exceptions
import httpx
import pytest
from miniopy_async.credentials.providers import StaticProvider
from miniopy_async.minioadmin import MinioAdmin

from oscar_manager.settings import Settings
from tests.support.app import bearer
from tests.support.minio import MinioServer, boto3_client
from tests.support.oidc import ALLOWED_VO, FakeIssuer, with_egi


@contextlib.asynccontextmanager
async def minio_admin(minio: MinioServer) -> AsyncIterator[MinioAdmin]:
    """MinIO's admin API as the root, to look (and act) behind the manager's back."""
    async with aiohttp.ClientSession() as session:
        credentials = StaticProvider(minio.access_key, minio.secret_key)
        yield MinioAdmin(minio.address, credentials=credentials, secure=False, session=session)


def oidc_on(settings: Settings, minio: MinioServer, **overrides: Any) -> Settings:
    return with_egi(settings).model_copy(
        update={
            "minio_endpoint": minio.endpoint,
            "minio_access_key": minio.access_key,
            "minio_secret_key": minio.secret_key,
            "oscar_minio_listen": False,
            "oscar_reconcile_interval": 0,
            **overrides,
        }
    )


def new_user(egi: FakeIssuer, name: str) -> tuple[str, dict[str, str]]:
    """A fresh subject (the session's MinIO outlives each test), as EGI names them, and its headers."""
    subject = f"{name}-{uuid.uuid4().hex[:12]}@egi.eu"
    egi.add_user(subject, ALLOWED_VO)
    return subject, bearer(egi.token(subject))


async def provider(http: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    answer = await http.get("/system/config", headers=headers)
    assert answer.status_code == 200, answer.text
    keys: dict[str, Any] = answer.json()["minio_provider"]
    return keys


def s3_as(minio: MinioServer, keys: dict[str, Any]) -> Any:
    return boto3_client(minio.endpoint, keys["access_key"], keys["secret_key"])


def s3_error(call: Any, **kwargs: Any) -> str:
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        call(**kwargs)
    code: str = caught.value.response["Error"]["Code"]
    return code


def keys_work(minio: MinioServer, keys: dict[str, Any]) -> list[str]:
    """Prove ``keys`` are a MinIO user's: ListBuckets signed with them is answered as theirs (the buckets
    they may list, or AccessDenied for one who may list none), never InvalidAccessKeyId or
    SignatureDoesNotMatch. Returns the names listed."""
    try:
        listed = s3_as(minio, keys).list_buckets()["Buckets"]
    except botocore.exceptions.ClientError as exc:
        if exc.response["Error"]["Code"] != "AccessDenied":
            raise
        return []
    return [bucket["Name"] for bucket in listed]
