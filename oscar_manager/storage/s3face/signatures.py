"""Which signature a request carries; and presigned URLs of AWS Signature Version 2 (``AWSAccessKeyId``,
``Signature``, ``Expires``), what boto3 still hands out by default from ``generate_presigned_url`` for S3.
Version 2 is accepted in that query form only: every client that signs headers uses version 4."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime

from oscar_manager.storage.s3face.errors import S3Error, access_denied
from oscar_manager.storage.s3face.sigv4 import (
    UNSIGNED_PAYLOAD,
    SecretLookup,
    SignedRequest,
    Verified,
    verify_header,
    verify_presigned,
)

# The query parameters that are part of the signed resource.
_SUBRESOURCES = {
    "acl", "cors", "delete", "lifecycle", "location", "logging", "notification", "partNumber", "policy",
    "requestPayment", "response-cache-control", "response-content-disposition", "response-content-encoding",
    "response-content-language", "response-content-type", "response-expires", "restore", "tagging",
    "torrent", "uploadId", "uploads", "versionId", "versioning", "versions", "website",
}  # fmt: skip


def string_to_sign(request: SignedRequest, expires: str) -> str:
    headers = request.headers
    amz = sorted((name, value.strip()) for name, value in headers.items() if name.startswith("x-amz-"))
    resource = request.raw_path or "/"
    subresources = sorted((name, value) for name, value in request.query if name in _SUBRESOURCES)
    if subresources:
        resource += "?" + "&".join(f"{name}={value}" if value else name for name, value in subresources)
    lines = [
        request.method,
        headers.get("content-md5", ""),
        headers.get("content-type", ""),
        expires,
        *(f"{name}:{value}" for name, value in amz),
        resource,
    ]
    return "\n".join(lines)


def verify_presigned_v2(request: SignedRequest, *, secrets: SecretLookup, now: datetime) -> Verified:
    params = dict(request.query)
    try:
        access_key, given, expires = params["AWSAccessKeyId"], params["Signature"], params["Expires"]
        expires_at = int(expires)
    except (KeyError, ValueError):
        raise S3Error(
            "AuthorizationQueryParametersError", "AWSAccessKeyId, Signature and Expires are required"
        ) from None
    if now.timestamp() > expires_at:
        raise access_denied("Request has expired")
    secret = secrets(access_key)
    if secret is None:
        raise S3Error("InvalidAccessKeyId", "the access key id is not known here", status=403)
    digest = hmac.new(secret.encode(), string_to_sign(request, expires).encode(), hashlib.sha1).digest()
    if not hmac.compare_digest(base64.b64encode(digest), given.encode()):
        raise S3Error(
            "SignatureDoesNotMatch",
            "the request signature we calculated does not match the signature you provided",
            status=403,
        )
    return Verified(
        access_key=access_key,
        payload=UNSIGNED_PAYLOAD,
        signing_key=b"",
        seed_signature="",
        amz_date="",
        scope="",
    )


def verify(request: SignedRequest, *, secrets: SecretLookup, now: datetime) -> Verified:
    """The request's signer, whichever way it is signed; anonymous requests are refused."""
    names = {name for name, _ in request.query}
    if "authorization" in request.headers:
        return verify_header(request, secrets=secrets, now=now)
    if "X-Amz-Signature" in names:
        return verify_presigned(request, secrets=secrets, now=now)
    if "Signature" in names:
        return verify_presigned_v2(request, secrets=secrets, now=now)
    raise access_denied("anonymous access is not allowed: sign requests with the keys of /system/config")
