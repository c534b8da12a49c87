"""users' own MinIO identities: one row per OIDC user, the secret sealed (issue 16)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "storage_identities",
        sa.Column("uid", sa.String(length=255), nullable=False),
        sa.Column("access_key", sa.String(length=255), nullable=False),
        sa.Column("sealed_secret", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("uid", name=op.f("pk_storage_identities")),
        sa.UniqueConstraint("access_key", name=op.f("uq_storage_identities_access_key")),
    )


def downgrade() -> None:
    op.drop_table("storage_identities")
