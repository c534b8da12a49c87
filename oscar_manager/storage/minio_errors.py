"""The errors of MinIO's admin API (``storage.minio_users``), apart from it: the operations that catch them
must not load miniopy-async and aiohttp on a manager that has no MinIO."""

from __future__ import annotations

from oscar_manager.storage.base import StorageError


class MinioAdminUnavailable(StorageError):
    """MinIO's admin API did not do what a user's identity needs (unreachable, or refused)."""

    status_code = 503


class NoSuchMinioUser(MinioAdminUnavailable):
    """A group change named a user MinIO does not have (deleted behind the manager's back)."""
