"""One page of ListObjects (v1) or ListObjectsV2 from a bucket's sorted entries: prefix, delimiter
(common prefixes), start-after / marker / continuation token and max-keys, as S3 pages them."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass, field

from oscar_manager.storage.base import ObjectInfo
from oscar_manager.storage.s3face.errors import S3Error

MAX_KEYS = 1000


@dataclass(frozen=True, slots=True)
class Page:
    objects: list[ObjectInfo] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    truncated: bool = False
    # The last key or common prefix on the page (where the next page starts after).
    last: str = ""
    last_is_prefix: bool = False


def max_keys(value: str | None) -> int:
    if value is None or value == "":
        return MAX_KEYS
    try:
        number = int(value)
    except ValueError:
        raise S3Error("InvalidArgument", "max-keys must be an integer") from None
    if number < 0:
        raise S3Error("InvalidArgument", "max-keys must not be negative")
    return min(number, MAX_KEYS)


def continuation_token(last: str, *, is_prefix: bool) -> str:
    """An opaque token: whether the page ended on a common prefix matters for where the next one starts."""
    return base64.urlsafe_b64encode(("p" if is_prefix else "k").encode() + last.encode()).decode()


def read_token(token: str) -> tuple[str, bool]:
    try:
        raw = base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise S3Error("InvalidArgument", "the continuation token is not valid") from None
    if not raw or raw[0] not in "pk":
        raise S3Error("InvalidArgument", "the continuation token is not valid")
    return raw[1:], raw[0] == "p"


def page(
    entries: Sequence[ObjectInfo],
    *,
    prefix: str,
    delimiter: str,
    after: str,
    after_prefix: bool,
    limit: int,
) -> Page:
    """``entries`` sorted by key; the page starts after ``after`` (and everything under it when it was a
    common prefix)."""
    if limit == 0:
        return Page()  # as S3: nothing, and not truncated (a client paging on would never end)
    objects: list[ObjectInfo] = []
    prefixes: list[str] = []
    last, last_is_prefix = "", False
    for entry in entries:
        key = entry.key
        if not key.startswith(prefix) or key <= after or (after_prefix and key.startswith(after)):
            continue
        rest = key[len(prefix) :]
        cut = rest.find(delimiter) if delimiter else -1
        common = prefix + rest[: cut + len(delimiter)] if cut >= 0 else None
        if common is not None and prefixes and prefixes[-1] == common:
            continue
        if len(objects) + len(prefixes) >= limit:
            return Page(objects, prefixes, truncated=True, last=last, last_is_prefix=last_is_prefix)
        if common is not None:
            prefixes.append(common)
            last, last_is_prefix = common, True
        else:
            objects.append(entry)
            last, last_is_prefix = key, False
    return Page(objects, prefixes, truncated=False, last=last, last_is_prefix=last_is_prefix)
