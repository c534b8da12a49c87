"""services' (name, updated_at) in an index: a list reads every version without their definitions

``GET /system/services`` checks the rendering it keeps of each service against the row's ``updated_at``
(``operations.service_listing``). From the table, that read every definition too (16 MB with 10,000
services, 15 ms on SQLite); from this index it reads 10,000 short entries.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("ix_services_versions", "services", ["name", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_services_versions", table_name="services")
