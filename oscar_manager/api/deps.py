"""Dependencies shared by the routers, declared once as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request

from oscar_manager.auth.basic import BasicAuthenticator
from oscar_manager.domain.principal import Principal
from oscar_manager.errors import PayloadTooLarge
from oscar_manager.operations import Database, Transaction
from oscar_manager.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


async def get_transaction(request: Request) -> AsyncIterator[Transaction]:
    """The request's unit of work: committed when the route returns, before the response is sent."""
    async with get_database(request).transaction() as tx:
        yield tx


def authenticate(request: Request) -> Principal:
    authenticator: BasicAuthenticator = request.app.state.authenticator
    return authenticator.authenticate(request.headers.get("authorization"))


async def read_body(request: Request) -> bytes:
    """The whole body, refused with 413 as soon as it passes ``OSCAR_MAX_BODY_BYTES``."""
    limit = get_settings(request).oscar_max_body_bytes
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
TransactionDep = Annotated[Transaction, Depends(get_transaction, scope="function")]
CallerDep = Annotated[Principal, Depends(authenticate)]
BodyDep = Annotated[bytes, Depends(read_body)]
