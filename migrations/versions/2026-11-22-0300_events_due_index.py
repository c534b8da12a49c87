"""events claimed in due order straight from an index: (status, available_at, id)

The claim takes the oldest due events (``ORDER BY available_at, id LIMIT n``). On (status, available_at)
alone the database sorted every pending event for each claim, so a backlog made every claim slower and
the dispatcher fell further behind.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("ix_events_due", "events", ["status", "available_at", "id"])
    op.drop_index("ix_events_status_available_at", table_name="events")


def downgrade() -> None:
    op.create_index("ix_events_status_available_at", "events", ["status", "available_at"])
    op.drop_index("ix_events_due", table_name="events")
