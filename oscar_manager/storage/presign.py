"""Short-lived signed URLs for local storage, the counterpart of S3 presigned URLs.

Whoever holds such a URL may upload or download exactly one object until it expires, without other
credentials; so the signature covers the operation, the bucket, the key and the expiry, each encoded
with its length so that no two different requests sign the same bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import time

from oscar_manager.errors import BadRequest, Forbidden

MIN_EXPIRES = 1
MAX_EXPIRES = 604800  # seven days, S3's limit
DEFAULT_EXPIRES = 900
OPERATIONS = frozenset({"upload", "download"})

_DOMAIN = b"oscar-presign-v1"
_SIGNATURE = re.compile(r"[0-9a-f]{64}")


def expiry(expires_in: int | None, now: float) -> int:
    """The unix time at which a URL valid for ``expires_in`` seconds from ``now`` expires.

    ``None`` or ``0`` mean ``DEFAULT_EXPIRES``; anything outside ``MIN_EXPIRES..MAX_EXPIRES`` is refused.
    """
    if expires_in is not None and (isinstance(expires_in, bool) or not isinstance(expires_in, int)):
        raise BadRequest(f"expiry must be a whole number of seconds, not {expires_in!r}")
    if not expires_in:
        expires_in = DEFAULT_EXPIRES
    if not MIN_EXPIRES <= expires_in <= MAX_EXPIRES:
        raise BadRequest(f"expiry must be between {MIN_EXPIRES} and {MAX_EXPIRES} seconds, not {expires_in}")
    # Rounded up: the URL is valid for at least the requested time.
    return math.ceil(now) + expires_in


def _field(value: str | int) -> bytes:
    data = str(value).encode("utf-8", "surrogatepass")
    return b"%d:" % len(data) + data


class PresignSigner:
    """Signs and checks presigned URL parameters with one secret (HMAC-SHA256)."""

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("the presign secret must not be empty")
        self._secret = secret

    def sign(self, *, bucket: str, key: str, operation: str, expires_at: int) -> str:
        if operation not in OPERATIONS:
            raise ValueError(f"unknown presign operation {operation!r}")
        message = _DOMAIN + b"".join(_field(value) for value in (operation, bucket, key, expires_at))
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def query(self, *, bucket: str, key: str, operation: str, expires_at: int) -> dict[str, str]:
        """The query parameters that make a URL for ``bucket``/``key`` presigned."""
        signature = self.sign(bucket=bucket, key=key, operation=operation, expires_at=expires_at)
        return {"operation": operation, "expires": str(expires_at), "signature": signature}

    def verify(
        self,
        *,
        bucket: str,
        key: str,
        operation: str,
        expires_at: int,
        signature: str,
        now: float | None = None,
    ) -> None:
        """Raise ``Forbidden`` unless ``signature`` was made by ``sign`` for these values and is current."""
        if operation not in OPERATIONS:
            raise Forbidden(f"presigned URL: unknown operation {operation!r}")
        # The format check also keeps non-ASCII text away from compare_digest, which refuses it.
        if not _SIGNATURE.fullmatch(signature):
            raise Forbidden("presigned URL: malformed signature")
        expected = self.sign(bucket=bucket, key=key, operation=operation, expires_at=expires_at)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise Forbidden("presigned URL: signature does not match")
        if (time.time() if now is None else now) > expires_at:
            raise Forbidden("presigned URL: expired")
