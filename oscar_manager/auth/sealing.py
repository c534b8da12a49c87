"""Secrets kept in the registry, sealed with a key the registry does not hold (Fernet: AES-CBC + HMAC).

The key is ``OSCAR_CREDENTIALS_KEY`` when set (required when several replicas share the database: each
must unseal what the others sealed), else a file in the data directory made on first use (mode 0600).
Someone who reads the database (a dump, a backup, a replica's disk) then learns no user's MinIO secret.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from oscar_manager.errors import OscarError
from oscar_manager.settings import kept_secret

log = logging.getLogger(__name__)


class UnsealError(OscarError):
    """A sealed value this manager's key cannot open: the key changed, or replicas have different keys."""

    status_code = 500


class Sealer:
    def __init__(self, key: str) -> None:
        try:
            self._fernet = Fernet(key.encode())
        except ValueError as exc:
            raise ValueError(
                f"OSCAR_CREDENTIALS_KEY is not a Fernet key (32 bytes, url-safe base64): {exc}"
            ) from None

    @classmethod
    def from_settings(cls, key: str, key_file: Path) -> Sealer:
        """The configured key, else the data directory's key file (made on first use)."""
        if key:
            return cls(key)
        return cls(kept_secret(key_file, lambda: Fernet.generate_key().decode()))

    def seal(self, secret: str) -> bytes:
        return self._fernet.encrypt(secret.encode())

    def unseal(self, sealed: bytes) -> str:
        try:
            return self._fernet.decrypt(sealed).decode()
        except InvalidToken:
            raise UnsealError(
                "a stored credential cannot be decrypted with this manager's key: the key changed, or "
                "replicas sharing the database have different keys (set the same OSCAR_CREDENTIALS_KEY "
                "on every replica)"
            ) from None
