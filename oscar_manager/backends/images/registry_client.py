"""Registry v2 / OCI distribution, the pulling half: token or basic auth, manifests (an index resolved to
this machine's platform) and blobs streamed to disk, each checked against its digest as it arrives.

Written on httpx rather than a registry library: oras-py is synchronous (requests) and built around
artifacts, docker-registry-client-async brings aiohttp; the pull side is five requests whose checks (digest
while streaming, a size bound, refusing a blob longer than announced) must be ours anyway.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx

from oscar_manager.backends.images.config import check_platform, machine_architecture
from oscar_manager.backends.images.credentials import Credential
from oscar_manager.backends.images.errors import ImagePullFailed, ImageRefused, RegistryUnreachable
from oscar_manager.backends.images.reference import DIGEST, ImageReference
from oscar_manager.backends.processes import write_all

OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
_ACCEPT: Final = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])
MANIFEST_LIMIT: Final = 4 << 20  # manifests and configs are small documents; refuse a flood
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')
CHUNK: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    @classmethod
    def parse(cls, data: Any, *, image: str) -> Descriptor:
        try:
            digest, size = str(data["digest"]), int(data["size"])
            media_type = str(data.get("mediaType", ""))
        except (KeyError, TypeError, ValueError):
            raise ImagePullFailed(f"image {image}: a manifest entry has no digest or size") from None
        if not DIGEST.fullmatch(digest) or size < 0:
            raise ImageRefused(f"image {image}: unsupported digest {digest!r} (sha256 only)")
        return cls(media_type, digest, size)


@dataclass(frozen=True, slots=True)
class Manifest:
    digest: str  # of the platform's manifest (what a rootfs is kept under)
    config: Descriptor
    layers: tuple[Descriptor, ...]


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class RegistryClient:
    """One image's registry, its token kept for the pull's requests."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        reference: ImageReference,
        *,
        credential: Credential | None,
        insecure: Collection[str] = (),
    ) -> None:
        self._http = http
        self._ref = reference
        self._credential = credential
        host = reference.api_host
        scheme = "http" if host in insecure or is_loopback(host) else "https"
        self._base = f"{scheme}://{host}/v2/{reference.repository}"
        self._auth: str | None = None

    # --- requests ----------------------------------------------------------------------------------

    async def _send(self, url: str, *, accept: str | None = None, stream: bool = False) -> httpx.Response:
        headers = {"Accept": accept} if accept else {}
        for attempt in range(2):
            if self._auth:
                headers["Authorization"] = self._auth
            try:
                request = self._http.build_request("GET", url, headers=headers)
                response = await self._http.send(request, stream=stream, follow_redirects=True)
            except httpx.TransportError as exc:
                raise RegistryUnreachable(
                    f"registry {self._ref.registry} cannot be reached: {type(exc).__name__}: {exc}"
                ) from None
            if response.status_code != 401 or attempt == 1:
                return response
            challenge = response.headers.get("www-authenticate", "")
            await response.aclose()
            if not await self._authenticate(challenge):
                return response
        raise AssertionError("unreachable")

    async def _authenticate(self, challenge: str) -> bool:
        """Answer the 401's challenge: a bearer token from its realm (anonymous or with the credential),
        or basic auth. False when there is nothing more to try."""
        scheme = challenge.split(" ", 1)[0].lower()
        if scheme == "basic":
            if self._credential is None or self._auth:
                return False
            self._auth = _basic(self._credential)
            return True
        if scheme != "bearer" or (self._auth or "").startswith("Bearer"):
            return False
        params = dict(_CHALLENGE.findall(challenge))
        realm = params.get("realm")
        if not realm:
            return False
        query = {"scope": params.get("scope") or f"repository:{self._ref.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        auth = None
        if self._credential is not None:
            auth = httpx.BasicAuth(self._credential.username, self._credential.password)
        try:
            answer = await self._http.get(realm, params=query, auth=auth or httpx.USE_CLIENT_DEFAULT)
        except httpx.TransportError as exc:
            raise RegistryUnreachable(f"the token service {realm} cannot be reached: {exc}") from None
        if answer.status_code != 200:
            raise ImagePullFailed(
                f"image {self._ref}: the registry's token service refused"
                f" {'the configured credentials' if auth else 'an anonymous pull'}:"
                f" {answer.status_code} {_registry_message(answer)}"
            )
        try:
            body = answer.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not token:
            raise ImagePullFailed(f"image {self._ref}: the registry's token service sent no token")
        self._auth = f"Bearer {token}"
        return True

    def _failure(self, response: httpx.Response, what: str) -> ImagePullFailed:
        status = response.status_code
        message = _registry_message(response)
        if status == 401:
            who = "with the configured credentials" if self._credential else "without credentials"
            return ImagePullFailed(
                f"image {self._ref}: the registry answered 401 Unauthorized {who} ({what}): {message}"
            )
        return ImagePullFailed(f"image {self._ref}: the registry answered {status} for {what}: {message}")

    # --- manifests ---------------------------------------------------------------------------------

    async def manifest(self) -> Manifest:
        """The manifest for this machine's platform (through an index when the image has several)."""
        raw, media_type, digest = await self._manifest(self._ref.wanted)
        document = _json(raw, image=str(self._ref))
        media_type = str(document.get("mediaType") or media_type)
        if media_type in (OCI_INDEX, DOCKER_LIST) or "manifests" in document:
            chosen = _platform_entry(document, image=str(self._ref))
            raw, media_type, digest = await self._manifest(chosen)
            document = _json(raw, image=str(self._ref))
        if "layers" not in document or "config" not in document:
            raise ImageRefused(f"image {self._ref}: unsupported manifest type {media_type or 'unknown'}")
        config = Descriptor.parse(document["config"], image=str(self._ref))
        layers = tuple(Descriptor.parse(layer, image=str(self._ref)) for layer in document["layers"])
        return Manifest(digest=digest, config=config, layers=layers)

    async def _manifest(self, wanted: str) -> tuple[bytes, str, str]:
        response = await self._send(f"{self._base}/manifests/{wanted}", accept=_ACCEPT)
        if response.status_code != 200:
            raise self._failure(response, f"manifest {wanted}")
        raw = response.content
        if len(raw) > MANIFEST_LIMIT:
            raise ImageRefused(f"image {self._ref}: its manifest is over {MANIFEST_LIMIT} bytes")
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if DIGEST.fullmatch(wanted) and digest != wanted:
            raise ImagePullFailed(f"image {self._ref}: the registry sent a manifest of digest {digest}")
        return raw, response.headers.get("content-type", "").split(";")[0], digest

    # --- blobs -------------------------------------------------------------------------------------

    async def small_blob(self, descriptor: Descriptor) -> bytes:
        if descriptor.size > MANIFEST_LIMIT:
            raise ImageRefused(f"image {self._ref}: its configuration is over {MANIFEST_LIMIT} bytes")
        response = await self._send(f"{self._base}/blobs/{descriptor.digest}")
        if response.status_code != 200:
            raise self._failure(response, f"blob {descriptor.digest}")
        data = response.content
        _check(hashlib.sha256(data), len(data), descriptor, image=str(self._ref))
        return data

    async def blob_to_file(self, descriptor: Descriptor, target: Path) -> None:
        """Stream a blob into ``target`` (a new file), refusing more bytes than announced or another
        digest; ``target`` is removed when it does not match."""
        response = await self._send(f"{self._base}/blobs/{descriptor.digest}", stream=True)
        try:
            if response.status_code != 200:
                await response.aread()
                raise self._failure(response, f"layer {descriptor.digest}")
            digest = hashlib.sha256()
            size = 0
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                async for chunk in response.aiter_bytes(CHUNK):
                    size += len(chunk)
                    if size > descriptor.size:
                        raise ImagePullFailed(
                            f"image {self._ref}: layer {descriptor.digest} is longer than the"
                            f" {descriptor.size} bytes its manifest announces"
                        )
                    digest.update(chunk)
                    write_all(fd, chunk)
                _check(digest, size, descriptor, image=str(self._ref))
            except BaseException:
                os.unlink(target)
                raise
            finally:
                os.close(fd)
        except httpx.TransportError as exc:
            raise RegistryUnreachable(
                f"registry {self._ref.registry}: the download broke off: {exc}"
            ) from None
        finally:
            await response.aclose()


def _basic(credential: Credential) -> str:
    pair = f"{credential.username}:{credential.password}".encode()
    return "Basic " + base64.b64encode(pair).decode()


def _check(digest: Any, size: int, descriptor: Descriptor, *, image: str) -> None:
    got = "sha256:" + digest.hexdigest()
    if got != descriptor.digest or size != descriptor.size:
        raise ImagePullFailed(
            f"image {image}: blob {descriptor.digest} does not match its digest"
            f" (received {size} bytes of digest {got}): refused, nothing kept"
        )


def _json(raw: bytes, *, image: str) -> dict[str, Any]:
    try:
        document = json.loads(raw)
    except ValueError:
        raise ImagePullFailed(f"image {image}: the registry sent a manifest that is not JSON") from None
    if not isinstance(document, dict):
        raise ImagePullFailed(f"image {image}: the registry sent a manifest that is not a JSON object")
    return document


def _platform_entry(index: dict[str, Any], *, image: str) -> str:
    here = machine_architecture()
    offered = []
    for entry in index.get("manifests") or []:
        platform = entry.get("platform") or {}
        os_name, arch = platform.get("os", ""), platform.get("architecture", "")
        if os_name == "unknown":  # attestations (buildkit) are not images
            continue
        offered.append(f"{os_name}/{arch}")
        if os_name == "linux" and arch == here:
            return str(Descriptor.parse(entry, image=image).digest)
    if len(offered) == 1:
        os_name, _, arch = offered[0].partition("/")
        check_platform(os_name, arch, image=image)
    raise ImageRefused(
        f"image {image} has no linux/{here} variant for this machine"
        f" (it offers: {', '.join(offered) or 'none'})"
    )


def _registry_message(response: httpx.Response) -> str:
    """The registry's own words: its ``errors`` list (Registry v2), else the start of its body."""
    try:
        errors = response.json().get("errors") or []
        words = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors)
        if words:
            return words
    except (ValueError, AttributeError):
        pass
    return response.text[:200].strip() or response.reason_phrase
