"""dedup keys longer than the column hold: rewritten to the bounded form the intake now computes

An object event's dedup key longer than ``events.dedup_key`` (1,100 characters) is now a readable start
and the SHA-256 of the whole (``domain.events.bounded_key``). PostgreSQL never held such a key (the
insert failed); SQLite does not enforce the length, so a registry there may hold some in full, and the
scans of input folders after the upgrade would find each such upload under its new key and run it again.
Rewriting them (keys that fit keep their form) keeps every upload already run from running again. The
function is copied here, as it was at this revision: a migration must not change with the code.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

_MAX = 1100
_READABLE = _MAX - 80


def _bounded(key: str) -> str:
    if len(key) <= _MAX:
        return key
    return f"{key[:_READABLE]}~sha256:{hashlib.sha256(key.encode(errors='surrogatepass')).hexdigest()}"


def upgrade() -> None:
    events = sa.table("events", sa.column("id", sa.Integer), sa.column("dedup_key", sa.String))
    bind = op.get_bind()
    long_keys = bind.execute(
        sa.select(events.c.id, events.c.dedup_key).where(sa.func.length(events.c.dedup_key) > _MAX)
    ).all()
    for row_id, key in long_keys:
        bind.execute(sa.update(events).where(events.c.id == row_id).values(dedup_key=_bounded(key)))


def downgrade() -> None:
    """Nothing to undo: the old code never looks a bounded key up, and a long key cannot be restored."""
