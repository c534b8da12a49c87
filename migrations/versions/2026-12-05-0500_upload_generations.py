"""one job per upload: object events keyed by the upload's generation, with the time keys changed

Until this revision an object event's dedup key was (service, bucket/key, ETag), so an upload of content
already processed ran nothing. Keys now name the upload (``domain.generations``). An object written before
the change keeps its old key, so the scans of input folders after the upgrade do not run again what was
already run: ``marks.object_keys_by_etag_until`` is when the last event keyed the old way was recorded
(no row when there was none, as on a new registry).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

LEGACY_OBJECT_KEYS = "object_keys_by_etag_until"


def upgrade() -> None:
    marks = op.create_table(
        "marks",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_marks")),
    )
    events = sa.table("events", sa.column("dedup_key", sa.String), sa.column("created_at", sa.DateTime))
    last = op.get_bind().scalar(
        sa.select(sa.func.max(events.c.created_at)).where(events.c.dedup_key.like("object:%"))
    )
    if last is not None:
        op.bulk_insert(marks, [{"name": LEGACY_OBJECT_KEYS, "at": last}])


def downgrade() -> None:
    op.drop_table("marks")
