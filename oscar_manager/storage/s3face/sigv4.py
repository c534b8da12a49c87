"""AWS Signature Version 4, checked as an S3 server checks it: the ``Authorization`` header and presigned
query strings (``X-Amz-Signature``).

Clients sign the path exactly as they send it (S3 does not normalise paths), so the canonical URI is the
request's raw path. Signatures are compared in constant time; a header-signed request must be within 15
minutes of this server's clock, a presigned one within its ``X-Amz-Expires``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from oscar_manager.storage.s3face.errors import S3Error, access_denied

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_SKEW = timedelta(minutes=15)
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SPACES = re.compile(r"\s+")

# The secret key of an access key id, or None for a key this server does not know.
SecretLookup = Callable[[str], str | None]


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """What a signature covers, as received."""

    method: str
    raw_path: str  # percent-encoded, exactly as sent
    query: Sequence[tuple[str, str]]  # decoded names and values, in order
    headers: Mapping[str, str]  # lower-case names; repeated headers joined with ","


@dataclass(frozen=True, slots=True)
class Verified:
    """A request whose signature checked out, with what its body's chunk signatures chain from."""

    access_key: str
    payload: str  # the x-amz-content-sha256 claim: a hex digest, UNSIGNED-PAYLOAD or a STREAMING-* mode
    signing_key: bytes
    seed_signature: str
    amz_date: str
    scope: str


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str = "s3") -> bytes:
    key = _hmac(f"AWS4{secret}".encode(), date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    return key


def _encode(text: str) -> str:
    """RFC 3986 encoding as SigV4 wants it: everything but ``A-Za-z0-9-_.~``."""
    return quote(text, safe="")


def canonical_query(query: Sequence[tuple[str, str]], *, leave_out: str = "") -> str:
    pairs = sorted((_encode(name), _encode(value)) for name, value in query if name != leave_out)
    return "&".join(f"{name}={value}" for name, value in pairs)


def canonical_request(request: SignedRequest, *, signed_headers: list[str], payload: str, query: str) -> str:
    lines = [request.method, request.raw_path or "/", query]
    for name in signed_headers:
        lines.append(f"{name}:{_SPACES.sub(' ', request.headers.get(name, '').strip())}")
    return "\n".join([*lines, "", ";".join(signed_headers), payload])


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    return "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])


def signature(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class _Credential:
    access_key: str
    date: str
    region: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/s3/aws4_request"


def _credential(value: str) -> _Credential:
    # The access key comes first and is the only part that could hold a "/": split from the right.
    parts = value.rsplit("/", 4)
    if len(parts) != 5 or parts[3] != "s3" or parts[4] != "aws4_request" or not all(parts[:3]):
        raise S3Error("AuthorizationHeaderMalformed", f"malformed credential {value!r}")
    return _Credential(access_key=parts[0], date=parts[1], region=parts[2])


def _parse_time(value: str) -> datetime:
    try:
        return datetime.strptime(value, _AMZ_DATE).replace(tzinfo=UTC)
    except ValueError:
        raise access_denied(f"malformed X-Amz-Date {value!r}") from None


def _signed_headers(value: str, headers: Mapping[str, str]) -> list[str]:
    names = value.split(";")
    if not value or names != sorted(names) or "host" not in names:
        raise S3Error("AuthorizationHeaderMalformed", "SignedHeaders must be sorted and include host")
    missing = [name for name in names if name not in headers]
    if missing:
        raise access_denied(f"signed header(s) missing from the request: {', '.join(missing)}")
    return names


def _check(
    request: SignedRequest,
    credential: _Credential,
    *,
    secrets: SecretLookup,
    amz_date: str,
    signed_headers: list[str],
    payload: str,
    query: str,
    given: str,
) -> Verified:
    secret = secrets(credential.access_key)
    if secret is None:
        raise S3Error("InvalidAccessKeyId", "the access key id is not known here", status=403)
    if amz_date[:8] != credential.date:
        raise access_denied("the credential's date is not the request's date")
    key = signing_key(secret, credential.date, credential.region)
    canonical = canonical_request(request, signed_headers=signed_headers, payload=payload, query=query)
    expected = signature(key, string_to_sign(amz_date, credential.scope, canonical))
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise S3Error(
            "SignatureDoesNotMatch",
            "the request signature we calculated does not match the signature you provided",
            status=403,
        )
    return Verified(
        access_key=credential.access_key,
        payload=payload,
        signing_key=key,
        seed_signature=expected,
        amz_date=amz_date,
        scope=credential.scope,
    )


def _authorization_fields(header: str) -> dict[str, str]:
    algorithm, _, rest = header.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise S3Error(
            "AuthorizationHeaderMalformed", f"only {ALGORITHM} signatures are accepted (not {algorithm!r})"
        )
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, separator, value = part.strip().partition("=")
        if separator:
            fields[name] = value
    if not {"Credential", "SignedHeaders", "Signature"} <= fields.keys():
        raise S3Error("AuthorizationHeaderMalformed", "Credential, SignedHeaders and Signature are required")
    return fields


def verify_header(request: SignedRequest, *, secrets: SecretLookup, now: datetime) -> Verified:
    """Check a request signed in its ``Authorization`` header."""
    fields = _authorization_fields(request.headers["authorization"])
    credential = _credential(fields["Credential"])
    amz_date = request.headers.get("x-amz-date", "")
    if not amz_date:
        raise access_denied("X-Amz-Date is required with an AWS4-HMAC-SHA256 signature")
    if abs(now - _parse_time(amz_date)) > MAX_SKEW:
        raise S3Error(
            "RequestTimeTooSkewed",
            "the difference between the request time and the server's time is too large",
            status=403,
        )
    payload = request.headers.get("x-amz-content-sha256", "")
    if not (
        _HEX64.fullmatch(payload)
        or payload
        in (UNSIGNED_PAYLOAD, STREAMING_SIGNED, STREAMING_UNSIGNED_TRAILER, STREAMING_SIGNED_TRAILER)
    ):
        raise S3Error("InvalidArgument", "x-amz-content-sha256 is missing or not understood")
    return _check(
        request,
        credential,
        secrets=secrets,
        amz_date=amz_date,
        signed_headers=_signed_headers(fields["SignedHeaders"], request.headers),
        payload=payload,
        query=canonical_query(request.query),
        given=fields["Signature"],
    )


def verify_presigned(request: SignedRequest, *, secrets: SecretLookup, now: datetime) -> Verified:
    """Check a presigned URL (``X-Amz-Algorithm``... in the query string)."""
    params = dict(request.query)
    if params.get("X-Amz-Algorithm") != ALGORITHM:
        raise S3Error("AuthorizationQueryParametersError", f"X-Amz-Algorithm must be {ALGORITHM}")
    if "X-Amz-Security-Token" in params:
        raise access_denied("session tokens are not accepted here")
    try:
        credential = _credential(params["X-Amz-Credential"])
        amz_date, expires = params["X-Amz-Date"], int(params["X-Amz-Expires"])
        signed, given = params["X-Amz-SignedHeaders"], params["X-Amz-Signature"]
    except (KeyError, ValueError):
        raise S3Error(
            "AuthorizationQueryParametersError",
            "X-Amz-Credential, X-Amz-Date, X-Amz-Expires, X-Amz-SignedHeaders and X-Amz-Signature "
            "are required",
        ) from None
    if not 0 < expires <= MAX_PRESIGN_SECONDS:
        raise S3Error("AuthorizationQueryParametersError", "X-Amz-Expires must be 1 to 604800 seconds")
    signed_at = _parse_time(amz_date)
    if now < signed_at - MAX_SKEW:
        raise access_denied("the request is not valid yet")
    if now > signed_at + timedelta(seconds=expires):
        raise access_denied("Request has expired")
    return _check(
        request,
        credential,
        secrets=secrets,
        amz_date=amz_date,
        signed_headers=_signed_headers(signed, request.headers),
        payload=request.headers.get("x-amz-content-sha256", UNSIGNED_PAYLOAD),
        query=canonical_query(request.query, leave_out="X-Amz-Signature"),
        given=given,
    )


def chunk_signature(verified: Verified, previous: str, chunk_sha256: str) -> str:
    """The signature of one chunk of a STREAMING-AWS4-HMAC-SHA256-PAYLOAD body."""
    text = "\n".join(
        ["AWS4-HMAC-SHA256-PAYLOAD", verified.amz_date, verified.scope, previous, EMPTY_SHA256, chunk_sha256]
    )
    return signature(verified.signing_key, text)
