"""services.stopped: an exposed service its owner stopped stays stopped across manager restarts

Exposed services (issue 18) run between ``min_scale`` and ``max_scale`` instances until their owner stops
them (``POST /system/services/{name}/stop``). The local backend's instances die with the manager, so
the manager exposes every exposed service again when it starts: all but those recorded here as stopped.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # A constant default: SQLite adds the column without copying the table, PostgreSQL without a rewrite.
    op.add_column("services", sa.Column("stopped", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.drop_column("stopped")
