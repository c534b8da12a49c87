"""The services: their definitions, with their secrets kept apart (in a column of their own).

Like every repository, it flushes but never commits: the transaction belongs to the caller
(``Database.transaction``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from oscar_manager.domain.events import InputRoute, isolated_inputs
from oscar_manager.domain.service import Service
from oscar_manager.errors import Conflict
from oscar_manager.registry.tables import ServiceRow, aware


def _definition(service: Service) -> dict[str, Any]:
    data = service.model_dump(mode="json", by_alias=True)
    data["environment"]["secrets"] = {}
    return data


def _to_service(row: ServiceRow) -> Service:
    data = dict(row.definition)
    environment = dict(data.get("environment") or {})
    environment["secrets"] = dict(row.secrets)
    data["environment"] = environment
    return Service.model_validate(data)


class ServiceRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session
        self.changed = False  # a service was added, replaced or deleted in this transaction

    async def get(self, name: str) -> Service | None:
        row = await self._session.get(ServiceRow, name)
        return None if row is None else _to_service(row)

    async def exists(self, name: str) -> bool:
        found = await self._session.scalar(select(ServiceRow.name).where(ServiceRow.name == name))
        return found is not None

    async def input_routes(self) -> list[InputRoute]:
        """Every service input as (service, provider, bucket, folder, since): what routes object events."""
        rows = await self._session.execute(
            select(ServiceRow.name, ServiceRow.owner, ServiceRow.definition, ServiceRow.created_at)
        )
        routes = []
        for name, owner, definition, created_at in rows:
            inputs = [
                (str(entry.get("storage_provider", "")), str(entry.get("path", "")))
                for entry in definition.get("input") or []
            ]
            folders = isolated_inputs(
                inputs,
                isolation_level=str(definition.get("isolation_level") or ""),
                allowed_users=[str(uid) for uid in definition.get("allowed_users") or []],
                owner=owner,
            )
            routes += [
                InputRoute(
                    service=name, provider=provider, bucket=bucket, folder=folder, since=aware(created_at)
                )
                for provider, bucket, folder in folders
            ]
        return routes

    async def list_by_creation(self) -> list[Service]:
        """Every service, the oldest first."""
        rows = await self._session.scalars(
            select(ServiceRow).order_by(ServiceRow.created_at, ServiceRow.name)
        )
        return [_to_service(row) for row in rows]

    async def list(self) -> list[Service]:
        rows = await self._session.scalars(select(ServiceRow).order_by(ServiceRow.name))
        return [_to_service(row) for row in rows]

    async def add(self, service: Service) -> None:
        self.changed = True
        now = datetime.now(UTC)
        self._session.add(
            ServiceRow(
                name=service.name,
                owner=service.owner,
                visibility=service.visibility,
                token=service.token,
                definition=_definition(service),
                secrets=dict(service.environment.secrets),
                created_at=now,
                updated_at=now,
            )
        )
        try:
            await self._session.flush()
        except IntegrityError:
            raise Conflict(f"a service named {service.name!r} already exists") from None

    async def replace(self, service: Service) -> bool:
        """Store a new definition for an existing service; False when there is no such service."""
        self.changed = True
        row = await self._session.get(ServiceRow, service.name, with_for_update=True)
        if row is None:
            return False
        row.owner = service.owner
        row.visibility = service.visibility
        row.token = service.token
        row.definition = _definition(service)
        row.secrets = dict(service.environment.secrets)
        row.updated_at = datetime.now(UTC)
        await self._session.flush()
        return True

    async def delete(self, name: str) -> bool:
        self.changed = True
        result = await self._session.execute(
            delete(ServiceRow).where(ServiceRow.name == name).returning(ServiceRow.name)
        )
        return result.scalar_one_or_none() is not None
