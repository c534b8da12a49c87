"""What Kubernetes takes as a service's labels and annotations (apimachinery's ``IsQualifiedName``,
``IsValidLabelValue`` and ``ValidateAnnotations``), checked when a service is created or updated.

Every Job of the service carries them, so one the API server refuses would refuse every invocation
after its 201: it is refused with the definition instead (400, on both backends, so a service moves
between them unchanged).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from oscar_manager.errors import BadRequest

_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
MAX_NAME = 63
MAX_PREFIX = 253
MAX_LABEL_VALUE = 63
# Keys and values together, as the API server counts them.
MAX_ANNOTATIONS_BYTES = 256 * 1024


def qualified_name_problem(key: str) -> str | None:
    """Why ``key`` is not a qualified name (``[prefix/]name``, the prefix a DNS subdomain), or None."""
    prefix, slash, name = key.rpartition("/") if key.count("/") == 1 else ("", "", key)
    if "/" in name:
        return "a qualified name has at most one '/' (an optional DNS prefix, then a name)"
    if slash:
        if not prefix:
            return "the prefix before '/' must not be empty"
        if len(prefix) > MAX_PREFIX or not _DNS_SUBDOMAIN.match(prefix):
            return (
                f"the prefix {prefix!r} must be a DNS subdomain: at most {MAX_PREFIX} lower-case letters,"
                " digits, '-' and '.', starting and ending with a letter or digit"
            )
    if not name:
        return "the name must not be empty"
    if len(name) > MAX_NAME:
        return f"the name must be at most {MAX_NAME} characters long"
    if not _NAME.match(name):
        return (
            "the name must consist of letters, digits, '-', '_' and '.', starting and ending with a"
            " letter or digit"
        )
    return None


def check_labels(labels: Mapping[str, str]) -> None:
    for key, value in labels.items():
        problem = qualified_name_problem(key)
        if problem is not None:
            raise BadRequest(f"labels: invalid key {key!r}: {problem}")
        if len(value) > MAX_LABEL_VALUE:
            raise BadRequest(
                f"labels: the value of {key!r} is {len(value)} characters long, over {MAX_LABEL_VALUE}"
            )
        if not _LABEL_VALUE.match(value):
            raise BadRequest(
                f"labels: invalid value {value!r} of {key!r}: letters, digits, '-', '_' and '.' only,"
                " starting and ending with a letter or digit (or empty)"
            )


def check_label_value(field: str, value: str) -> None:
    """A field whose value Jobs carry as a label's or a node selector's value."""
    if len(value) > MAX_LABEL_VALUE:
        raise BadRequest(f"{field}: {value!r} is {len(value)} characters long, over {MAX_LABEL_VALUE}")
    if not _LABEL_VALUE.match(value):
        raise BadRequest(
            f"{field}: invalid value {value!r}: letters, digits, '-', '_' and '.' only, starting and"
            " ending with a letter or digit (or empty)"
        )


def check_annotations(annotations: Mapping[str, str]) -> None:
    for key in annotations:
        # The API server checks the key lower-cased: upper-case letters are allowed in its prefix.
        problem = qualified_name_problem(key.lower())
        if problem is not None:
            raise BadRequest(f"annotations: invalid key {key!r}: {problem}")
    size = sum(len(key.encode()) + len(value.encode()) for key, value in annotations.items())
    if size > MAX_ANNOTATIONS_BYTES:
        raise BadRequest(
            f"annotations: {size} bytes of keys and values, over the {MAX_ANNOTATIONS_BYTES} Kubernetes"
            " allows"
        )
