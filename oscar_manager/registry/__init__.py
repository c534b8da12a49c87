"""Persistence: the only package that imports SQLAlchemy and Alembic.

One code path serves PostgreSQL (asyncpg) and SQLite (aiosqlite); what differs between them is confined
to ``database.py`` (engines, locking), ``hot_statements.py`` (which ``INSERT`` has ``ON CONFLICT``) and
``locks.py`` (named locks across replicas); ``single_process.py`` keeps a SQLite file to one serving process.
Every query lives in a repository, one a module (``service_repository``, ``event_repository``,
``job_repository``, ``mark_repository``): they turn rows into domain objects and back, and flush but never
commit (the transaction belongs to ``Database.transaction``); ``group_commit`` lets short writes share
one transaction (``Database.write``, ``WriteBatch``).
"""

from oscar_manager.registry.database import Database, Transaction
from oscar_manager.registry.event_repository import NewEvent
from oscar_manager.registry.group_commit import WriteBatch

__all__ = ["Database", "NewEvent", "Transaction", "WriteBatch"]
