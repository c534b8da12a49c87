"""The image cache's index (``index.json``): what is cached, which reference resolved to which digest, and
when each image was last used. Written whole to a scratch file and renamed over the old one, so a killed
process leaves the old index or the new one; an unreadable index is started afresh (the store then drops
what it does not know)."""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oscar_manager.backends.images.config import ImageConfig

log = logging.getLogger(__name__)


@dataclass
class Entry:
    references: list[str]
    config: ImageConfig
    blobs: list[str]
    size: int
    last_used: float

    def to_json(self) -> dict[str, Any]:
        return {
            "references": self.references,
            "config": self.config.to_json(),
            "blobs": self.blobs,
            "size": self.size,
            "last_used": self.last_used,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        return cls(
            references=list(data["references"]),
            config=ImageConfig.from_json(data["config"]),
            blobs=list(data["blobs"]),
            size=int(data["size"]),
            last_used=float(data["last_used"]),
        )


@dataclass
class IndexState:
    images: dict[str, Entry] = field(default_factory=dict)  # by manifest digest
    references: dict[str, str] = field(default_factory=dict)  # reference -> manifest digest


def read_index(path: Path) -> IndexState:
    if not path.is_file():
        return IndexState()
    try:
        data = json.loads(path.read_bytes())
        return IndexState(
            images={d: Entry.from_json(e) for d, e in data["images"].items()},
            references=dict(data["references"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("image cache index unreadable (%s): starting empty", exc)
        return IndexState()


def write_index(path: Path, state: IndexState, *, scratch: Path) -> None:
    data = {"images": {d: e.to_json() for d, e in state.images.items()}, "references": state.references}
    temporary = scratch / f"index.{secrets.token_hex(4)}"
    temporary.write_text(json.dumps(data))
    os.replace(temporary, path)
