"""S3 errors: the manager's one error type with the S3 error code its XML document carries."""

from __future__ import annotations

from oscar_manager.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    OscarError,
    PayloadTooLarge,
    Unauthorized,
)
from oscar_manager.storage.base import BucketNotFound, InvalidKey, ObjectNotFound, StorageUnavailable


class S3Error(OscarError):
    """A refusal in S3's terms: ``code`` is what SDKs match on (``NoSuchKey``, ``SignatureDoesNotMatch``)."""

    def __init__(self, code: str, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status_code = status


# The manager's own errors, as an S3 client expects to see them (most specific first).
_CODES: list[tuple[type[OscarError], str]] = [
    (StorageUnavailable, "ServiceUnavailable"),
    (BucketNotFound, "NoSuchBucket"),
    (ObjectNotFound, "NoSuchKey"),
    (InvalidKey, "InvalidArgument"),
    (PayloadTooLarge, "EntityTooLarge"),
    (Unauthorized, "AccessDenied"),
    (Forbidden, "AccessDenied"),
    (NotFound, "NoSuchKey"),
    (Conflict, "OperationAborted"),
    (BadRequest, "InvalidRequest"),
]


def s3_code(exc: OscarError) -> tuple[str, int]:
    """The S3 error code and HTTP status of any manager error."""
    if isinstance(exc, S3Error):
        return exc.code, exc.status_code
    for kind, code in _CODES:
        if isinstance(exc, kind):
            # S3 answers a body that is too large with 400, and every refusal of identity with 403.
            status = {"EntityTooLarge": 400, "AccessDenied": 403}.get(code, exc.status_code)
            return code, status
    # Storage failures and anything unexpected keep their 5xx, which clients retry.
    return ("InternalError" if exc.status_code >= 500 else "InvalidRequest"), exc.status_code


def access_denied(message: str) -> S3Error:
    return S3Error("AccessDenied", message, status=403)


def not_implemented(what: str) -> S3Error:
    return S3Error("NotImplemented", f"{what} is not implemented by this S3 endpoint", status=501)
