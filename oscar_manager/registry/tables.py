"""Table definitions. Alembic migrations in ``migrations/`` create them; a test checks the two agree.

Also ``aware``: how the repositories read back the times stored in them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Index, Integer, LargeBinary, MetaData, String, Text, false
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from oscar_manager.domain.events import DEDUP_KEY_MAX

# Named constraints make migrations reproducible across databases.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONDocument = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ServiceRow(Base):
    __tablename__ = "services"

    name: Mapped[str] = mapped_column(String(39), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    visibility: Mapped[str] = mapped_column(String(16))
    token: Mapped[str] = mapped_column(String(64), unique=True)
    # The normalised definition as clients see it, without secret values ...
    definition: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    # ... which live apart, so that no query that feeds a response can leak them.
    secrets: Mapped[dict[str, str]] = mapped_column(JSONDocument)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Every change moves it: the row's version, which lists read from ``ix_services_versions`` alone.
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # An exposed service its owner stopped (``POST .../stop``): kept here, not in the definition, so an
    # update keeps it and a manager that starts again leaves the service stopped.
    stopped: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (Index("ix_services_versions", "name", "updated_at"),)


class EventRow(Base):
    """The durable intake: an event is here before it is acknowledged, and stays as the dedup record."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dedup_key: Mapped[str] = mapped_column(String(DEDUP_KEY_MAX), unique=True)
    service: Mapped[str] = mapped_column(String(39), index=True)
    job_id: Mapped[str] = mapped_column(String(64))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    # pending -> claimed -> done | failed (submission gave up)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    available_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The replica holding the claim and when its claim lapses unless renewed (several managers may share
    # one PostgreSQL): a lapsed claim goes back to the queue.
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The OIDC user who invoked the service (``/job``), passed on to the job; none for other sources.
    owner: Mapped[str | None] = mapped_column(String(255))

    # The claim's order (oldest due first) straight from the index: no sort of the whole backlog per claim.
    __table_args__ = (Index("ix_events_due", "status", "available_at", "id"),)


class MarkRow(Base):
    """Moments in this registry's history that the code must know about (one row each), set by migrations."""

    __tablename__ = "marks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    service: Mapped[str] = mapped_column(String(39))
    event_id: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    log: Mapped[str] = mapped_column(Text, default="")
    # When the log's lines were written, as runs (``domain/logtimes``); NULL for logs kept before.
    log_times: Mapped[str | None] = mapped_column(Text)
    # Who started it, when an OIDC user did: such users list only their own jobs of others' services.
    owner: Mapped[str | None] = mapped_column(String(255))

    # Listing a service's jobs newest first, paged by (created_at, id).
    __table_args__ = (Index("ix_jobs_service_created_at_id", "service", "created_at", "id"),)


class StorageIdentityRow(Base):
    """An OIDC user's own MinIO user (issue 16): one row per user, whichever replica made it first."""

    __tablename__ = "storage_identities"

    uid: Mapped[str] = mapped_column(String(255), primary_key=True)
    access_key: Mapped[str] = mapped_column(String(255), unique=True)
    # Sealed with a key the registry does not hold (``auth.sealing``): never the secret itself.
    sealed_secret: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class BucketRow(Base):
    """Who owns a bucket of the manager's own storage and who may use it (issue 16,
    ``domain.buckets``): the one source MinIO's groups and policies are derived from."""

    __tablename__ = "buckets"

    # S3's longest bucket name.
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    visibility: Mapped[str] = mapped_column(String(16))
    allowed_users: Mapped[list[str]] = mapped_column(JSONDocument)
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JSONDocument)
    # The service whose input or output made it; None for a bucket made through the buckets API.
    service: Mapped[str | None] = mapped_column(String(39), nullable=True, index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone-aware columns; everything we store is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)
