"""The S3 face's ASGI app: CORS, the signature check, and every refusal as an S3 error document.

Served on a port of its own (``server.py``) because S3 clients put the bucket first in the path. What
each operation does is in ``handlers.py``.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime
from urllib.parse import parse_qsl, unquote, urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from oscar_manager.api.s3 import handlers
from oscar_manager.api.s3.context import S3Face, S3Request
from oscar_manager.errors import OscarError
from oscar_manager.storage.s3face import s3xml
from oscar_manager.storage.s3face.errors import S3Error, s3_code
from oscar_manager.storage.s3face.signatures import verify
from oscar_manager.storage.s3face.sigv4 import SignedRequest

log = logging.getLogger(__name__)

_METHODS = "GET, PUT, POST, DELETE, HEAD"
# What browser code (the dashboard's S3 client) may read of an answer.
_EXPOSED = (
    "ETag, Content-Length, Content-Range, Content-Type, Last-Modified, Accept-Ranges, x-amz-request-id, "
    "x-amz-version-id, x-amz-checksum-crc32, x-amz-checksum-sha1, x-amz-checksum-sha256"
)


def _headers(scope: Scope) -> dict[str, str]:
    found: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        found[name] = f"{found[name]},{value}" if name in found else value
    return found


def split_path(raw_path: str) -> tuple[str, str]:
    """Bucket and key of a path-style request (``/bucket/some/key``), decoded."""
    bucket, _, key = raw_path.lstrip("/").partition("/")
    return unquote(bucket), unquote(key)


def _allowed_origin(face: S3Face, origin: str, host: str) -> bool:
    if "*" in face.cors_origins or origin in face.cors_origins:
        return True
    # The manager's own pages (a dashboard it serves) call from the same host on the manager's port.
    try:
        calling, called = urlsplit(origin), urlsplit(f"//{host}")
        return calling.hostname == called.hostname and calling.port == face.manager_port
    except ValueError:
        return False


def _cors(face: S3Face, headers: dict[str, str]) -> dict[str, str]:
    origin = headers.get("origin")
    if not origin or not _allowed_origin(face, origin, headers.get("host", "")):
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": _EXPOSED,
        "Vary": "Origin",
    }


def error_response(exc: OscarError, *, resource: str, request_id: str, method: str) -> Response:
    code, status = s3_code(exc)
    body = (
        b"" if method == "HEAD" else s3xml.error(code, exc.message, resource=resource, request_id=request_id)
    )
    headers = dict(exc.headers)
    if method in ("PUT", "POST"):
        # A refusal may come before the body was read (or, with "Expect: 100-continue", sent): what is
        # left of it must not be taken for the connection's next request.
        headers["Connection"] = "close"
    return Response(body, status, media_type=s3xml.CONTENT_TYPE, headers=headers)


def _preflight(face: S3Face, headers: dict[str, str]) -> Response:
    cors = _cors(face, headers)
    if not cors or "access-control-request-method" not in headers:
        return Response(status_code=403)
    cors.update(
        {
            "Access-Control-Allow-Methods": _METHODS,
            "Access-Control-Allow-Headers": headers.get("access-control-request-headers", ""),
            "Access-Control-Max-Age": "600",
        }
    )
    return Response(status_code=200, headers=cors)


class S3App:
    """The ASGI app: authenticates every request (header or presigned signature) before anything else."""

    def __init__(self, face: S3Face) -> None:
        self.face = face

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = _headers(scope)
        request_id = secrets.token_hex(8).upper()
        raw_path = scope.get("raw_path", scope["path"].encode()).decode("latin-1").partition("?")[0]
        method = scope["method"]
        if method == "OPTIONS":
            await _preflight(self.face, headers)(scope, receive, send)
            return
        try:
            query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
            signed = SignedRequest(method=method, raw_path=raw_path, query=query, headers=headers)
            verified = verify(signed, secrets=self.face.secret_for, now=datetime.now(UTC))
            bucket, key = split_path(raw_path)
            request = S3Request(
                http=Request(scope, receive),
                signed=signed,
                verified=verified,
                bucket=bucket,
                key=key,
                params=dict(query),
                request_id=request_id,
            )
            response = await handlers.handle(self.face, request)
        except OscarError as exc:
            response = error_response(exc, resource=raw_path, request_id=request_id, method=method)
        except Exception:
            log.exception("S3 face: unexpected error (request %s) in %s %s", request_id, method, raw_path)
            error = S3Error("InternalError", f"unexpected error (request {request_id})", status=500)
            response = error_response(error, resource=raw_path, request_id=request_id, method=method)
        response.headers["x-amz-request-id"] = request_id
        response.headers.update(_cors(self.face, headers))
        await response(scope, receive, send)
