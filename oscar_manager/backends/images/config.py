"""The parts of an OCI image configuration a runtime honours here: architecture, Env, WorkingDir, User, the
default command (Entrypoint then Cmd, which an exposed service with ``default_command`` runs), and
``rootfs.diff_ids``, which every layer's uncompressed tar is checked against."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from typing import Any

from oscar_manager.backends.images.errors import ImagePullFailed, ImageRefused
from oscar_manager.backends.images.reference import DIGEST

# platform.machine() -> the OCI (GOARCH) name.
_ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm"}


def machine_architecture() -> str:
    machine = platform.machine().lower()
    return _ARCHITECTURES.get(machine, machine)


@dataclass(frozen=True, slots=True)
class ImageConfig:
    architecture: str
    os: str
    env: tuple[tuple[str, str], ...] = ()
    working_dir: str = ""
    user: str = ""
    diff_ids: tuple[str, ...] = field(default=())
    command: tuple[str, ...] = ()  # Entrypoint, then Cmd

    def to_json(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "os": self.os,
            "env": [list(pair) for pair in self.env],
            "working_dir": self.working_dir,
            "user": self.user,
            "diff_ids": list(self.diff_ids),
            "command": list(self.command),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageConfig:
        return cls(
            architecture=data["architecture"],
            os=data["os"],
            env=tuple((str(key), str(value)) for key, value in data["env"]),
            working_dir=data["working_dir"],
            user=data["user"],
            diff_ids=tuple(data["diff_ids"]),
            command=tuple(data.get("command", ())),  # absent from indexes written before it was kept
        )


def parse_config(raw: bytes, *, image: str) -> ImageConfig:
    try:
        document = json.loads(raw)
        inner = document.get("config") or {}
        env = []
        for item in inner.get("Env") or []:
            key, sep, value = str(item).partition("=")
            if sep and key:
                env.append((key, value))
        config = ImageConfig(
            architecture=str(document.get("architecture", "")),
            os=str(document.get("os", "")),
            env=tuple(env),
            working_dir=str(inner.get("WorkingDir") or ""),
            user=str(inner.get("User") or ""),
            diff_ids=tuple(str(d) for d in (document.get("rootfs") or {}).get("diff_ids") or []),
            command=tuple(str(part) for key in ("Entrypoint", "Cmd") for part in inner.get(key) or []),
        )
    except (ValueError, AttributeError, TypeError) as exc:
        raise ImagePullFailed(f"image {image}: its configuration is not valid JSON: {exc}") from None
    check_platform(config.os, config.architecture, image=image)
    return config


def check_platform(os_name: str, architecture: str, *, image: str) -> None:
    here = machine_architecture()
    if os_name and os_name != "linux":
        raise ImageRefused(f"image {image} is for {os_name}/{architecture}: only linux images run here")
    if architecture and architecture != here:
        raise ImageRefused(f"image {image} is for {architecture}, and this machine is {here}")


def check_diff_ids(config: ImageConfig, layers: int, *, image: str) -> None:
    """One sha256 diff_id per layer of the manifest: what each unpacked layer is then checked against. A
    configuration without any is refused too (as Docker does): its layers could not be checked."""
    if not config.diff_ids:
        raise ImageRefused(
            f"image {image}: its configuration lists no rootfs.diff_ids, so its layers cannot be checked:"
            " refused"
        )
    if len(config.diff_ids) != layers:
        raise ImageRefused(
            f"image {image}: its manifest has {layers} layers and its configuration {len(config.diff_ids)}"
            " rootfs.diff_ids: refused"
        )
    for diff_id in config.diff_ids:
        if not DIGEST.fullmatch(diff_id):
            raise ImageRefused(f"image {image}: unsupported diff_id {diff_id!r} (sha256 only)")
