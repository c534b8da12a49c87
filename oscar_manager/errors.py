"""The manager's one error type.

Every failure a caller should see is an ``OscarError`` subclass carrying its HTTP status; one handler
(``api/error_answers.py``) renders them all: the message as text, or ``{"error": <class name>, "detail":
<message>}`` for a caller that prefers JSON. So a message is a sentence for people, never JSON. Adapters
convert their libraries' exceptions into these, so no library exception leaks past its adapter.
"""

from __future__ import annotations


class OscarError(Exception):
    status_code = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(OscarError):
    status_code = 400


class Unauthorized(OscarError):
    status_code = 401


class Forbidden(OscarError):
    status_code = 403


class NotFound(OscarError):
    status_code = 404


class Conflict(OscarError):
    status_code = 409


class PayloadTooLarge(OscarError):
    status_code = 413


class UnsupportedMediaType(OscarError):
    status_code = 415


class InternalError(OscarError):
    """Anything unexpected: its details go to the log, never to the caller."""

    status_code = 500
