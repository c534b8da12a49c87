"""How a Job's invocation body too large for its environment reaches the supervisor: in parts.

The manager splits the body into parts, each stored in a Secret the Job owns and projected into one
volume at ``BODY_DIR`` (``part-0000``, ``part-0001``...); the Job's environment says how many parts there
are and the SHA-256 of the whole, and the supervisor reads them back and checks both. Each part stays
under a Secret's 1 MiB of data, and its Secret (base64 in JSON) under what etcd and the API server take.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Final

from oscar_manager.errors import OscarError

BODY_DIR: Final = PurePosixPath("/oscar/event")
PARTS_ENV: Final = "OSCAR_EVENT_PARTS"
DIGEST_ENV: Final = "OSCAR_EVENT_SHA256"
# Limits: 1 MiB of data per Secret, 1.5 MiB per etcd object, 3 MiB per API request. A part of 512 KiB is
# about 683 KiB once base64-encoded in its Secret's JSON, under the 1 MiB past which aiohttp (under the
# Kubernetes client) warns that sending a body in one piece may hold the event loop.
PART_BYTES: Final = 512 * 1024
PART_KEY: Final = "part"


class IncompleteBody(OscarError):
    """The parts of the body in the pod are not all there, or not what the manager sent."""

    status_code = 500


def part_name(index: int) -> str:
    return f"part-{index:04d}"


def split(body: bytes) -> Iterator[bytes]:
    """The body's parts, in order (one, empty, for an empty body)."""
    yield body[:PART_BYTES]
    for start in range(PART_BYTES, len(body), PART_BYTES):
        yield body[start : start + PART_BYTES]


def count(body: bytes) -> int:
    return max(-(-len(body) // PART_BYTES), 1)


def environment(body: bytes) -> dict[str, str]:
    """What the Job's environment says of the parts: their number and the whole body's digest."""
    return {PARTS_ENV: str(count(body)), DIGEST_ENV: hashlib.sha256(body).hexdigest()}


def read(directory: Path, env: Mapping[str, str]) -> bytes:
    """The body, put together from the parts in ``directory`` as ``env`` describes them."""
    try:
        parts = int(env[PARTS_ENV])
    except (KeyError, ValueError):
        raise IncompleteBody(f"{PARTS_ENV} is not a number of parts: {env.get(PARTS_ENV)!r}") from None
    chunks: list[bytes] = []
    for index in range(parts):
        path = directory / part_name(index)
        try:
            chunks.append(path.read_bytes())
        except OSError as exc:
            raise IncompleteBody(
                f"part {index + 1} of {parts} of the invocation body is missing: {exc}"
            ) from None
    body = b"".join(chunks)
    if hashlib.sha256(body).hexdigest() != env.get(DIGEST_ENV):
        raise IncompleteBody(f"the invocation body in {directory} is not the one sent ({DIGEST_ENV} differs)")
    return body
