"""when each line of a job's log was written, for ``?timestamps=true``

Kept apart from the log itself (runs of ``<lines> <RFC 3339 time>``), so that the log is shown exactly as
before without times; NULL for the logs of jobs that ended before this revision.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("log_times", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("log_times")
