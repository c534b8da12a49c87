"""What the S3 face serves and to whom, and one request to it once its signature checked out."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from starlette.requests import Request

from oscar_manager.operations import Database
from oscar_manager.storage.local import LocalObjectStore
from oscar_manager.storage.s3face.multipart import MultipartUploads
from oscar_manager.storage.s3face.sigv4 import SignedRequest, Verified


@dataclass(frozen=True, slots=True)
class S3Face:
    """What the S3 face serves, and to whom."""

    store: LocalObjectStore
    uploads: MultipartUploads
    database: Database
    access_key: str
    secret_key: str
    cors_origins: tuple[str, ...]
    manager_port: int  # the dashboard served by the manager itself calls from this port's origin
    max_body_bytes: int

    def secret_for(self, access_key: str) -> str | None:
        # Only the admin has keys: OIDC users get none until buckets have owners.
        same = hmac.compare_digest(access_key.encode(), self.access_key.encode())
        return self.secret_key if same else None


@dataclass(frozen=True, slots=True)
class S3Request:
    http: Request
    signed: SignedRequest
    verified: Verified
    bucket: str
    key: str
    params: dict[str, str]
    request_id: str
