"""buckets' owners, visibility and members: the source of MinIO's groups and policies (issue 16)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None

JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "buckets",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("visibility", sa.String(length=16), nullable=False),
        sa.Column("allowed_users", JSON_DOCUMENT, nullable=False),
        sa.Column("metadata", JSON_DOCUMENT, nullable=False),
        sa.Column("service", sa.String(length=39), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_buckets")),
    )
    op.create_index(op.f("ix_buckets_owner"), "buckets", ["owner"])
    op.create_index(op.f("ix_buckets_service"), "buckets", ["service"])


def downgrade() -> None:
    op.drop_index(op.f("ix_buckets_service"), table_name="buckets")
    op.drop_index(op.f("ix_buckets_owner"), table_name="buckets")
    op.drop_table("buckets")
