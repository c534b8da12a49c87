"""How an invocation body travels in a Job's environment: as text in ``EVENT``, or base64-encoded there.

Base64 is for Jobs offloaded through interLink (``backends.interlink``): the virtual node re-creates the
pod's environment on the remote side (a shell script for a Slurm job, say), where a variable holding
quotes, ``$`` or newlines may not arrive intact (upstream says so, and base64-encodes ``EVENT`` there
too). ``OSCAR_EVENT_ENCODING=base64`` tells the supervisor to decode it; the script still sees the body's
text in ``EVENT``, as everywhere (``stage.script_environment``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Final

from oscar_manager.errors import OscarError
from oscar_manager.supervisor.stage import EVENT_ENV_MAX_BYTES

EVENT_ENV: Final = "EVENT"
ENCODING_ENV: Final = "OSCAR_EVENT_ENCODING"
BASE64: Final = "base64"


class UndecodableEvent(OscarError):
    status_code = 500


def encoded(body: bytes) -> dict[str, str] | None:
    """The variables carrying ``body`` base64-encoded, or None when that is too large for the environment."""
    if 4 * -(-len(body) // 3) > EVENT_ENV_MAX_BYTES:  # the encoded length, without encoding megabytes
        return None
    return {EVENT_ENV: base64.b64encode(body).decode(), ENCODING_ENV: BASE64}


def decoded(env: Mapping[str, str]) -> bytes:
    """The body ``EVENT`` carries, as ``OSCAR_EVENT_ENCODING`` says (text when unset)."""
    value = env.get(EVENT_ENV, "")
    encoding = env.get(ENCODING_ENV, "")
    if not encoding:
        return value.encode()
    if encoding != BASE64:
        raise UndecodableEvent(f"{ENCODING_ENV}={encoding!r} is not an encoding the supervisor knows")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UndecodableEvent(f"{EVENT_ENV} is not base64 as {ENCODING_ENV} says: {exc}") from None
