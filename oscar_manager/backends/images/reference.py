"""Image references as Docker and Kubernetes read them: ``[registry/]repository[:tag][@digest]``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from oscar_manager.errors import BadRequest

DOCKER_HUB: Final = "docker.io"
# Docker Hub's API lives on another host than its name.
DOCKER_HUB_API: Final = "registry-1.docker.io"
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
DIGEST = re.compile(r"sha256:[a-f0-9]{64}")


class BadReference(BadRequest):
    """Not an image reference."""


@dataclass(frozen=True, slots=True)
class ImageReference:
    registry: str  # host[:port] as written (docker.io for Docker Hub)
    repository: str  # e.g. library/busybox
    tag: str | None
    digest: str | None

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def wanted(self) -> str:
        """What to ask the registry's manifest endpoint for: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        name = f"{self.registry}/{self.repository}"
        if self.tag:
            name += f":{self.tag}"
        if self.digest:
            name += f"@{self.digest}"
        return name


def parse_reference(text: str) -> ImageReference:
    """Docker's rules: the first component is a registry when it has a dot or a port or is localhost."""
    raw = text.strip()
    rest, _, digest = raw.partition("@")
    if digest and not DIGEST.fullmatch(digest):
        raise BadReference(f"image {raw!r}: {digest!r} is not a sha256 digest")
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, remainder
    else:
        registry, path = DOCKER_HUB, rest
    tag: str | None = None
    last_slash = path.rfind("/")
    colon = path.rfind(":")
    if colon > last_slash:
        path, tag = path[:colon], path[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise BadReference(f"image {raw!r}: {tag!r} is not a valid tag")
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not path or not all(_COMPONENT.fullmatch(part) for part in path.split("/")):
        raise BadReference(f"image {raw!r} is not a valid image reference")
    if tag is None and not digest:
        tag = "latest"
    return ImageReference(registry=registry, repository=path, tag=tag, digest=digest or None)
