"""The image cache: images pulled once per digest, kept under the data directory within a size bound.

Layout under its folder: ``blobs/sha256/<hex>`` (layers and configs, content-addressed, each checked
against its digest before it is kept), ``roots/<hex>`` (the unpacked root file system of the image whose
manifest has that digest), ``partial/`` (downloads and unpacks in progress, swept at start) and
``index.json`` (what is cached, which reference resolved to which digest, when each was last used).

Each layer is checked twice: its blob against the manifest's digest as it is downloaded, its uncompressed
tar against the configuration's ``rootfs.diff_ids`` as it is unpacked (one diff_id per layer). An image
whose configuration lists no diff_ids is refused, as Docker refuses it: its layers could not be checked.
A refused image leaves nothing: its partial root is removed, it is not recorded, its blobs are dropped.

A reference is resolved at the registry once and then kept (as Kubernetes' ``IfNotPresent``): a warm job
costs no request. Concurrent jobs of one reference wait on one pull, which a job's cancellation (its
timeout) does not stop for the others. Past the bound, the least recently used images no job is using go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from oscar_manager.backends.images.config import ImageConfig, check_diff_ids, parse_config
from oscar_manager.backends.images.credentials import Credentials
from oscar_manager.backends.images.errors import ImageRefused, ImageTooLarge, RegistryUnreachable
from oscar_manager.backends.images.index import Entry, IndexState, read_index, write_index
from oscar_manager.backends.images.reference import parse_reference
from oscar_manager.backends.images.unpack import Budget, RootWriter
from oscar_manager.errors import OscarError

if TYPE_CHECKING:  # httpx is imported at the first pull: a manager that pulls nothing never loads it
    import httpx

    from oscar_manager.backends.images.registry_client import Manifest, RegistryClient

log = logging.getLogger(__name__)

LAYER_TYPES: Final = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "",  # an OCI manifest without media types (older tools): the stream's own header decides
    }
)
# A registry found unreachable is not asked again for this long (each job would wait its connect timeout).
UNREACHABLE_SECONDS: Final = 30.0


@dataclass(frozen=True, slots=True)
class Image:
    reference: str
    digest: str  # the manifest's, for this machine's platform
    root: Path  # the unpacked root file system (read-only to scripts)
    config: ImageConfig
    size: int  # bytes it takes in the cache (its blobs and root)


@dataclass(frozen=True, slots=True)
class Obtained:
    image: Image
    pulled_seconds: float | None  # the pull this caller waited for; None: it was cached
    stale: str | None = None  # why the image a reference named before is used without checking it again


class ImageStore:
    def __init__(
        self,
        folder: Path,
        *,
        max_bytes: int,
        credentials: Credentials | None = None,
        insecure_registries: Collection[str] = (),
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``timeout``: seconds for each registry answer (connecting: at most 10); a job's own deadline
        bounds the whole pull. ``transport``: httpx's, for tests that stand between the registry and us."""
        self._folder = folder
        self._max_bytes = max_bytes
        self._credentials = credentials or Credentials()
        self._insecure = frozenset(insecure_registries)
        self._timeout = timeout
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._state = IndexState()
        self._pulls: dict[str, asyncio.Task[Image]] = {}
        self._digest_locks: dict[str, asyncio.Lock] = {}
        self._in_use: dict[str, int] = {}
        self._unreachable: dict[str, tuple[float, RegistryUnreachable]] = {}
        self._pinned: set[str] = set()
        self._stale: dict[str, str] = {}  # reference -> the digest it named before ``refresh``

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    # --- lifecycle ---------------------------------------------------------------------------------

    def open(self) -> None:
        """Make the folders, forget what a killed process left half-done, read the index."""
        # Roots are reached by path by the sandbox, started as the scripts' user: the folders above them
        # are traversable (not listable); the blobs, the index and unfinished work are the manager's only.
        for sub in ("blobs/sha256", "roots", "partial"):
            (self._folder / sub).mkdir(parents=True, exist_ok=True)
        for folder, mode in [(self._folder, 0o711), (self._folder / "roots", 0o711)]:
            os.chmod(folder, mode)
        for private in ("blobs", "partial"):
            os.chmod(self._folder / private, 0o700)
        for leftover in (self._folder / "partial").iterdir():
            _remove_tree(leftover)
        self._state = read_index(self._folder / "index.json")
        # What the index does not know (or knows but is gone) is not kept.
        for digest in list(self._state.images):
            if not self._root(digest).is_dir():
                del self._state.images[digest]
        self._state.references = {r: d for r, d in self._state.references.items() if d in self._state.images}
        known_roots = {d.removeprefix("sha256:") for d in self._state.images}
        for root in (self._folder / "roots").iterdir():
            if root.name not in known_roots:
                _remove_tree(root)
        self._drop_unused_blobs()

    async def close(self) -> None:
        for task in self._pulls.values():
            task.cancel()
        await asyncio.gather(*self._pulls.values(), return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # --- obtaining images --------------------------------------------------------------------------

    async def obtain(self, reference: str, *, pull_secrets: Iterable[str] = ()) -> Obtained:
        """The image, from the cache or pulled now (concurrent callers share one pull)."""
        ref = str(parse_reference(reference))
        cached = self._cached(ref)
        if cached is not None:
            return Obtained(cached, None)
        started = time.monotonic()
        task = self._pulls.get(ref)
        if task is None:
            task = asyncio.create_task(self._pull(ref, tuple(pull_secrets)), name=f"pull {ref}")
            self._pulls[ref] = task
            task.add_done_callback(lambda _: self._pulls.pop(ref, None))
        try:
            image = await asyncio.shield(task)
        except RegistryUnreachable as exc:
            kept = self._cached(ref, self._stale.get(ref))
            if kept is None:
                raise
            return Obtained(kept, None, stale=exc.message)
        return Obtained(image, time.monotonic() - started)

    def refresh(self, reference: str) -> None:
        """Resolve ``reference`` at its registry again at its next use (a service created or updated: its
        tag may have been pushed again). Until then the image it named stays, used if the registry is
        unreachable then."""
        try:
            ref = str(parse_reference(reference))
        except OscarError:
            return
        digest = self._state.references.pop(ref, None)
        if digest is not None:
            self._stale[ref] = digest

    @contextlib.contextmanager
    def in_use(self, image: Image) -> Iterator[None]:
        """While a job runs in ``image``, it is not evicted."""
        self._in_use[image.digest] = self._in_use.get(image.digest, 0) + 1
        try:
            yield
        finally:
            self._in_use[image.digest] -= 1
            if not self._in_use[image.digest]:
                del self._in_use[image.digest]

    def cached(self) -> list[dict[str, Any]]:
        """What is cached, most recently used first, for /system/info."""
        entries = sorted(self._state.images.items(), key=lambda item: -item[1].last_used)
        return [
            {"references": e.references, "digest": d, "size": e.size, "in_use": self._in_use.get(d, 0)}
            for d, e in entries
        ]

    def used_bytes(self) -> int:
        return sum(entry.size for entry in self._state.images.values())

    def _cached(self, ref: str, digest: str | None = None) -> Image | None:
        digest = digest or self._state.references.get(ref)
        entry = self._state.images.get(digest) if digest else None
        if digest is None or entry is None:
            return None
        entry.last_used = time.time()
        return Image(ref, digest, self._root(digest), entry.config, entry.size)

    async def _pull(self, ref: str, pull_secrets: tuple[str, ...]) -> Image:
        reference = parse_reference(ref)
        host = reference.api_host
        known = self._unreachable.get(host)
        if known is not None and known[0] > time.monotonic():
            raise known[1]
        credential = self._credentials.for_registry(reference.registry, pull_secrets)
        from oscar_manager.backends.images.registry_client import RegistryClient

        client = RegistryClient(self._client(), reference, credential=credential, insecure=self._insecure)
        try:
            manifest = await client.manifest()
            lock = self._digest_locks.setdefault(manifest.digest, asyncio.Lock())
            async with lock:
                entry = self._state.images.get(manifest.digest)
                if entry is None:
                    entry = await self._fetch(client, ref, manifest)
                if ref not in entry.references:
                    entry.references.append(ref)
                self._state.references[ref] = manifest.digest
                self._stale.pop(ref, None)
                entry.last_used = time.time()
                await asyncio.to_thread(self._save)
        except RegistryUnreachable as exc:
            self._unreachable[host] = (time.monotonic() + UNREACHABLE_SECONDS, exc)
            raise
        self._unreachable.pop(host, None)
        return Image(ref, manifest.digest, self._root(manifest.digest), entry.config, entry.size)

    async def _fetch(self, client: RegistryClient, ref: str, manifest: Manifest) -> Entry:
        blobs = [manifest.config.digest, *(layer.digest for layer in manifest.layers)]
        pinned = set(blobs) - self._pinned
        self._pinned |= pinned
        try:
            return await self._fetch_pinned(client, ref, manifest, blobs)
        finally:
            self._pinned -= pinned
            self._drop_unused_blobs()  # what a refused pull downloaded

    async def _fetch_pinned(
        self, client: RegistryClient, ref: str, manifest: Manifest, blobs: list[str]
    ) -> Entry:
        for layer in manifest.layers:
            if layer.media_type not in LAYER_TYPES:
                raise ImageRefused(
                    f"image {ref}: layer {layer.digest} is {layer.media_type}, which is not supported here"
                    " (tar and tar+gzip layers are)"
                )
        download = manifest.config.size + sum(layer.size for layer in manifest.layers)
        if download > self._max_bytes:
            raise ImageTooLarge(
                f"image {ref}: its layers are {download} bytes compressed, more than the image cache's bound"
                f" of {self._max_bytes} bytes (OSCAR_IMAGE_CACHE_BYTES)"
            )
        config = parse_config(await client.small_blob(manifest.config), image=ref)
        check_diff_ids(config, len(manifest.layers), image=ref)  # before any layer is downloaded
        self._evict(room_for=download)
        partial = self._folder / "partial"
        for layer in manifest.layers:
            blob = self._blob(layer.digest)
            if blob.exists():
                continue
            temporary = partial / f"{layer.digest.removeprefix('sha256:')}.{secrets.token_hex(4)}"
            await client.blob_to_file(layer, temporary)
            os.replace(temporary, blob)
        # The unpacked size is known only once unpacked: what cannot be evicted bounds it, and what can
        # is evicted afterwards, least recently used first.
        room = self._max_bytes - download - self._pinned_bytes()
        unpacked = await asyncio.to_thread(self._unpack, ref, manifest, config, room)
        entry = Entry(
            references=[],
            config=config,
            blobs=blobs,
            size=download + unpacked,
            last_used=time.time(),
        )
        self._state.images[manifest.digest] = entry
        self._evict(room_for=0)
        return entry

    def _unpack(self, ref: str, manifest: Manifest, config: ImageConfig, room: int) -> int:
        """Apply the layers onto a new folder, renamed into place once complete; returns its bytes."""
        target = self._folder / "partial" / f"root-{secrets.token_hex(6)}"
        target.mkdir()
        os.chmod(target, 0o755)  # noqa: S103 - the image's root, read by scripts, whatever the umask
        try:
            root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                budget = Budget(max(room, 0))
                writer = RootWriter(root_fd, image=ref, budget=budget)
                for layer, expected in zip(manifest.layers, config.diff_ids, strict=True):
                    with open(self._blob(layer.digest), "rb") as stream:
                        found = writer.apply(stream)
                    if found != expected:
                        raise ImageRefused(
                            f"image {ref}: layer {layer.digest} unpacks to a tar of digest {found}, but the"
                            f" image's configuration names {expected} (its diff_id): refused"
                        )
                writer.finish(working_dir=config.working_dir)
            finally:
                os.close(root_fd)
            final = self._root(manifest.digest)
            _remove_tree(final)
            os.rename(target, final)
        except BaseException:
            _remove_tree(target)
            raise
        return budget.used

    # --- room --------------------------------------------------------------------------------------

    def _kept_bytes(self) -> int:
        return sum(entry.size for entry in self._state.images.values())

    def _evictable(self, digest: str) -> bool:
        lock = self._digest_locks.get(digest)
        return not self._in_use.get(digest) and not (lock is not None and lock.locked())

    def _pinned_bytes(self) -> int:
        return sum(e.size for d, e in self._state.images.items() if not self._evictable(d))

    def _evict(self, *, room_for: int) -> None:
        """The least recently used images no job uses, removed until ``room_for`` more bytes fit."""
        by_age = sorted(self._state.images.items(), key=lambda item: item[1].last_used)
        for digest, entry in by_age:
            if self._kept_bytes() + room_for <= self._max_bytes:
                break
            if (
                self._in_use.get(digest)
                or digest in self._digest_locks
                and self._digest_locks[digest].locked()
            ):
                continue
            log.info("image cache: evicting %s (%d bytes)", ", ".join(entry.references), entry.size)
            del self._state.images[digest]
            self._state.references = {r: d for r, d in self._state.references.items() if d != digest}
            _remove_tree(self._root(digest))
        self._drop_unused_blobs()

    def _drop_unused_blobs(self) -> None:
        kept = {blob for entry in self._state.images.values() for blob in entry.blobs}
        kept |= self._pinned  # a pull in progress may be reusing blobs it found
        for path in (self._folder / "blobs" / "sha256").iterdir():
            if f"sha256:{path.name}" not in kept:
                path.unlink(missing_ok=True)

    # --- paths and the index -----------------------------------------------------------------------

    def _root(self, digest: str) -> Path:
        return self._folder / "roots" / digest.removeprefix("sha256:")

    def _blob(self, digest: str) -> Path:
        return self._folder / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def _save(self) -> None:
        write_index(self._folder / "index.json", self._state, scratch=self._folder / "partial")

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            import httpx  # at the first pull: see the imports

            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(self._timeout, connect=min(self._timeout, 10.0)),
                transport=self._transport,
            )
        return self._http


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


__all__ = ["Image", "ImageStore", "Obtained"]
