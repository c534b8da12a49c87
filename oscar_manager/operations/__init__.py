"""What the manager does, independent of HTTP: each operation takes the caller's transaction."""

from oscar_manager.registry import Database, Transaction

# Re-exported so the API layer can own a transaction without importing the registry package itself.
__all__ = ["Database", "Transaction"]
