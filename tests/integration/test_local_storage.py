"""The ``ObjectStore`` contract (run against every store in the ``store`` fixture), then local specifics."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import resource
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from oscar_manager.errors import Conflict
from oscar_manager.storage.base import (
    BucketNotFound,
    InvalidKey,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    StorageError,
)
from oscar_manager.storage.local import STAGING, LocalObjectStore
from oscar_manager.storage.local_files import READ_CHUNK
from oscar_manager.storage.local_listing import file_etag
from oscar_manager.storage.s3 import S3ObjectStore

MiB = 1024 * 1024


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)
        yield part


async def read_all(store: ObjectStore, bucket: str, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.read_stream(bucket, key)])


async def keys(store: ObjectStore, bucket: str, prefix: str = "") -> list[str]:
    return [info.key for info in await store.list_objects(bucket, prefix)]


def files_under(path: Path) -> list[str]:
    """Every non-directory entry below ``path`` (symlinks included), relative and sorted."""
    return sorted(
        str(Path(dirpath, name).relative_to(path)) for dirpath, _, names in os.walk(path) for name in names
    )


@pytest.fixture(params=["local", "s3", "minio"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """The same contract for local folders, moto's S3 and a real MinIO."""
    if request.param == "local":
        return LocalObjectStore(tmp_path / "storage")
    s3: S3ObjectStore = request.getfixturevalue("s3_store" if request.param == "s3" else "minio_store")
    return s3


@pytest.fixture
async def bucket(store: ObjectStore) -> str:
    # Unique, so that the suite can share one S3 server.
    name = f"test-{uuid.uuid4().hex[:12]}"
    await store.ensure_bucket(name)
    return name


# --- contract ----------------------------------------------------------------------------------


async def test_ensure_bucket_is_idempotent(store: ObjectStore) -> None:
    name = f"test-{uuid.uuid4().hex[:12]}"
    assert not await store.bucket_exists(name)
    await store.ensure_bucket(name)
    await store.put_stream(name, "kept.txt", chunks(b"x"))
    await store.ensure_bucket(name)
    assert await store.bucket_exists(name)
    assert name in await store.list_buckets()
    assert await keys(store, name) == ["kept.txt"]


async def test_put_stream_round_trip(store: ObjectStore, bucket: str) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    info = await store.put_stream(bucket, "dir/sub/file.txt", chunks(b"hello ", b"", b"world"))
    assert (info.bucket, info.key, info.size) == (bucket, "dir/sub/file.txt", 11)
    assert info.etag
    assert info.last_modified.tzinfo is not None
    assert before <= info.last_modified <= datetime.now(UTC) + timedelta(seconds=5)
    assert await store.stat(bucket, "dir/sub/file.txt") == info
    assert await read_all(store, bucket, "dir/sub/file.txt") == b"hello world"


async def test_put_file_and_get_file(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"\x00\x01binary\xff" * 1000)
    info = await store.put_file(bucket, "data/source.bin", source)
    assert info.size == source.stat().st_size
    target = tmp_path / "out" / "deeper" / "copy.bin"
    got = await store.get_file(bucket, "data/source.bin", target)
    assert target.read_bytes() == source.read_bytes()
    assert got == info


async def test_get_file_replaces_an_existing_target(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    await store.put_stream(bucket, "a.txt", chunks(b"new"))
    target = tmp_path / "out" / "a.txt"
    target.parent.mkdir()
    target.write_bytes(b"old content that is longer")
    await store.get_file(bucket, "a.txt", target)
    assert target.read_bytes() == b"new"
    assert files_under(target.parent) == ["a.txt"]


async def test_zero_byte_objects(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    assert (await store.put_stream(bucket, "empty", chunks())).size == 0
    assert (await store.put_stream(bucket, "empty-chunks", chunks(b"", b""))).size == 0
    empty = tmp_path / "empty-source"
    empty.touch()
    assert (await store.put_file(bucket, "empty-file", empty)).size == 0
    assert [chunk async for chunk in store.read_stream(bucket, "empty")] == []
    target = tmp_path / "empty-target"
    assert (await store.get_file(bucket, "empty-chunks", target)).size == 0
    assert target.exists()
    assert target.read_bytes() == b""
    assert await keys(store, bucket) == ["empty", "empty-chunks", "empty-file"]


@pytest.mark.parametrize(
    "key",
    ["with space.txt", "données/été.txt", "a+b=c.txt", "literal%2Fpercent%20.txt", "日本/語 ファイル+%.dat"],
)
async def test_unusual_keys_round_trip(store: ObjectStore, bucket: str, key: str) -> None:
    await store.put_stream(bucket, key, chunks(key.encode()))
    assert await keys(store, bucket) == [key]
    assert await read_all(store, bucket, key) == key.encode()
    stat = await store.stat(bucket, key)
    assert stat is not None
    assert stat.key == key
    assert await store.delete_object(bucket, key)
    assert await keys(store, bucket) == []


async def test_list_prefix_is_a_string_prefix(store: ObjectStore, bucket: str) -> None:
    for key in ["in/a", "input/b", "inx", "i", "other/in/c", "in/deep/er/d"]:
        await store.put_stream(bucket, key, chunks(b"."))
    assert await keys(store, bucket, "in") == ["in/a", "in/deep/er/d", "input/b", "inx"]
    assert await keys(store, bucket, "in/") == ["in/a", "in/deep/er/d"]
    assert await keys(store, bucket, "in/de") == ["in/deep/er/d"]
    assert await keys(store, bucket, "input/b") == ["input/b"]
    assert await keys(store, bucket, "nothing") == []
    assert await keys(store, bucket) == ["i", "in/a", "in/deep/er/d", "input/b", "inx", "other/in/c"]


async def test_list_is_sorted_by_whole_key(store: ObjectStore, bucket: str) -> None:
    # '-' sorts before '/', so a per-directory walk would get this wrong.
    for key in ["b", "a/b", "a-b", "a0", "A", "a/a/z", "é"]:
        await store.put_stream(bucket, key, chunks(b"."))
    assert await keys(store, bucket) == ["A", "a-b", "a/a/z", "a/b", "a0", "b", "é"]


async def test_list_objects_reports_stat(store: ObjectStore, bucket: str) -> None:
    put = await store.put_stream(bucket, "x/y.txt", chunks(b"12345"))
    assert await store.list_objects(bucket) == [put]


async def test_folder_markers_are_listed_when_asked_for(store: ObjectStore) -> None:
    """Upstream's bucket listing shows the markers of the folders made for services (``in/``), not
    folders that only hold uploads; on local storage the folders ``ensure_folder`` made are the markers."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    await store.ensure_folder(name, "in")
    await store.ensure_folder(name, "nested/deeper")
    await store.put_stream(name, "in/file.txt", chunks(b"data"))
    await store.put_stream(name, "uploaded/only/file.txt", chunks(b"more"))
    listed = await store.list_objects(name, markers=True)
    assert [(info.key, info.size) for info in listed] == [
        ("in/", 0),
        ("in/file.txt", 4),
        ("nested/deeper/", 0),
        ("uploaded/only/file.txt", 4),
    ]
    assert [info.key for info in await store.list_objects(name, "nested/", markers=True)] == [
        "nested/deeper/"
    ]
    assert [info.key for info in await store.list_objects(name)] == ["in/file.txt", "uploaded/only/file.txt"]


async def test_folders_are_not_objects(store: ObjectStore) -> None:
    name = f"test-{uuid.uuid4().hex[:12]}"
    await store.ensure_folder(name, "input")  # creates the bucket too
    await store.ensure_folder(name, "output/")
    await store.ensure_folder(name, "output/")
    await store.ensure_folder(name, "nested/deeper/still")
    assert await store.bucket_exists(name)
    assert await store.list_objects(name) == []
    assert await store.stat(name, "input") is None
    with pytest.raises(ObjectNotFound):
        await read_all(store, name, "input")
    assert not await store.delete_object(name, "input")
    await store.put_stream(name, "input/file.txt", chunks(b"data"))
    assert await keys(store, name) == ["input/file.txt"]


async def test_overwrite_changes_content_and_etag(store: ObjectStore, bucket: str) -> None:
    first = await store.put_stream(bucket, "f.txt", chunks(b"one"))
    second = await store.put_stream(bucket, "f.txt", chunks(b"two"))
    assert first.size == second.size
    assert first.etag != second.etag
    assert await read_all(store, bucket, "f.txt") == b"two"
    stat = await store.stat(bucket, "f.txt")
    assert stat is not None
    assert stat.etag == second.etag


async def test_missing_objects(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    await store.put_stream(bucket, "present/x", chunks(b"x"))
    for key in ["absent", "present/absent", "absent/deeper/key", "present/x/under-a-file"]:
        assert await store.stat(bucket, key) is None
        stream = store.read_stream(bucket, key)
        with pytest.raises(ObjectNotFound):
            await anext(stream)
        with pytest.raises(ObjectNotFound):
            await store.get_file(bucket, key, tmp_path / "target")
        assert not (tmp_path / "target").exists()
        assert not await store.delete_object(bucket, key)
    assert await keys(store, bucket) == ["present/x"]


async def test_delete(store: ObjectStore, bucket: str) -> None:
    await store.put_stream(bucket, "folder/a", chunks(b"a"))
    await store.put_stream(bucket, "folder/b", chunks(b"b"))
    assert await store.delete_object(bucket, "folder/a")
    assert await store.stat(bucket, "folder/a") is None
    assert not await store.delete_object(bucket, "folder/a")
    assert await keys(store, bucket) == ["folder/b"]
    assert await store.bucket_exists(bucket)


async def test_unknown_bucket(store: ObjectStore, tmp_path: Path) -> None:
    name = f"missing-{uuid.uuid4().hex[:12]}"
    source = tmp_path / "source"
    source.write_bytes(b"x")
    assert not await store.bucket_exists(name)
    assert name not in await store.list_buckets()
    with pytest.raises(BucketNotFound):
        await store.list_objects(name)
    with pytest.raises(BucketNotFound):
        await store.stat(name, "key")
    with pytest.raises(BucketNotFound):
        await store.put_stream(name, "key", chunks(b"x"))
    with pytest.raises(BucketNotFound):
        await store.put_file(name, "key", source)
    with pytest.raises(BucketNotFound):
        await read_all(store, name, "key")
    with pytest.raises(BucketNotFound):
        await store.get_file(name, "key", tmp_path / "target")
    with pytest.raises(BucketNotFound):
        await store.delete_object(name, "key")
    assert not await store.bucket_exists(name)


class Boom(Exception):
    pass


async def failing_after(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
    raise Boom("client went away")


async def test_failed_put_leaves_previous_version(store: ObjectStore, bucket: str) -> None:
    await store.put_stream(bucket, "kept.txt", chunks(b"original"))
    with pytest.raises(Boom):
        await store.put_stream(bucket, "kept.txt", failing_after(b"partial ", b"replacement"))
    with pytest.raises(Boom):
        await store.put_stream(bucket, "new.txt", failing_after(b"partial"))
    assert await keys(store, bucket) == ["kept.txt"]
    assert await read_all(store, bucket, "kept.txt") == b"original"


BAD_KEYS = [
    "../outside.txt",
    "a/../../outside.txt",
    "./x",
    "a//b",
    "/abs",
    "trailing/",
    "nul\x00",
    "back\\slash",
]


def operations(store: ObjectStore, bucket: str, key: str, tmp: Path) -> list[Callable[[], Awaitable[object]]]:
    source = tmp / "source"
    source.write_bytes(b"payload")
    return [
        lambda: store.put_stream(bucket, key, chunks(b"payload")),
        lambda: store.put_file(bucket, key, source),
        lambda: store.get_file(bucket, key, tmp / "target"),
        lambda: read_all(store, bucket, key),
        lambda: store.stat(bucket, key),
        lambda: store.delete_object(bucket, key),
    ]


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_invalid_keys_refused(store: ObjectStore, bucket: str, key: str, tmp_path: Path) -> None:
    for operation in operations(store, bucket, key, tmp_path):
        with pytest.raises(InvalidKey):
            await operation()
    assert await store.list_objects(bucket) == []


@pytest.mark.parametrize("name", ["../escape", "UPPER", "a", ".staging", "x/y"])
async def test_invalid_buckets_refused(store: ObjectStore, name: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidKey):
        await store.ensure_bucket(name)
    with pytest.raises(InvalidKey):
        await store.ensure_folder(name, "input")
    with pytest.raises(InvalidKey):
        await store.list_objects(name)
    with pytest.raises(InvalidKey):
        await store.bucket_exists(name)
    for operation in operations(store, name, "key", tmp_path):
        with pytest.raises(InvalidKey):
            await operation()


@pytest.mark.parametrize("folder", ["../up", "a/../b", "", "/"])
async def test_invalid_folders_refused(store: ObjectStore, bucket: str, folder: str) -> None:
    with pytest.raises(InvalidKey):
        await store.ensure_folder(bucket, folder)


# --- local storage specifics -----------------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "storage")


@pytest.fixture
async def local_bucket(local: LocalObjectStore) -> str:
    await local.ensure_bucket("bucket")
    return "bucket"


async def test_layout_on_disk(local: LocalObjectStore, tmp_path: Path) -> None:
    await local.ensure_folder("photos", "input")
    await local.put_stream("photos", "output/a b/é.txt", chunks(b"content"))
    root = tmp_path / "storage"
    assert local.bucket_path("photos") == root / "photos"
    assert local.object_path("photos", "output/a b/é.txt") == root / "photos" / "output" / "a b" / "é.txt"
    assert (root / "photos" / "input").is_dir()
    assert (root / "photos" / "output" / "a b" / "é.txt").read_bytes() == b"content"
    assert await local.list_buckets() == ["photos"]  # .staging is not a bucket
    assert (root / STAGING).is_dir()
    assert list((root / STAGING).iterdir()) == []


def test_relative_root_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert LocalObjectStore(Path("data")).bucket_path("abc") == tmp_path / "data" / "abc"


async def test_no_root_yet(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "not-created")
    assert await store.list_buckets() == []
    assert not await store.bucket_exists("abc")
    with pytest.raises(BucketNotFound):
        await store.list_objects("abc")
    await store.ensure_bucket("abc")
    assert (tmp_path / "not-created" / "abc").is_dir()


@pytest.mark.parametrize("key", BAD_KEYS)
def test_paths_refuse_invalid_keys(local: LocalObjectStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        local.object_path("bucket", key)


@pytest.mark.parametrize("name", ["..", "../x", ".staging", "a/b"])
def test_paths_refuse_invalid_buckets(local: LocalObjectStore, name: str) -> None:
    with pytest.raises(InvalidKey):
        local.bucket_path(name)


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_traversal_writes_nothing(
    local: LocalObjectStore, local_bucket: str, key: str, tmp_path: Path
) -> None:
    before = files_under(tmp_path)
    for operation in operations(local, local_bucket, key, tmp_path):
        with pytest.raises(InvalidKey):
            await operation()
    if key != "trailing/":  # a valid folder name
        with pytest.raises(InvalidKey):
            await local.ensure_folder(local_bucket, key)
    # Only the fixture's own source file appeared; nothing under the root or beside it.
    assert files_under(tmp_path) == sorted({*before, "source"})
    assert files_under(tmp_path / "storage") == []


async def test_failed_put_leaves_no_trace(local: LocalObjectStore, local_bucket: str, tmp_path: Path) -> None:
    with pytest.raises(Boom):
        await local.put_stream(local_bucket, "deep/new/file.txt", failing_after(b"x" * (3 * MiB), b"y"))
    assert files_under(tmp_path / "storage") == []


async def test_cancelled_put_leaves_no_trace(
    local: LocalObjectStore, local_bucket: str, tmp_path: Path
) -> None:
    started = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield b"x" * (2 * MiB)
        started.set()
        yield b"y" * MiB
        await asyncio.Event().wait()
        yield b"never"

    task = asyncio.create_task(local.put_stream(local_bucket, "stalled.bin", stalls()))
    await started.wait()
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert files_under(tmp_path / "storage") == []


async def test_put_streams_into_staging_not_the_bucket(local: LocalObjectStore, local_bucket: str) -> None:
    staging = local.root / STAGING
    seen: list[tuple[list[str], int]] = []

    async def observed() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"z" * MiB
            # Each chunk has been written by the time the next one is asked for.
            staged = [entry.stat().st_size for entry in staging.iterdir()] if staging.exists() else []
            seen.append((files_under(local.bucket_path(local_bucket)), sum(staged)))

    await local.put_stream(local_bucket, "watched/file.bin", observed())
    assert seen[0][0] == []  # nothing in the bucket while uploading
    assert all(in_bucket == [] for in_bucket, _ in seen)
    assert [size for _, size in seen] == [MiB, 2 * MiB, 3 * MiB, 4 * MiB]
    assert files_under(local.bucket_path(local_bucket)) == ["watched/file.bin"]
    assert list(staging.iterdir()) == []


async def test_large_object_streams_through(
    local: LocalObjectStore, local_bucket: str, tmp_path: Path
) -> None:
    expected = hashlib.sha256()
    size = 64 * MiB
    # Odd sizes, so that coalescing and chunk boundaries are exercised.
    sizes = itertools.cycle([1, 7, 4096, MiB - 1, MiB, 3 * MiB + 5, 65_537])

    async def generated() -> AsyncIterator[bytes]:
        remaining = size
        while remaining:
            part = os.urandom(min(remaining, next(sizes)))
            expected.update(part)
            remaining -= len(part)
            yield part

    info = await local.put_stream(local_bucket, "big/blob.bin", generated())
    assert info.size == size
    target = tmp_path / "copy" / "blob.bin"
    got = await local.get_file(local_bucket, "big/blob.bin", target)
    assert got.size == size
    copied = hashlib.sha256()
    with target.open("rb") as handle:
        while block := handle.read(MiB):
            copied.update(block)
    assert copied.hexdigest() == expected.hexdigest()
    streamed = hashlib.sha256()
    chunk_sizes = set()
    async for chunk in local.read_stream(local_bucket, "big/blob.bin"):
        streamed.update(chunk)
        chunk_sizes.add(len(chunk))
    assert streamed.hexdigest() == expected.hexdigest()
    assert chunk_sizes == {READ_CHUNK}  # 64 MiB is a whole number of chunks
    second = await local.put_file(local_bucket, "big/again.bin", target)
    assert second.size == size
    assert second.etag != info.etag


async def test_read_streamchunks(local: LocalObjectStore, local_bucket: str) -> None:
    await local.put_stream(local_bucket, "k", chunks(b"a" * (3 * READ_CHUNK + 7)))
    sizes = [len(chunk) async for chunk in local.read_stream(local_bucket, "k")]
    assert sizes == [READ_CHUNK, READ_CHUNK, READ_CHUNK, 7]


async def test_abandoned_read_stream_closes_its_file(local: LocalObjectStore, local_bucket: str) -> None:
    await local.put_stream(local_bucket, "k", chunks(b"a" * (3 * READ_CHUNK)))
    open_before = len(os.listdir("/proc/self/fd"))
    stream = local.read_stream(local_bucket, "k")
    await anext(stream)
    assert len(os.listdir("/proc/self/fd")) == open_before + 1
    await stream.aclose()  # type: ignore[attr-defined]
    assert len(os.listdir("/proc/self/fd")) == open_before


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "secret.txt").write_bytes(b"secret")
    return directory


async def test_symlinks_are_not_objects(
    local: LocalObjectStore, local_bucket: str, outside: Path, tmp_path: Path
) -> None:
    base = local.bucket_path(local_bucket)
    (base / "passwd").symlink_to("/etc/passwd")
    (base / "dirlink").symlink_to(outside)
    (base / "real").mkdir()
    (base / "real" / "secret-link").symlink_to(outside / "secret.txt")
    (base / "real" / "file.txt").write_bytes(b"real")

    assert await keys(local, local_bucket) == ["real/file.txt"]
    for key in ["passwd", "dirlink/secret.txt", "real/secret-link"]:
        assert await local.stat(local_bucket, key) is None
        with pytest.raises(ObjectNotFound):
            await local.get_file(local_bucket, key, tmp_path / "stolen")
        with pytest.raises(ObjectNotFound):
            await read_all(local, local_bucket, key)
        assert not await local.delete_object(local_bucket, key)
    assert not (tmp_path / "stolen").exists()
    assert (base / "passwd").is_symlink()
    assert (outside / "secret.txt").read_bytes() == b"secret"


async def test_writes_do_not_follow_symlinks(
    local: LocalObjectStore, local_bucket: str, outside: Path
) -> None:
    base = local.bucket_path(local_bucket)
    (base / "dirlink").symlink_to(outside)
    (base / "filelink").symlink_to(outside / "secret.txt")
    with pytest.raises(Conflict):
        await local.put_stream(local_bucket, "dirlink/planted.txt", chunks(b"x"))
    with pytest.raises(Conflict):
        await local.ensure_folder(local_bucket, "dirlink/sub")
    # Writing over a symlink replaces the link itself, never its target.
    await local.put_stream(local_bucket, "filelink", chunks(b"mine"))
    assert not (base / "filelink").is_symlink()
    assert (base / "filelink").read_bytes() == b"mine"
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert (outside / "secret.txt").read_bytes() == b"secret"


async def test_symlinked_bucket_is_not_a_bucket(local: LocalObjectStore, outside: Path) -> None:
    await local.ensure_bucket("real")
    (local.root / "linked").symlink_to(outside)
    assert await local.list_buckets() == ["real"]
    assert not await local.bucket_exists("linked")
    with pytest.raises(BucketNotFound):
        await local.list_objects("linked")
    with pytest.raises(BucketNotFound):
        await local.stat("linked", "secret.txt")
    with pytest.raises(BucketNotFound):
        await local.put_stream("linked", "planted.txt", chunks(b"x"))
    with pytest.raises(StorageError):
        await local.ensure_bucket("linked")
    assert sorted(os.listdir(outside)) == ["secret.txt"]


async def test_put_file_refuses_symlinked_or_missing_source(
    local: LocalObjectStore, local_bucket: str, outside: Path, tmp_path: Path
) -> None:
    link = tmp_path / "link"
    link.symlink_to(outside / "secret.txt")
    with pytest.raises(StorageError):
        await local.put_file(local_bucket, "copied", link)
    with pytest.raises(StorageError):
        await local.put_file(local_bucket, "copied", tmp_path / "missing")
    with pytest.raises(StorageError, match="not a regular file"):
        await local.put_file(local_bucket, "copied", outside)
    assert await local.list_objects(local_bucket) == []


async def test_fifo_is_not_an_object(local: LocalObjectStore, local_bucket: str, tmp_path: Path) -> None:
    fifo = local.bucket_path(local_bucket) / "pipe"
    os.mkfifo(fifo)

    done = threading.Event()

    def unblock() -> None:
        # A reader stuck in open() cannot be cancelled: keep opening the write end so that the test
        # fails instead of hanging.
        done.wait(5)
        while not done.wait(0.05):
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    watchdog = threading.Thread(target=unblock, daemon=True)
    watchdog.start()
    started = time.monotonic()
    try:
        assert await local.list_objects(local_bucket) == []
        assert await local.stat(local_bucket, "pipe") is None
        with pytest.raises(ObjectNotFound):
            await local.get_file(local_bucket, "pipe", tmp_path / "out")
        with pytest.raises(ObjectNotFound):
            await read_all(local, local_bucket, "pipe")
    finally:
        done.set()
        watchdog.join()
    assert time.monotonic() - started < 4, "opening a FIFO blocked"


async def test_files_dropped_by_other_programs(local: LocalObjectStore, local_bucket: str) -> None:
    path = local.bucket_path(local_bucket) / "dropped" / "by hand.txt"
    path.parent.mkdir()
    path.write_bytes(b"dropped")
    (local.bucket_path(local_bucket) / "back\\slash").write_bytes(b"unaddressable")
    (local.bucket_path(local_bucket) / "new\nline").write_bytes(b"unaddressable")
    [info] = await local.list_objects(local_bucket)
    assert info.key == "dropped/by hand.txt"
    assert info.etag == file_etag(os.stat(path))
    assert info.size == 7
    epoch = datetime.fromtimestamp(0, UTC)
    assert info.last_modified == epoch + timedelta(microseconds=os.stat(path).st_mtime_ns // 1000)
    assert await local.stat(local_bucket, "dropped/by hand.txt") == info
    # Rewritten in place (same inode, same size): the new mtime changes the etag.
    with path.open("r+b") as handle:
        handle.write(b"DROPPED")
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    after = await local.stat(local_bucket, "dropped/by hand.txt")
    assert after is not None
    assert after.etag != info.etag
    assert after.etag == file_etag(os.stat(path))


def test_file_etag_format(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    stat = os.stat(path)
    assert file_etag(stat) == f"{stat.st_ino:x}-3-{stat.st_mtime_ns:x}"


async def test_conflicts_between_files_and_folders(local: LocalObjectStore, local_bucket: str) -> None:
    await local.put_stream(local_bucket, "file", chunks(b"f"))
    await local.ensure_folder(local_bucket, "folder")
    with pytest.raises(Conflict):
        await local.put_stream(local_bucket, "file/child", chunks(b"c"))
    with pytest.raises(Conflict):
        await local.ensure_folder(local_bucket, "file/sub")
    with pytest.raises(Conflict):
        await local.put_stream(local_bucket, "folder", chunks(b"c"))
    assert await keys(local, local_bucket) == ["file"]
    assert await read_all(local, local_bucket, "file") == b"f"
    assert list((local.root / STAGING).iterdir()) == []


async def test_delete_keeps_folders(local: LocalObjectStore, local_bucket: str) -> None:
    await local.put_stream(local_bucket, "input/deep/x", chunks(b"x"))
    assert await local.delete_object(local_bucket, "input/deep/x")
    assert local.object_path(local_bucket, "input/deep").is_dir()
    assert not await local.delete_object(local_bucket, "input/deep")
    assert not await local.delete_object(local_bucket, "input")
    assert local.object_path(local_bucket, "input/deep").is_dir()


async def test_too_long_segment_is_an_invalid_key(local: LocalObjectStore, local_bucket: str) -> None:
    key = "dir/" + "x" * 300  # a valid key, but longer than a file name may be
    assert await local.stat(local_bucket, key) is None
    with pytest.raises(InvalidKey, match="too long"):
        await local.put_stream(local_bucket, key, chunks(b"x"))
    with pytest.raises(InvalidKey, match="too long"):
        await local.ensure_folder(local_bucket, key)
    assert list((local.root / STAGING).iterdir()) == []


async def test_objects_keep_the_umask_mode(local: LocalObjectStore, local_bucket: str) -> None:
    info = await local.put_stream(local_bucket, "shared.txt", chunks(b"x"))
    umask = os.umask(0)
    os.umask(umask)
    mode = local.object_path(local_bucket, info.key).stat().st_mode & 0o777
    assert mode == 0o666 & ~umask


async def test_concurrent_puts_of_one_key(local: LocalObjectStore, local_bucket: str) -> None:
    bodies = [bytes([i]) * (MiB + i) for i in range(8)]
    infos: list[ObjectInfo] = await asyncio.gather(
        *(local.put_stream(local_bucket, "same", chunks(body)) for body in bodies)
    )
    assert len({info.etag for info in infos}) == 8
    content = await read_all(local, local_bucket, "same")
    assert content in bodies  # one whole version, never a mix
    assert list((local.root / STAGING).iterdir()) == []


async def test_listing_many_folders_holds_few_descriptors(local: LocalObjectStore, local_bucket: str) -> None:
    base = local.bucket_path(local_bucket)
    for n in range(300):
        (base / f"folder-{n:03}").mkdir()
        (base / f"folder-{n:03}" / "file").write_bytes(b"")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Fewer descriptors than there are sibling folders.
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 100, hard))
    try:
        listed = await keys(local, local_bucket)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert listed == [f"folder-{n:03}/file" for n in range(300)]


async def test_deeply_nested_keys(local: LocalObjectStore, local_bucket: str) -> None:
    key = "d/" * 400 + "leaf.txt"
    await local.put_stream(local_bucket, key, chunks(b"deep"))
    assert await keys(local, local_bucket) == [key]
    assert await keys(local, local_bucket, "d/d/d/") == [key]
    assert await read_all(local, local_bucket, key) == b"deep"


async def test_delete_bucket_removes_it_with_everything_inside(store: ObjectStore, bucket: str) -> None:
    await store.ensure_folder(bucket, "in/sub")
    for key in ("a.txt", "in/sub/b.txt", "in/c.txt"):
        await store.put_stream(bucket, key, chunks(b"data"))
    assert await store.delete_bucket(bucket) == 3
    assert not await store.bucket_exists(bucket)
    assert bucket not in await store.list_buckets()
    with pytest.raises(BucketNotFound):
        await store.delete_bucket(bucket)


async def test_remove_folder_removes_only_an_empty_folder(store: ObjectStore, bucket: str) -> None:
    await store.ensure_folder(bucket, "empty")
    await store.ensure_folder(bucket, "full")
    await store.put_stream(bucket, "full/x.txt", chunks(b"kept"))
    await store.remove_folder(bucket, "empty")
    await store.remove_folder(bucket, "full")
    assert await keys(store, bucket) == ["full/x.txt"]
    if isinstance(store, LocalObjectStore):  # S3 markers: see the purge tests, which list them raw
        assert not (store.root / bucket / "empty").exists()
        assert (store.root / bucket / "full").is_dir()
