"""Which store serves which storage provider reference (``minio.default``, ``s3.aws`` ...)."""

from __future__ import annotations

from oscar_manager.domain.service import ProviderRef
from oscar_manager.errors import BadRequest
from oscar_manager.storage.base import ObjectStore

DEFAULT_PROVIDER = "minio.default"


class Stores:
    """Resolve provider references to stores. ``minio.default`` is the manager's own storage: local
    folders on the embedded default, MinIO when ``MINIO_ENDPOINT`` is set."""

    def __init__(self, default: ObjectStore, others: dict[str, ObjectStore] | None = None) -> None:
        self.default = default
        self._others = dict(others or {})

    def __call__(self, provider: str) -> ObjectStore:
        reference = str(ProviderRef(provider))
        if reference == DEFAULT_PROVIDER:
            return self.default
        store = self._others.get(reference)
        if store is None:
            raise BadRequest(f"storage provider {reference!r} is not available on this manager")
        return store
