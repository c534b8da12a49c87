"""What the Kubernetes API server's refusals say, read from their status code and ``Status`` body.

Pure: it works on anything with the attributes of kubernetes-asyncio's ``ApiException`` (``status``,
``reason``, ``body``), so that only the Kubernetes backend's modules import the client library.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from oscar_manager.errors import OscarError


class ApiError(Protocol):
    status: int
    reason: str | None
    body: Any


class KubernetesError(OscarError):
    """The API server refused a change to a service's objects (RBAC, validation): the reason is passed on."""

    status_code = 502


def status_body(exc: ApiError) -> dict[str, Any]:
    """The API server's ``Status`` body of an error ({} when it sent none)."""
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def reason(exc: ApiError) -> str:
    message = status_body(exc).get("message") or str(exc.body or "")[:500]
    return f"{exc.status} {exc.reason}: {message}"


def retryable(exc: ApiError) -> bool:
    """A server-side failure or throttling: the same request may well succeed later."""
    return exc.status >= 500 or exc.status == 429


# An apiserver that is starting serves requests before its RBAC authoriser has read every binding, and
# for a moment refuses (403) what they allow: seen on a real control plane restarted under a running
# manager. A request refused so is tried again this many times (with the caller's backoff) before the
# refusal counts as final.
FORBIDDEN_RETRIES = 3
# A restarted API server refuses (403) until its RBAC caches are filled, seconds on a loaded machine: a
# retry after a 403 waits at least this long, so that the retries span them (the dispatcher's own backoff
# already does, 1 + 2 + 4 s).
FORBIDDEN_PAUSE = 2.0


def refused_for_now(exc: ApiError, refusals: int) -> bool:
    """Whether a refusal is worth another try; ``refusals``: the 403s met so far, this one included."""
    return retryable(exc) or (exc.status == 403 and refusals <= FORBIDDEN_RETRIES)


def invalid_fields(exc: ApiError) -> list[str]:
    """The fields a 422 Invalid names (``details.causes[].field``)."""
    causes = (status_body(exc).get("details") or {}).get("causes") or []
    return [str(cause["field"]) for cause in causes if isinstance(cause, dict) and cause.get("field")]
