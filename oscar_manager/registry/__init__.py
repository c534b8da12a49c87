"""Persistence: the only package that imports SQLAlchemy and Alembic.

One code path serves PostgreSQL (asyncpg) and SQLite (aiosqlite); what differs between them is confined
to ``database.py`` (engines, locking) and ``hot_statements.py`` (which ``INSERT`` has ``ON CONFLICT``).
"""

from oscar_manager.registry.database import Database, Transaction, WriteBatch
from oscar_manager.registry.repository import NewEvent

__all__ = ["Database", "NewEvent", "Transaction", "WriteBatch"]
