"""``S3ObjectStore`` specifics, against moto's S3 server (the contract is in ``test_local_storage.py``)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from oscar_manager.errors import Conflict
from oscar_manager.storage import s3 as s3_module
from oscar_manager.storage.base import BucketNotFound, InvalidKey, ObjectNotFound, StorageError
from oscar_manager.storage.s3 import S3ObjectStore
from oscar_manager.storage.s3_upload import PART_SIZE
from tests.integration.test_local_storage import Boom, chunks, keys, read_all
from tests.support.components import free_port

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client

MiB = 1024 * 1024


@pytest.fixture(scope="session")
async def raw(moto_endpoint: str) -> AsyncIterator[S3Client]:
    """A plain client on the same server, to look behind the store's back."""
    async with get_session().create_client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ) as client:
        yield client


@pytest.fixture
def store(s3_store: S3ObjectStore) -> S3ObjectStore:
    return s3_store


@pytest.fixture
async def bucket(store: S3ObjectStore) -> str:
    name = f"s3-{uuid.uuid4().hex[:12]}"
    await store.ensure_bucket(name)
    return name


async def pending_uploads(raw: S3Client, bucket: str) -> list[str]:
    listed = await raw.list_multipart_uploads(Bucket=bucket)
    return [upload["Key"] for upload in listed.get("Uploads", [])]


async def test_multipart_put_stream(store: S3ObjectStore, raw: S3Client, bucket: str, tmp_path: Path) -> None:
    size = 20 * MiB + 12345
    expected = hashlib.sha256()
    in_flight: list[int] = []

    async def generated() -> AsyncIterator[bytes]:
        sent = 0
        while sent < size:
            part = os.urandom(min(MiB, size - sent))
            expected.update(part)
            sent += len(part)
            yield part
            if sent == 12 * MiB:
                # The first part has left while the stream is still being produced: memory stays bounded.
                [upload] = (await raw.list_multipart_uploads(Bucket=bucket))["Uploads"]
                parts = await raw.list_parts(Bucket=bucket, Key="big/blob.bin", UploadId=upload["UploadId"])
                in_flight.extend(part["Size"] for part in parts.get("Parts", []))

    info = await store.put_stream(bucket, "big/blob.bin", generated())
    assert in_flight == [PART_SIZE]
    assert info.size == size
    assert info.etag.endswith("-3")  # 8 + 8 + 4 MiB
    assert await store.stat(bucket, "big/blob.bin") == info
    assert await store.list_objects(bucket) == [info]
    assert await pending_uploads(raw, bucket) == []
    streamed = hashlib.sha256()
    async for chunk in store.read_stream(bucket, "big/blob.bin"):
        streamed.update(chunk)
    assert streamed.hexdigest() == expected.hexdigest()
    target = tmp_path / "copy.bin"
    assert await store.get_file(bucket, "big/blob.bin", target) == info
    assert hashlib.sha256(target.read_bytes()).hexdigest() == expected.hexdigest()
    assert os.listdir(tmp_path) == ["copy.bin"]


async def test_put_stream_of_exactly_one_part(store: S3ObjectStore, bucket: str) -> None:
    info = await store.put_stream(bucket, "one-part", chunks(b"x" * PART_SIZE))
    assert info.size == PART_SIZE
    assert info.etag.endswith("-1")
    assert await read_all(store, bucket, "one-part") == b"x" * PART_SIZE


async def test_small_put_is_a_single_request(store: S3ObjectStore, bucket: str) -> None:
    body = b"small" * 1000
    info = await store.put_stream(bucket, "small", chunks(body[:10], body[10:]))
    assert info.etag == hashlib.md5(body).hexdigest()  # noqa: S324  (what S3 computes)


async def test_failed_multipart_leaves_nothing(store: S3ObjectStore, raw: S3Client, bucket: str) -> None:
    async def failing() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"z" * MiB
        raise Boom("client went away")

    await store.put_stream(bucket, "kept.bin", chunks(b"previous"))
    for key in ["new.bin", "kept.bin"]:
        with pytest.raises(Boom):
            await store.put_stream(bucket, key, failing())
    assert await keys(store, bucket) == ["kept.bin"]
    assert await read_all(store, bucket, "kept.bin") == b"previous"
    assert await pending_uploads(raw, bucket) == []


async def test_cancelled_multipart_leaves_nothing(store: S3ObjectStore, raw: S3Client, bucket: str) -> None:
    started = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield b"x" * (PART_SIZE + 1)
        started.set()
        await asyncio.Event().wait()
        yield b"never"

    task = asyncio.create_task(store.put_stream(bucket, "stalled.bin", stalls()))
    await started.wait()
    assert await pending_uploads(raw, bucket) == ["stalled.bin"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await pending_uploads(raw, bucket) == []
    assert await keys(store, bucket) == []


async def test_put_file_streams_large_files(
    store: S3ObjectStore, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(PART_SIZE * 2 + 7))
    read_sizes: list[int] = []
    real_file_chunks = s3_module._file_chunks

    async def spied(handle: Any, path: Path) -> AsyncIterator[bytes]:
        async for chunk in real_file_chunks(handle, path):
            read_sizes.append(len(chunk))
            yield chunk

    monkeypatch.setattr(s3_module, "_file_chunks", spied)
    info = await store.put_file(bucket, "from/file.bin", source)
    assert info.size == source.stat().st_size
    assert info.etag.endswith("-3")
    assert max(read_sizes) == s3_module.COPY_CHUNK  # never the whole file at once
    assert await read_all(store, bucket, "from/file.bin") == source.read_bytes()


async def test_put_file_refuses_symlinks_and_non_files(
    store: S3ObjectStore, bucket: str, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"secret")
    link = tmp_path / "link"
    link.symlink_to(secret)
    with pytest.raises(StorageError):
        await store.put_file(bucket, "copied", link)
    with pytest.raises(StorageError):
        await store.put_file(bucket, "copied", tmp_path / "missing")
    with pytest.raises(StorageError, match="not a regular file"):
        await store.put_file(bucket, "copied", tmp_path)
    assert await keys(store, bucket) == []


@pytest.mark.parametrize(
    "key", ["with space.txt", "a+b=c.txt", "日本/語 ファイル+%.dat", "é/?#&;=@!$'()*,~.txt"]
)
async def test_keys_are_stored_verbatim(
    store: S3ObjectStore, raw: S3Client, bucket: str, key: str, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    source.write_bytes(key.encode())
    await store.put_file(bucket, key, source)
    listed = await raw.list_objects_v2(Bucket=bucket)
    assert [item["Key"] for item in listed["Contents"]] == [key]
    got = await raw.get_object(Bucket=bucket, Key=key)
    assert await got["Body"].read() == key.encode()
    target = tmp_path / "target"
    info = await store.get_file(bucket, key, target)
    assert (info.key, target.read_bytes()) == (key, key.encode())


async def test_objects_from_other_clients(store: S3ObjectStore, raw: S3Client, bucket: str) -> None:
    await raw.put_object(Bucket=bucket, Key="in/ok.txt", Body=b"ok")
    await raw.put_object(Bucket=bucket, Key="in/", Body=b"")
    await raw.put_object(Bucket=bucket, Key="in//double", Body=b"unaddressable")
    await raw.put_object(Bucket=bucket, Key="in/../up", Body=b"unaddressable")
    assert await keys(store, bucket) == ["in/ok.txt"]
    with pytest.raises(InvalidKey):
        await store.stat(bucket, "in//double")


async def test_ensure_bucket_on_existing_buckets(store: S3ObjectStore, raw: S3Client) -> None:
    name = f"s3-{uuid.uuid4().hex[:12]}"
    await raw.create_bucket(Bucket=name)
    await raw.put_object(Bucket=name, Key="kept", Body=b"kept")
    await store.ensure_bucket(name)
    await store.ensure_bucket(name)
    assert await keys(store, name) == ["kept"]


async def test_ensure_bucket_outside_us_east_1(moto_endpoint: str) -> None:
    # Outside us-east-1 creation needs a LocationConstraint, and re-creating an owned bucket is
    # BucketAlreadyOwnedByYou.
    name = f"s3-{uuid.uuid4().hex[:12]}"
    async with S3ObjectStore.connect(
        endpoint=moto_endpoint, access_key="testing", secret_key="testing", region="eu-west-1"
    ) as store:
        await store.ensure_bucket(name)
        await store.ensure_bucket(name)
        await store.ensure_folder(name, "input")
        assert await store.bucket_exists(name)


async def test_bucket_of_another_account(
    store: S3ObjectStore,
    moto_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = f"s3-{uuid.uuid4().hex[:12]}"
    async with get_session().create_client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ) as other:

        def as_other_account(request: Any, **_: Any) -> None:
            request.headers["x-moto-account-id"] = "111111111111"

        other.meta.events.register("before-sign.s3", as_other_account)
        await other.create_bucket(Bucket=name)
    # moto answers BucketAlreadyExists; it lets any account HEAD the bucket, which AWS would refuse.
    await store.ensure_bucket(name)

    async def forbidden(**_: Any) -> None:
        error = {
            "Error": {"Code": "403", "Message": "Forbidden"},
            "ResponseMetadata": {"HTTPStatusCode": 403},
        }
        raise ClientError(error, "HeadBucket")  # type: ignore[arg-type]

    monkeypatch.setattr(store._client, "head_bucket", forbidden)
    with pytest.raises(Conflict, match="another account"):
        await store.ensure_bucket(name)


async def test_folders_are_zero_byte_markers(store: S3ObjectStore, raw: S3Client) -> None:
    name = f"s3-{uuid.uuid4().hex[:12]}"
    await store.ensure_folder(name, "input")
    await store.ensure_folder(name, "out/put/")
    listed = await raw.list_objects_v2(Bucket=name)
    assert [(item["Key"], item["Size"]) for item in listed["Contents"]] == [("input/", 0), ("out/put/", 0)]
    # An existing marker is left alone (rewriting it would be an upload event for the folder); one with
    # content shows it.
    await raw.put_object(Bucket=name, Key="input/", Body=b"left alone")
    await store.ensure_folder(name, "input")
    got = await raw.get_object(Bucket=name, Key="input/")
    assert await got["Body"].read() == b"left alone"


async def test_unreachable_endpoint() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    async with S3ObjectStore.connect(
        endpoint=endpoint, access_key="k", secret_key="s", connect_timeout=1, read_timeout=1, max_attempts=1
    ) as store:
        with pytest.raises(StorageError, match=endpoint):
            await store.list_buckets()
        with pytest.raises(StorageError, match=endpoint):
            await store.bucket_exists("abc")
        with pytest.raises(StorageError, match=endpoint):
            await store.ensure_folder("abc", "input")
        with pytest.raises(StorageError, match=endpoint):
            await store.stat("abc", "key")
        with pytest.raises(StorageError, match=endpoint):
            await store.put_stream("abc", "key", chunks(b"x"))
        with pytest.raises(StorageError, match=endpoint):
            await read_all(store, "abc", "key")
    assert time.monotonic() - started < 5


async def test_invalid_endpoint() -> None:
    with pytest.raises(StorageError, match="invalid S3 endpoint"):
        async with S3ObjectStore.connect(endpoint="minio:9000"):
            pass


async def test_not_found_errors_are_ours(store: S3ObjectStore, bucket: str, tmp_path: Path) -> None:
    missing = f"s3-{uuid.uuid4().hex[:12]}"
    with pytest.raises(ObjectNotFound) as object_error:
        await store.get_file(bucket, "absent", tmp_path / "target")
    with pytest.raises(BucketNotFound) as bucket_error:
        await store.list_objects(missing)
    for error in [object_error.value, bucket_error.value]:
        assert error.__cause__ is None
        assert error.__suppress_context__
    assert os.listdir(tmp_path) == []
