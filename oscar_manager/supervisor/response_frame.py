"""A sync run's response carried inside the container log.

On Kubernetes the manager has no pipe to a Job's container: all it can read back is the pod log, where
standard output and standard error are merged line by line. So a supervisor asked to (``OSCAR_RESPONSE_FRAME``
set, as the manifests of sync Jobs do) writes its response after its log as one framed block: a header
line with the byte count and SHA-256, the bytes base64-encoded in short lines (no line long enough for the
kubelet to split), and an end line. The manager takes the last complete block whose count and digest
match; anything else (a truncated or rotated log) is no response at all, never a corrupted one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

ENV = "OSCAR_RESPONSE_FRAME"
_BEGIN = "----- oscar-response"
_END = "----- end oscar-response -----"
_LINE = 76
_BLOCK = re.compile(
    rf"(?:^|\n){re.escape(_BEGIN)} (?P<size>\d+) (?P<digest>[0-9a-f]{{64}}) -----\n"
    rf"(?P<body>[A-Za-z0-9+/=\n]*?)\n?{re.escape(_END)}\n?"
)


def frame(response: bytes) -> bytes:
    encoded = base64.b64encode(response).decode()
    lines = [encoded[index : index + _LINE] for index in range(0, len(encoded), _LINE)]
    header = f"{_BEGIN} {len(response)} {hashlib.sha256(response).hexdigest()} -----"
    return ("\n" + "\n".join([header, *lines, _END]) + "\n").encode()


def unframe(log: str) -> tuple[str, bytes | None]:
    """Split a container log into (the log without the block, the response or None)."""
    for match in reversed(list(_BLOCK.finditer(log))):
        try:
            response = base64.b64decode(match["body"].replace("\n", ""), validate=True)
        except binascii.Error:
            continue
        if len(response) == int(match["size"]) and hashlib.sha256(response).hexdigest() == match["digest"]:
            return log[: match.start()] + log[match.end() :], response
    return log, None
