"""Layers checked against the configuration's rootfs.diff_ids (the digests of their uncompressed tars), on
a real registry on loopback: a mismatch or a missing diff_id refuses the image and leaves nothing cached."""

from __future__ import annotations

import gzip
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from oscar_manager.backends.images.errors import ImageRefused
from oscar_manager.backends.images.store import ImageStore
from tests.support.oci_registry import Entry, OciImage, Registry, diff_id, layer, sha256


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ImageStore]:
    store = ImageStore(tmp_path / "images", max_bytes=64 << 20)
    store.open()
    yield store
    await store.close()


def _assert_nothing_kept(store: ImageStore, folder: Path) -> None:
    assert store.cached() == []
    for sub in ("roots", "partial", "blobs/sha256"):
        assert list((folder / sub).iterdir()) == [], sub


async def test_a_layer_whose_tar_is_not_its_diff_id_is_refused_and_nothing_kept(
    registry: Registry, busybox_base: bytes, store: ImageStore, tmp_path: Path
) -> None:
    extra = layer([Entry("etc/motd", b"hello\n")])
    wrong = sha256(b"another tar")
    image = OciImage([busybox_base, extra], diff_ids=[diff_id(busybox_base), wrong])
    reference = registry.push("digests/wrong", "v1", image)
    with pytest.raises(ImageRefused) as refused:
        await store.obtain(reference)
    assert refused.value.message == (
        f"image {reference}: layer {sha256(extra)} unpacks to a tar of digest {diff_id(extra)}, but the"
        f" image's configuration names {wrong} (its diff_id): refused"
    )
    _assert_nothing_kept(store, tmp_path / "images")
    # Not remembered as refused either: the image pushed again, right this time, is pulled.
    reference = registry.push("digests/wrong", "v1", OciImage([busybox_base, extra]))
    assert ((await store.obtain(reference)).image.root / "etc" / "motd").read_bytes() == b"hello\n"


@pytest.mark.parametrize(
    ("diff_ids", "message"),
    [
        ([], "its configuration lists no rootfs.diff_ids, so its layers cannot be checked: refused"),
        (["first"], "its manifest has 2 layers and its configuration 1 rootfs.diff_ids: refused"),
        (["first", "first", "first"], "its manifest has 2 layers and its configuration 3 rootfs.diff_ids"),
        (["first", "sha512:" + "0" * 128], "unsupported diff_id 'sha512:0000"),
    ],
    ids=["none", "one-too-few", "one-too-many", "not-sha256"],
)
async def test_diff_ids_that_do_not_describe_the_layers_refuse_the_image(
    registry: Registry,
    busybox_base: bytes,
    store: ImageStore,
    tmp_path: Path,
    diff_ids: list[str],
    message: str,
) -> None:
    layers = [busybox_base, layer([Entry("etc/motd", b"hello\n")])]
    diff_ids = [diff_id(busybox_base) if one == "first" else one for one in diff_ids]
    repository = f"digests/case-{sha256(repr(diff_ids).encode())[7:19]}"
    reference = registry.push(repository, "v1", OciImage(layers, diff_ids=diff_ids))
    with pytest.raises(ImageRefused, match=f"^image {re.escape(reference)}: {message}"):
        await store.obtain(reference)
    _assert_nothing_kept(store, tmp_path / "images")  # refused before any layer is downloaded


async def test_a_plain_tar_layer_counts_its_bytes_after_the_archive(
    registry: Registry, busybox_base: bytes, store: ImageStore
) -> None:
    # Zero blocks after the end of the archive (tarfile stops reading before them) are in the diff_id,
    # as a tool hashing the whole stream (Docker) wrote it: the image is accepted with it, not without.
    tar = layer([Entry("etc/motd", b"plain\n")], compress=False) + bytes(64 * 512)
    tarred = registry.push("digests/plain", "v1", OciImage([busybox_base, tar]))
    assert ((await store.obtain(tarred)).image.root / "etc" / "motd").read_bytes() == b"plain\n"
    gzipped = gzip.compress(tar, mtime=0)
    cut = diff_id(tar[: -64 * 512])
    image = OciImage([busybox_base, gzipped], diff_ids=[diff_id(busybox_base), cut])
    with pytest.raises(ImageRefused, match=f"unpacks to a tar of digest {diff_id(tar)}, but .* names {cut}"):
        await store.obtain(registry.push("digests/cut", "v1", image))
