"""The services: their definitions, with their secrets kept apart (in a column of their own).

Like every repository, it flushes but never commits: the transaction belongs to the caller
(``Database.transaction``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, String, cast, delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from oscar_manager.domain.buckets import StorageUse
from oscar_manager.domain.events import InputRoute, isolated_inputs
from oscar_manager.domain.isolation import possible_sources
from oscar_manager.domain.service import Service
from oscar_manager.errors import Conflict
from oscar_manager.registry.tables import ServiceRow, aware

# A row's version: its ``updated_at``, which every change moves (``replace`` always forward), read as text
# (10,000 of them are read per list: no time parsed). Compared for equality only.
_VERSION = cast(ServiceRow.updated_at, String)

# Names in one IN (...): well under SQLite's 32766 parameters a statement.
_NAMES_PER_QUERY = 1000


def _in_chunks(names: Sequence[str]) -> Iterator[Sequence[str]]:
    """``names`` in slices small enough for one ``IN (...)``."""
    for start in range(0, len(names), _NAMES_PER_QUERY):
        yield names[start : start + _NAMES_PER_QUERY]


def _definition(service: Service) -> dict[str, Any]:
    data = service.model_dump(mode="json", by_alias=True)
    data["environment"]["secrets"] = {}
    return data


def _in_buckets(buckets: Collection[str], *fields: str) -> ColumnElement[bool]:
    """A cheap superset of the services with an input or output (``fields``) in one of ``buckets``, or
    in the bucket one of them is a user's private bucket of (``possible_sources``): a stored path is
    normalised ``<bucket>/<folder>`` (``domain.service``), so the JSON text of those fields holds
    ``"<bucket>/``. A scan in the database of those fields alone (PostgreSQL would turn whole
    definitions into text), instead of reading every service's (seconds for 10,000)."""
    starts = sorted({f'"{name}/' for bucket in buckets for name in possible_sources(bucket)})
    columns = [cast(ServiceRow.definition[field], String) for field in fields]
    return or_(*(column.contains(start, autoescape=True) for column in columns for start in starts))


def _paths(field: list[dict[str, Any]] | None) -> tuple[tuple[str, str], ...]:
    """(storage_provider, path) of each input or output of a stored definition."""
    return tuple((str(io.get("storage_provider", "")), str(io.get("path", ""))) for io in field or [])


def _to_service(row: ServiceRow) -> Service:
    return _from_columns(row.definition, row.secrets)


def _from_columns(definition: dict[str, Any], secrets: dict[str, str]) -> Service:
    data = dict(definition)
    environment = dict(data.get("environment") or {})
    environment["secrets"] = dict(secrets)
    data["environment"] = environment
    return Service.model_validate(data)


class ServiceRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session
        # The services added, replaced or deleted in this transaction (by name; those whose change did
        # not happen too: a list reads them again for nothing, never misses one).
        self.changed_names: set[str] = set()

    @property
    def changed(self) -> bool:
        return bool(self.changed_names)

    async def get(self, name: str) -> Service | None:
        row = await self._session.get(ServiceRow, name)
        return None if row is None else _to_service(row)

    async def exists(self, name: str) -> bool:
        found = await self._session.scalar(select(ServiceRow.name).where(ServiceRow.name == name))
        return found is not None

    async def input_routes(
        self, names: Sequence[str] | None = None, *, buckets: Collection[str] = ()
    ) -> list[InputRoute]:
        """Every service input as (service, provider, bucket, folder, since): what routes object events.
        Only those of the services ``names`` when given; with ``buckets``, at least those of the inputs
        in these buckets (of the services whose inputs name them, see :func:`_in_buckets`)."""
        # Only the three fields of each definition that routes depend on: decoding whole definitions was
        # most of a second of CPU for 10,000 services, on every change of one of them (the bucket watcher
        # and the listener read the routes again).
        query = select(
            ServiceRow.name,
            ServiceRow.owner,
            ServiceRow.definition["input"],
            ServiceRow.definition["isolation_level"].as_string(),
            ServiceRow.definition["allowed_users"],
            ServiceRow.created_at,
        )
        if buckets:
            query = query.where(_in_buckets(buckets, "input"))
        queries = (
            [query] if names is None else [query.where(ServiceRow.name.in_(c)) for c in _in_chunks(names)]
        )
        rows = [row for query in queries for row in await self._session.execute(query)]
        routes = []
        for name, owner, inputs_field, isolation_level, allowed_users, created_at in rows:
            folders = isolated_inputs(
                _paths(inputs_field),
                isolation_level=isolation_level or "",
                allowed_users=[str(uid) for uid in allowed_users or []],
                owner=owner,
            )
            routes += [
                InputRoute(
                    service=name, provider=provider, bucket=bucket, folder=folder, since=aware(created_at)
                )
                for provider, bucket, folder in folders
            ]
        return routes

    async def storage_uses(self, *, bucket: str | None = None) -> list[StorageUse]:
        """What each service's buckets are made from (``StorageUse``: a few fields of its definition, not
        the whole validated), the oldest first. With ``bucket``, at least those of every service using it
        (see :func:`_in_buckets`)."""
        query = select(
            ServiceRow.name,
            ServiceRow.owner,
            ServiceRow.definition["input"],
            ServiceRow.definition["output"],
            ServiceRow.definition["isolation_level"].as_string(),
            ServiceRow.definition["allowed_users"],
        ).order_by(ServiceRow.created_at, ServiceRow.name)
        if bucket is not None:
            query = query.where(_in_buckets([bucket], "input", "output"))
        return [
            StorageUse(
                name=name,
                owner=owner,
                inputs=_paths(inputs),
                outputs=_paths(outputs),
                isolation_level=isolation_level or "",
                allowed_users=tuple(str(uid) for uid in allowed_users or []),
            )
            for name, owner, inputs, outputs, isolation_level, allowed_users in await self._session.execute(
                query
            )
        ]

    async def exposed_names(self) -> list[str]:
        """Names of the services whose definition sets ``expose.api_port``, the oldest first: that one field
        read, not every definition validated (seconds for 10,000 services, at each start)."""
        rows = await self._session.execute(
            select(ServiceRow.name, ServiceRow.definition[("expose", "api_port")]).order_by(
                ServiceRow.created_at, ServiceRow.name
            )
        )
        return [name for name, port in rows if port]

    async def list_by_creation(self) -> list[Service]:
        """Every service, the oldest first."""
        rows = await self._session.scalars(
            select(ServiceRow).order_by(ServiceRow.created_at, ServiceRow.name)
        )
        return [_to_service(row) for row in rows]

    async def list(self) -> list[Service]:
        rows = await self._session.scalars(select(ServiceRow).order_by(ServiceRow.name))
        return [_to_service(row) for row in rows]

    async def versions(self) -> Sequence[tuple[str, str]]:
        """(name, version) of every service by name, read from an index alone (no definition): what a
        copy kept of each is checked against (``operations.service_listing``)."""
        connection = await self._session.connection()
        result = await connection.execute(select(ServiceRow.name, _VERSION).order_by(ServiceRow.name))
        try:
            # The driver's rows, as they are: SQLAlchemy's Row objects cost more than the query itself
            # for 10,000 rows, and neither column needs processing (two strings).
            return list(map(tuple, result.cursor.fetchall()))
        finally:
            result.close()

    async def versions_of(self, names: Sequence[str]) -> dict[str, str]:
        """(name, version) of those of the services ``names`` that exist, as :meth:`versions` reads them."""
        found: dict[str, str] = {}
        connection = await self._session.connection()
        for chunk in _in_chunks(names):
            result = await connection.execute(
                select(ServiceRow.name, _VERSION).where(ServiceRow.name.in_(chunk))
            )
            found.update((name, version) for name, version in result)
        return found

    async def get_many(self, names: Sequence[str]) -> Sequence[Service]:
        """Those of the services ``names`` that exist."""
        found: list[Service] = []
        connection = await self._session.connection()
        for chunk in _in_chunks(names):
            rows = await connection.execute(
                select(ServiceRow.definition, ServiceRow.secrets).where(ServiceRow.name.in_(chunk))
            )
            found += [_from_columns(definition, secrets) for definition, secrets in rows]
        return found

    async def add(self, service: Service) -> None:
        self.changed_names.add(service.name)
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
        self.changed_names.add(service.name)
        row = await self._session.get(ServiceRow, service.name, with_for_update=True)
        if row is None:
            return False
        row.owner = service.owner
        row.visibility = service.visibility
        row.token = service.token
        row.definition = _definition(service)
        row.secrets = dict(service.environment.secrets)
        # Always later than before, even within the clock's resolution: it is the row's version.
        row.updated_at = max(datetime.now(UTC), aware(row.updated_at) + timedelta(microseconds=1))
        await self._session.flush()
        return True

    async def delete(self, name: str) -> bool:
        self.changed_names.add(name)
        result = await self._session.execute(
            delete(ServiceRow).where(ServiceRow.name == name).returning(ServiceRow.name)
        )
        return result.scalar_one_or_none() is not None

    async def set_stopped(self, name: str, stopped: bool) -> bool:
        """Record whether the exposed service ``name`` is stopped; the answer: whether it was. Not a change
        of its definition: its version stays (lists need not render it again)."""
        row = await self._session.get(ServiceRow, name, with_for_update=True)
        if row is None:
            return False
        was = bool(row.stopped)
        if was != stopped:
            row.stopped = stopped
            await self._session.flush()
        return was

    async def is_stopped(self, name: str) -> bool:
        found = await self._session.scalar(select(ServiceRow.stopped).where(ServiceRow.name == name))
        return bool(found)

    async def get_for_change(self, name: str) -> tuple[Service, bool] | None:
        """The service and whether it is stopped, its row locked until the transaction ends (a change
        made meanwhile elsewhere waits, and is seen after)."""
        row = await self._session.get(ServiceRow, name, with_for_update=True)
        return None if row is None else (_to_service(row), bool(row.stopped))
