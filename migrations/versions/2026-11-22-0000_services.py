"""services: the service registry

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

JSONDocument = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "services",
        sa.Column("name", sa.String(length=39), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("visibility", sa.String(length=16), nullable=False),
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("definition", JSONDocument, nullable=False),
        sa.Column("secrets", JSONDocument, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_services")),
        sa.UniqueConstraint("token", name=op.f("uq_services_token")),
    )
    op.create_index(op.f("ix_services_owner"), "services", ["owner"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_services_owner"), table_name="services")
    op.drop_table("services")
