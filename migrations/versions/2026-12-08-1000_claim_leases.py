"""events' claims carry a lease: the replica that holds them and until when

Several managers may share one PostgreSQL (issue 17). A claimed event names the replica that claimed it
(``claimed_by``) and the time its claim lapses (``lease_until``), which that replica keeps pushing
forward while it lives; the claim of a replica that died lapses and the event goes back to the queue,
while nothing a live replica holds is touched. Claims left by the single manager of before have no
lease: they lapse at once, as the start-up of before released them.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Plain ADD COLUMNs: nullable, so SQLite takes them without copying the table.
    op.add_column("events", sa.Column("claimed_by", sa.String(64), nullable=True))
    op.add_column("events", sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("claimed_by")
