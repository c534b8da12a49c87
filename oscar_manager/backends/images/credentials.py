"""Registry credentials in Docker's ``config.json`` shape (``{"auths": {host: {"auth": <base64>}}}``), the
content of a ``kubernetes.io/dockerconfigjson`` Secret, so one file serves both executors."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from oscar_manager.backends.images.errors import ImageRefused
from oscar_manager.backends.images.reference import DOCKER_HUB, DOCKER_HUB_API

_SECRET_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_HUB_ALIASES = {DOCKER_HUB, DOCKER_HUB_API, "index.docker.io", "https://index.docker.io/v1/"}


@dataclass(frozen=True, slots=True)
class Credential:
    username: str
    password: str = ""

    def __repr__(self) -> str:
        return f"Credential(username={self.username!r}, password=...)"


def _host(key: str) -> str:
    if key in _HUB_ALIASES:
        return DOCKER_HUB
    key = key.removeprefix("https://").removeprefix("http://")
    return key.split("/", 1)[0]


def parse_docker_config(raw: bytes, *, source: str) -> dict[str, Credential]:
    try:
        auths = json.loads(raw).get("auths") or {}
        found: dict[str, Credential] = {}
        for key, entry in auths.items():
            if entry.get("auth"):
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            else:
                user, password = entry.get("username", ""), entry.get("password", "")
            if user:
                found[_host(str(key))] = Credential(str(user), str(password))
    except (ValueError, AttributeError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise ImageRefused(f"{source}: not a Docker config.json: {type(exc).__name__}") from None
    return found


class Credentials:
    """A credential per registry host: the service's pull secrets first, then the configured file."""

    def __init__(self, *, auth_file: Path | None = None, secrets_dir: Path | None = None) -> None:
        self._auth_file = auth_file
        self._secrets_dir = secrets_dir

    def for_registry(self, registry: str, pull_secrets: Iterable[str] = ()) -> Credential | None:
        host = _host(registry)
        for name in pull_secrets:
            found = self._secret(name).get(host)
            if found is not None:
                return found
        if self._auth_file is not None and self._auth_file.is_file():
            return _read(self._auth_file).get(host)
        return None

    def _secret(self, name: str) -> Mapping[str, Credential]:
        if self._secrets_dir is None or not _SECRET_NAME.fullmatch(name):
            return {}
        path = self._secrets_dir / name
        return _read(path) if path.is_file() else {}


def _read(path: Path) -> dict[str, Credential]:
    return parse_docker_config(path.read_bytes(), source=str(path))
