"""The image cache against a real registry on loopback: pulls, digests, credentials, bounds, and layers
built to escape the root."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from oscar_manager.backends.images.credentials import Credentials
from oscar_manager.backends.images.errors import ImagePullFailed, ImageRefused, ImageTooLarge
from oscar_manager.backends.images.store import ImageStore
from oscar_manager.backends.images.unpack import UnsafeLayer
from tests.integration.images.conftest import CREDENTIALS
from tests.support.oci_registry import OCI_INDEX, Entry, OciImage, Registry, layer, sha256


def _store(tmp_path: Path, **kwargs: object) -> ImageStore:
    store = ImageStore(tmp_path / "images", max_bytes=kwargs.pop("max_bytes", 64 << 20), **kwargs)  # type: ignore[arg-type]
    store.open()
    return store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ImageStore]:
    store = _store(tmp_path)
    yield store
    await store.close()


def _files(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


class CountingTransport(httpx.AsyncBaseTransport):
    """Forwards to the real registry, counting requests and optionally corrupting layer blobs: a registry
    that sends bytes other than the digest it names cannot be had from the real one."""

    def __init__(self, *, corrupt: bool = False) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.corrupt = corrupt
        self.paths: list[str] = []

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        response = await self.inner.handle_async_request(request)
        if self.corrupt and "/blobs/" in request.url.path and response.status_code == 200:
            body = await response.aread()
            if body[:2] == b"\x1f\x8b":  # a gzip layer, not the config
                body = body[:-1] + bytes([body[-1] ^ 0xFF])
            return httpx.Response(200, headers=response.headers, content=body)
        return response


async def test_pulls_once_then_serves_from_cache(
    registry: Registry, busybox_base: bytes, tmp_path: Path
) -> None:
    reference = registry.push("store/once", "v1", OciImage([busybox_base], working_dir="/srv/app"))
    transport = CountingTransport()
    store = _store(tmp_path, transport=transport)
    try:
        first, second = await asyncio.gather(store.obtain(reference), store.obtain(reference))
        assert first.image.digest == second.image.digest
        manifests = [p for p in transport.paths if "/manifests/" in p]
        assert len(manifests) == 1  # two jobs, one pull
        later = await store.obtain(reference)
        assert later.pulled_seconds is None
        assert len(transport.paths) == len([p for p in transport.paths])  # no new request
        assert [p for p in transport.paths if "/manifests/" in p] == manifests
        root = later.image.root
        assert (root / "bin" / "busybox").stat().st_size > 100_000
        assert os.readlink(root / "bin" / "sh") == "busybox"
        assert (root / "srv" / "app").is_dir()  # the working directory is made when the image lacks it
        assert later.image.config.working_dir == "/srv/app"
        assert [entry["references"] for entry in store.cached()] == [[reference]]
    finally:
        await store.close()
    # Another process: the index and root are found again, no request.
    again = _store(tmp_path, transport=transport)
    try:
        count = len(transport.paths)
        assert (await again.obtain(reference)).pulled_seconds is None
        assert len(transport.paths) == count
    finally:
        await again.close()


async def test_whiteouts_and_opaque_folders(
    registry: Registry, busybox_base: bytes, store: ImageStore
) -> None:
    lower = layer(
        [
            Entry("etc", kind="dir"),
            Entry("etc/gone", b"x"),
            Entry("etc/kept", b"x"),
            Entry("opt/old/a", b"x"),
            Entry("opt/old/b", b"x"),
        ]
    )
    upper = layer(
        [Entry("etc/.wh.gone", b""), Entry("opt/old/new", b"y"), Entry("opt/old/.wh..wh..opq", b"")]
    )
    reference = registry.push("store/whiteouts", "v1", OciImage([busybox_base, lower, upper]))
    root = (await store.obtain(reference)).image.root
    assert not (root / "etc" / "gone").exists()
    assert (root / "etc" / "kept").exists()
    assert sorted(p.name for p in (root / "opt" / "old").iterdir()) == ["new"]
    assert not any(".wh." in name for name in _files(root))


async def test_a_working_directory_through_an_images_link_is_left_to_the_sandbox(
    registry: Registry, busybox_base: bytes, store: ImageStore
) -> None:
    # As /bin -> usr/bin in a merged-/usr image: the working directory is reached through the link at run
    # time, inside the sandbox; unpacking neither follows it nor refuses the image.
    linked = layer([Entry("srv/data", kind="dir"), Entry("app", kind="symlink", link="srv")])
    image = OciImage([busybox_base, linked], working_dir="/app/data")
    root = (await store.obtain(registry.push("store/linked-workdir", "v1", image))).image.root
    assert os.readlink(root / "app") == "srv"
    assert (root / "srv" / "data").is_dir()


async def test_permissions_and_hard_links(registry: Registry, busybox_base: bytes, store: ImageStore) -> None:
    files = layer(
        [
            Entry("usr/bin/tool", b"#!/bin/sh\n", mode=0o4755),  # set-user-id: dropped
            Entry("usr/bin/alias", kind="hardlink", link="usr/bin/tool"),
            Entry("secret", kind="dir", mode=0o700),
        ]
    )
    root = (
        await store.obtain(registry.push("store/modes", "v1", OciImage([busybox_base, files])))
    ).image.root
    tool = (root / "usr" / "bin" / "tool").stat()
    assert tool.st_mode & 0o7777 == 0o755
    assert (root / "usr" / "bin" / "alias").stat().st_ino == tool.st_ino
    assert (root / "secret").stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    ("entries", "words"),
    [
        ([Entry("../outside-file", b"x")], "'..'"),
        ([Entry("a/../../outside-file", b"x")], "'..'"),
        ([Entry("/outside-file", b"x")], "absolute"),
        # A link out of the root, then a file written through it.
        ([Entry("escape", kind="symlink", link="{outside}"), Entry("escape/outside-file", b"x")], "link"),
        ([Entry("escape", kind="symlink", link="../../../.."), Entry("escape/outside-file", b"x")], "link"),
        # A hard link to a file outside the root, by '..' or through a symlink.
        ([Entry("hl", kind="hardlink", link="../../../{outside}/victim")], "'..'"),
        (
            [Entry("up", kind="symlink", link="{outside}"), Entry("hl", kind="hardlink", link="up/victim")],
            "link",
        ),
    ],
)
async def test_layers_escaping_the_root_write_nothing_outside(
    registry: Registry,
    busybox_base: bytes,
    store: ImageStore,
    tmp_path: Path,
    entries: list[Entry],
    words: str,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("intact")
    for entry in entries:
        entry.link = entry.link.replace(
            "{outside}", str(outside).lstrip("/") if entry.kind == "hardlink" else str(outside)
        )
    before = _files(tmp_path)
    repository = f"store/hostile-{sha256(repr(entries).encode())[7:19]}"
    reference = registry.push(repository, "v1", OciImage([busybox_base, layer(entries)]))
    with pytest.raises(UnsafeLayer, match=words):
        await store.obtain(reference)
    assert _files(outside) == {"victim"}
    assert (outside / "victim").read_text() == "intact"
    assert not (tmp_path / "outside-file").exists()
    assert "outside-file" not in os.listdir("/")
    # Nothing of the refused image is kept: no root, no partial unpack, no index entry.
    assert {p for p in _files(tmp_path) - before if "/roots/" in p or "/partial/" in p} == set()
    assert store.cached() == []


async def test_digest_mismatch_is_refused_and_nothing_cached(
    registry: Registry, busybox_base: bytes, tmp_path: Path
) -> None:
    reference = registry.push("store/corrupt", "v1", OciImage([busybox_base]))
    store = _store(tmp_path, transport=CountingTransport(corrupt=True))
    try:
        with pytest.raises(ImagePullFailed, match="does not match its digest"):
            await store.obtain(reference)
        assert store.cached() == []
    finally:
        await store.close()
    images = tmp_path / "images"
    assert not any((images / "blobs" / "sha256").iterdir())
    assert not any((images / "roots").iterdir())
    assert not any((images / "partial").iterdir())


async def test_missing_image_fails_with_the_registrys_answer(registry: Registry, store: ImageStore) -> None:
    with pytest.raises(ImagePullFailed, match="404.*MANIFEST_UNKNOWN|404.*NAME_UNKNOWN"):
        await store.obtain(f"{registry.host}/store/nothing-here:v1")


async def test_private_image_needs_credentials(
    private_registry: Registry, busybox_base: bytes, tmp_path: Path
) -> None:
    reference = private_registry.push("store/private", "v1", OciImage([busybox_base]))
    anonymous = _store(tmp_path / "a")
    try:
        with pytest.raises(ImagePullFailed, match="401 Unauthorized without credentials"):
            await anonymous.obtain(reference)
    finally:
        await anonymous.close()
    secrets_dir = tmp_path / "pull-secrets"
    secrets_dir.mkdir()
    user, password = CREDENTIALS
    (secrets_dir / "wrong").write_text(
        json.dumps({"auths": {private_registry.host: {"username": user, "password": "no"}}})
    )
    (secrets_dir / "right").write_text(
        json.dumps({"auths": {private_registry.host: {"username": user, "password": password}}})
    )
    credentials = Credentials(secrets_dir=secrets_dir)
    store = _store(tmp_path / "b", credentials=credentials)
    try:
        with pytest.raises(ImagePullFailed, match="401 Unauthorized with the configured credentials"):
            await store.obtain(reference, pull_secrets=["wrong"])
        pulled = await store.obtain(reference, pull_secrets=["right"])
        assert (pulled.image.root / "bin" / "busybox").exists()
    finally:
        await store.close()


async def test_image_bigger_than_the_cache_is_refused_with_sizes(
    registry: Registry, busybox_base: bytes, tmp_path: Path
) -> None:
    reference = registry.push("store/big", "v1", OciImage([busybox_base]))
    store = _store(tmp_path, max_bytes=100_000)
    try:
        with pytest.raises(
            ImageTooLarge, match=r"its layers are \d+ bytes compressed, more than .* 100000 bytes"
        ):
            await store.obtain(reference)
    finally:
        await store.close()
    # Compressed it fits, unpacked it does not (a bomb of zeros): stopped while unpacking.
    zeros = layer([Entry("zeros", bytes(5 << 20))])
    bomb = registry.push("store/bomb", "v1", OciImage([zeros]))
    store = _store(tmp_path / "2", max_bytes=1 << 20)
    try:
        with pytest.raises(ImageTooLarge, match="unpacked it is over"):
            await store.obtain(bomb)
        assert store.cached() == []
    finally:
        await store.close()


async def test_least_recently_used_image_is_evicted(
    registry: Registry, busybox_base: bytes, tmp_path: Path
) -> None:
    first = registry.push("store/lru-a", "v1", OciImage([busybox_base]))
    second = registry.push("store/lru-b", "v1", OciImage([busybox_base, layer([Entry("b", b"b")])]))
    store = _store(tmp_path, max_bytes=5 << 20)  # room for one busybox root and its layer, not two
    try:
        kept = (await store.obtain(first)).image
        with store.in_use(kept):
            with pytest.raises(ImageTooLarge):
                await store.obtain(second)  # the only other image is in use: nothing to evict
        newer = (await store.obtain(second)).image
        assert [entry["references"] for entry in store.cached()] == [[second]]
        assert not kept.root.exists()
        assert newer.root.exists()
    finally:
        await store.close()


async def test_other_architectures_are_refused(
    registry: Registry, busybox_base: bytes, store: ImageStore
) -> None:
    arm = OciImage([busybox_base], architecture="arm64")
    for blob in [arm.config(), *arm.layers]:
        registry.push_blob("store/arm", blob)
    manifest = arm.manifest()
    registry.push_manifest("store/arm", "single", manifest)
    digest = registry.push_manifest("store/arm", "arm-manifest", manifest)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": digest,
                    "size": len(manifest),
                    "platform": {"os": "linux", "architecture": "arm64"},
                }
            ],
        }
    ).encode()
    registry.push_manifest("store/arm", "index", index, media_type=OCI_INDEX)
    with pytest.raises(ImageRefused, match="is for arm64, and this machine is amd64"):
        await store.obtain(f"{registry.host}/store/arm:single")
    with pytest.raises(ImageRefused, match="is for arm64, and this machine is amd64"):
        await store.obtain(f"{registry.host}/store/arm:index")
