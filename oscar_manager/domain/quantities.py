"""Kubernetes resource quantities (``256Mi``, ``0.5``, ``500m``) as service definitions carry them."""

from __future__ import annotations

import re

from oscar_manager.errors import BadRequest

# A Kubernetes resource quantity (apimachinery ``resource.Quantity``).
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[numkMGTPE])?$")


def check_quantity(field: str, value: str) -> None:
    if value and not _QUANTITY.match(value):
        raise BadRequest(
            f"invalid {field} {value!r}: not a Kubernetes resource quantity (e.g. 256Mi, 0.5, 500m)"
        )


_SUFFIXES = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "m": 1,  # milli-bytes make no sense for memory; treated as bytes rounded up below
}
_QUANTITY_PARTS = re.compile(r"^([+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)([KMGTPE]i|[kMGTPEm])?$")


def quantity_bytes(quantity: str) -> int | None:
    """A memory quantity in bytes (``256Mi`` -> 268435456); None when empty or not understood."""
    match = _QUANTITY_PARTS.match(quantity.strip())
    if match is None:
        return None
    number, suffix = match.group(1), match.group(2) or ""
    value = float(number) * _SUFFIXES[suffix]
    if suffix == "m":
        value /= 1000
    return max(int(value + 0.999), 0)
