"""A sync run's response carried inside the container log.

On Kubernetes the manager has no pipe to a Job's container: all it can read back is the pod log, where
standard output and standard error are merged line by line. So a supervisor asked to (``OSCAR_RESPONSE_FRAME``
set, as the manifests of sync Jobs do) writes its response after its log as one framed block: a header
line with the byte count and SHA-256, the bytes base64-encoded in short lines (no line long enough for the
kubelet to split), and an end line. The manager takes the last complete block whose count and digest
match; anything else (a truncated or rotated log) is no response at all, never a corrupted one.

The header comes first so that the manager can refuse an answer over its limit from the declared size
alone, before decoding anything; a supervisor that knows the limit (``OSCAR_MAX_RUN_RESPONSE_BYTES`` in
its environment) writes only the header and the end line of such an answer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
from typing import BinaryIO

from oscar_manager.supervisor.answer import ResponseTooLarge, SyncAnswer, encoded_size

ENV = "OSCAR_RESPONSE_FRAME"
MAX_ENV = "OSCAR_MAX_RUN_RESPONSE_BYTES"
_BEGIN = "----- oscar-response"
_END = "----- end oscar-response -----"
_LINE = 76
_BLOCK = re.compile(
    rf"(?:^|\n){re.escape(_BEGIN)} (?P<size>\d+) (?P<digest>[0-9a-f]{{64}}) -----\n"
    rf"(?P<body>[A-Za-z0-9+/=\n]*?)\n?{re.escape(_END)}\n?"
)


# Bytes of the response per written piece: whole lines of _LINE base64 characters.
_PIECE = _LINE // 4 * 3 * 4096


def _header(size: int, digest: str) -> bytes:
    return f"\n{_BEGIN} {size} {digest} -----\n".encode()


def frame(response: bytes) -> bytes:
    out = io.BytesIO()
    write_frame(out, SyncAnswer.of_bytes(response))
    return out.getvalue()


def write_frame(out: BinaryIO, answer: SyncAnswer) -> None:
    """``frame(answer)`` written piece by piece: the answer is read twice (digest, then content), never
    held whole."""
    digest = hashlib.sha256()
    for chunk in answer.chunks():
        digest.update(chunk)
    out.write(_header(answer.length, digest.hexdigest()))
    pending = b""
    for chunk in answer.chunks():
        pending += chunk
        whole = len(pending) - len(pending) % _PIECE
        if whole:
            _write_lines(out, pending[:whole])
            pending = pending[whole:]
    _write_lines(out, pending)
    out.write(f"{_END}\n".encode())


def _write_lines(out: BinaryIO, data: bytes) -> None:
    encoded = base64.b64encode(data)
    for index in range(0, len(encoded), _LINE):
        out.write(encoded[index : index + _LINE] + b"\n")


def oversize_frame(size: int) -> bytes:
    """A frame that declares an answer of ``size`` bytes without carrying it (refused by its size)."""
    return _header(size, "0" * 64) + f"{_END}\n".encode()


def unframe(log: str, *, max_response_bytes: int | None = None) -> tuple[str, bytes | None]:
    """Split a container log into (the log without the block, the response or None). A block declaring
    more than the base64 of ``max_response_bytes`` is ``ResponseTooLarge``, refused before decoding."""
    for match in reversed(list(_BLOCK.finditer(log))):
        declared = int(match["size"])
        if max_response_bytes is not None and declared > encoded_size(max_response_bytes):
            # Base64 of the answer as the supervisor rendered it: compared with what the limit allows.
            raise ResponseTooLarge(
                declared * 3 // 4, max_response_bytes, what=f"the answer ({declared} bytes in base64)"
            )
        try:
            response = base64.b64decode(match["body"].replace("\n", ""), validate=True)
        except binascii.Error:
            continue
        if len(response) == declared and hashlib.sha256(response).hexdigest() == match["digest"]:
            return log[: match.start()] + log[match.end() :], response
    return log, None
