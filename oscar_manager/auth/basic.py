"""HTTP Basic for the single admin account (``OSCAR_USERNAME`` / ``OSCAR_PASSWORD``)."""

from __future__ import annotations

import base64
import binascii
import hmac

from oscar_manager.domain.principal import Principal
from oscar_manager.errors import Unauthorized

# The exact header upstream (Gin's BasicAuth) sends, so clients prompt the same way.
CHALLENGE = {"WWW-Authenticate": 'Basic realm="Authorization Required"'}


class BasicAuthenticator:
    def __init__(self, *, username: str, password: str) -> None:
        self._username = username.encode()
        self._password = password.encode()

    def names_the_admin(self, authorization: str | None) -> bool:
        """Whether ``authorization`` is Basic credentials for the admin's user name, right or wrong."""
        scheme, _, encoded = (authorization or "").partition(" ")
        if scheme.lower() != "basic" or not encoded:
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(decoded.partition(b":")[0], self._username)

    def authenticate(self, authorization: str | None) -> Principal:
        """Check an ``Authorization`` header; raise 401 with the Basic challenge on any failure."""
        scheme, _, encoded = (authorization or "").partition(" ")
        if scheme.lower() != "basic" or not encoded:
            raise Unauthorized("authentication required", headers=CHALLENGE)
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise Unauthorized("malformed Basic credentials", headers=CHALLENGE) from None
        user, separator, password = decoded.partition(b":")
        # Compare both parts every time, in constant time, so timing tells nothing about either.
        user_ok = hmac.compare_digest(user, self._username)
        password_ok = hmac.compare_digest(password, self._password)
        if not (separator and user_ok and password_ok):
            raise Unauthorized("invalid credentials", headers=CHALLENGE)
        return Principal.admin(user.decode(errors="replace"))
