"""A layer read as its uncompressed tar and hashed: the digest is that of every uncompressed byte (the zero
blocks and padding tarfile leaves unread included), gzip or plain, read in bounded pieces."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from oscar_manager.backends.images.errors import ImageRefused
from oscar_manager.backends.images.layer_stream import AFTER_ARCHIVE, UncompressedLayer, UnreadableLayer
from oscar_manager.backends.images.unpack import Budget, RootWriter
from tests.support.oci_registry import Entry, layer

# Far more than tarfile's own reads (10240 bytes): none of it is read by tarfile.
TRAILING_ZEROS = bytes(300 * 512)


def _tar() -> bytes:
    return layer(
        [Entry("etc/motd", b"hello\n"), Entry("bin", kind="dir"), Entry("big", os.urandom(50_000))],
        compress=False,
    )


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _parse_then_finish(blob: bytes) -> tuple[list[str], str]:
    """What tarfile reads of the stream (its members), then the digest of all of it."""
    reader = UncompressedLayer(io.BytesIO(blob))
    with tarfile.open(fileobj=reader, mode="r|") as archive:
        names = [member.name for member in archive]
    return names, reader.finish()


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "plain"])
@pytest.mark.parametrize("trailing", [b"", TRAILING_ZEROS], ids=["as-written", "trailing-zero-blocks"])
def test_digest_is_that_of_the_whole_uncompressed_tar(compress: bool, trailing: bytes) -> None:
    tar = _tar() + trailing
    names, digest = _parse_then_finish(gzip.compress(tar) if compress else tar)
    assert names == ["etc/motd", "bin", "big"]
    assert digest == _digest(tar)


def test_gzip_of_several_members_is_read_to_its_last() -> None:
    # Concatenated gzip members are one stream (as Go's reader, and so Docker, reads them).
    tar = _tar() + TRAILING_ZEROS
    middle = len(tar) // 2
    names, digest = _parse_then_finish(gzip.compress(tar[:middle]) + gzip.compress(tar[middle:]))
    assert names == ["etc/motd", "bin", "big"]
    assert digest == _digest(tar)


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "plain"])
def test_what_follows_the_archive_is_bounded(compress: bool) -> None:
    # Some zeros after the archive pass (up to a megabyte, with the writer's own end blocks and padding);
    # more is refused, not hashed for ever.
    fits = _tar() + bytes(AFTER_ARCHIVE - tarfile.RECORDSIZE)
    assert _parse_then_finish(gzip.compress(fits) if compress else fits)[1] == _digest(fits)
    flood = _tar() + bytes(AFTER_ARCHIVE + 1024 * 512)
    with pytest.raises(UnreadableLayer, match=f"more than {AFTER_ARCHIVE} bytes follow the end of its tar"):
        _parse_then_finish(gzip.compress(flood) if compress else flood)


def test_reads_are_bounded_by_the_size_asked() -> None:
    # 64 MiB of zeros compress to some 64 KiB: each read gives at most what was asked, never the lot.
    zeros = bytes(64 << 20)
    reader = UncompressedLayer(io.BytesIO(gzip.compress(zeros, compresslevel=9)))
    sizes = []
    while piece := reader.read(10240):
        sizes.append(len(piece))
    assert max(sizes) <= 10240
    assert sum(sizes) == len(zeros)
    assert reader.finish() == _digest(zeros)


@pytest.mark.parametrize(
    ("blob", "words"),
    [
        (bz2.compress(b"x" * 1000), "compressed with bzip2"),
        (b"\xfd7zXZ\x00" + bytes(100), "compressed with xz"),
        (b"\x28\xb5\x2f\xfd" + bytes(100), "compressed with zstd"),
        (gzip.compress(os.urandom(100_000))[:-5000], "ends before its last member"),
        (gzip.compress(b"x" * 1000)[:-4] + b"\0\0\0\0", "corrupt"),  # its length in the trailer wrong
        (gzip.compress(b"x" * 1000) + b"garbage!", "corrupt"),  # after the member: not another one
    ],
    ids=["bzip2", "xz", "zstd", "truncated", "bad-trailer", "trailing-garbage"],
)
def test_unreadable_streams_are_refused(blob: bytes, words: str) -> None:
    with pytest.raises(UnreadableLayer, match=words):
        UncompressedLayer(io.BytesIO(blob)).finish()


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "plain"])
def test_root_writer_returns_the_layers_diff_id(tmp_path: Path, compress: bool) -> None:
    tar = _tar() + TRAILING_ZEROS
    root_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        writer = RootWriter(root_fd, image="test/image", budget=Budget(1 << 20))
        found = writer.apply(io.BytesIO(gzip.compress(tar) if compress else tar))
    finally:
        os.close(root_fd)
    assert found == _digest(tar)
    assert (tmp_path / "etc" / "motd").read_bytes() == b"hello\n"


def test_root_writer_names_the_image_of_an_unreadable_layer(tmp_path: Path) -> None:
    root_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        writer = RootWriter(root_fd, image="test/image", budget=Budget(1 << 20))
        with pytest.raises(ImageRefused, match="image test/image: a layer cannot be read: it is compressed"):
            writer.apply(io.BytesIO(bz2.compress(_tar())))
    finally:
        os.close(root_fd)


def test_a_read_of_nothing_gives_nothing() -> None:
    reader = UncompressedLayer(io.BytesIO(gzip.compress(bytes(100_000))))
    assert reader.read(0) == b""
    assert len(reader.read(4096)) == 4096
