"""Which bucket names and object keys are allowed.

Keys become file paths in local storage and paths inside job sandboxes, so anything that could climb out
(``..``), alias (``.``, ``//``) or confuse a shell reader (control characters, NUL) is refused. Spaces,
unicode, ``+`` and ``%`` are ordinary characters.
"""

from __future__ import annotations

import re

from oscar_manager.storage.base import InvalidKey

# S3's rules for bucket names (lower-case letters, digits, '-' and '.'; 3 to 63 characters).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# Unicode category Cc: C0, DEL and C1.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_KEY_BYTES = 1024


def validate_bucket(bucket: str) -> str:
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise InvalidKey(f"invalid bucket name {bucket!r}: 3-63 lower-case letters, digits, '-' or '.'")
    return bucket


def validate_key(key: str, *, folder: bool = False) -> str:
    """Return ``key`` if it is a safe object key (a folder prefix when ``folder`` is set)."""
    body = key[:-1] if folder and key.endswith("/") else key
    if not body:
        raise InvalidKey("empty object key")
    try:
        encoded = key.encode()
    except UnicodeEncodeError:
        # Lone surrogates (from a lax JSON body or a surrogate-escaped file name) have no UTF-8 form.
        raise InvalidKey(f"invalid object key {key!r}: not valid unicode") from None
    if len(encoded) > MAX_KEY_BYTES:
        raise InvalidKey(f"object key longer than {MAX_KEY_BYTES} bytes")
    if _CONTROL.search(key) or "\\" in key:
        raise InvalidKey(f"invalid object key {key!r}: control characters and backslashes are not allowed")
    if body.startswith("/") or body.endswith("/"):
        raise InvalidKey(f"invalid object key {key!r}: it must not start or end with '/'")
    if any(segment in ("", ".", "..") for segment in body.split("/")):
        raise InvalidKey(f"invalid object key {key!r}: empty, '.' or '..' segments are not allowed")
    return key


def is_valid_key(key: str, *, folder: bool = False) -> bool:
    """Whether ``key`` is one ``validate_key`` accepts: listings skip names no object could have."""
    try:
        validate_key(key, folder=folder)
    except InvalidKey:
        return False
    return True
