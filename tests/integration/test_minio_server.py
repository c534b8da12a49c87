"""A real MinIO server (``scripts/build-minio``): the facts that bucket-notification support builds on.

- S3 works against it through ``S3ObjectStore``.
- Webhook targets: from the environment at start-up (no admin call), or registered at runtime with the
  admin API, which takes a service restart before the target is usable.
- What MinIO POSTs to a webhook (headers, body) and when (synchronously with ``MINIO_API_SYNC_EVENTS=on``;
  a failed delivery is dropped, not retried, when the target has no queue_dir).
- ListenBucketNotification streams events (raw and through miniopy-async).
- How object keys are encoded in each (``pytest -s`` prints a table).
- What tells one PUT from another: the sequencer, and the listing's LastModified.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote_plus, unquote, unquote_plus

import aiohttp
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from oscar_manager.storage.s3 import S3ObjectStore
from tests.support.components import free_port, unavailable
from tests.support.minio import (
    MinioAdmin,
    MinioAdminError,
    MinioServer,
    WebhookReceiver,
    listen,
    start_minio,
    webhook_env,
)

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client

TOKEN = "oscar-webhook-token"
ENV_TARGET = "OSCAR"  # the target the session server loads from its environment
ENV_ARN = f"arn:minio:sqs::{ENV_TARGET}:webhook"


@pytest.fixture(scope="session")
async def webhook() -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


async def _start(binary: Path, env: dict[str, str] | None = None) -> MinioServer:
    return await start_minio(binary, env)


@pytest.fixture(scope="session")
async def minio(minio_binary: Path, webhook: WebhookReceiver) -> AsyncIterator[MinioServer]:
    """The session's server; its webhook target ``OSCAR`` (set in its environment) posts to ``webhook``."""
    server = await _start(minio_binary, webhook_env(ENV_TARGET, webhook.url(), TOKEN))
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


@contextlib.asynccontextmanager
async def _client(server: MinioServer) -> AsyncIterator[S3Client]:
    """A plain aiobotocore client; no retries, so a restarting server shows as errors at once."""
    config = AioConfig(
        retries={"total_max_attempts": 1},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    async with get_session().create_client(
        "s3",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        config=config,
    ) as client:
        yield client


@pytest.fixture(scope="session")
async def s3(minio: MinioServer) -> AsyncIterator[S3Client]:
    async with _client(minio) as client:
        yield client


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _bucket_name() -> str:
    return f"t-{uuid.uuid4().hex[:16]}"


@pytest.fixture
async def bucket(s3: S3Client) -> str:
    name = _bucket_name()
    await s3.create_bucket(Bucket=name)
    return name


async def _notify(s3: S3Client, bucket: str, arn: str, *, prefix: str = "input/", within: float = 10) -> int:
    """OSCAR's bucket notification: ``s3:ObjectCreated:*`` under ``prefix`` to the webhook ``arn``.

    Retried while MinIO answers ``InvalidArgument`` (unknown ARN) for up to ``within`` seconds: a starting
    server serves S3 before it has loaded its notification targets (``InitBucketTargets`` runs in a
    goroutine after the object layer is up). ``within=0``: one attempt. Returns the attempts made.
    """
    deadline = time.monotonic() + within
    attempts = 0
    while True:
        attempts += 1
        try:
            await s3.put_bucket_notification_configuration(
                Bucket=bucket,
                NotificationConfiguration={
                    "QueueConfigurations": [
                        {
                            "Id": "oscar-input",
                            "QueueArn": arn,
                            "Events": ["s3:ObjectCreated:*"],
                            "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}},
                        }
                    ]
                },
            )
            return attempts
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "InvalidArgument" or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(0.02)


async def _put(s3: S3Client, bucket: str, key: str, data: bytes = b"hello") -> float:
    """Upload; returns how long the PUT took."""
    started = time.monotonic()
    await s3.put_object(Bucket=bucket, Key=key, Body=data)
    return time.monotonic() - started


# --- S3 -----------------------------------------------------------------------------------------------


async def test_s3_put_get_list_delete_through_the_store(minio: MinioServer) -> None:
    bucket = _bucket_name()
    content = [b"hello ", b"from ", b"minio"]

    async def chunks() -> AsyncIterator[bytes]:
        for chunk in content:
            yield chunk

    async with S3ObjectStore.connect(
        endpoint=minio.endpoint, access_key=minio.access_key, secret_key=minio.secret_key
    ) as store:
        await store.ensure_bucket(bucket)
        await store.ensure_folder(bucket, "input")
        info = await store.put_stream(bucket, "input/hello.txt", chunks())
        assert (info.size, info.etag) == (16, hashlib.md5(b"".join(content)).hexdigest())  # noqa: S324
        assert b"".join([part async for part in store.read_stream(bucket, "input/hello.txt")]) == b"".join(
            content
        )
        assert [o.key for o in await store.list_objects(bucket, "input/")] == ["input/hello.txt"]
        assert await store.delete_object(bucket, "input/hello.txt")
        assert await store.stat(bucket, "input/hello.txt") is None


# --- webhooks -------------------------------------------------------------------------------------------


async def test_webhook_target_from_the_environment_posts_each_matching_upload(
    s3: S3Client, bucket: str, webhook: WebhookReceiver
) -> None:
    await _notify(s3, bucket, ENV_ARN)
    await _put(s3, bucket, "other/ignored.txt")
    await _put(s3, bucket, "input/photo.jpg", b"jpeg bytes")

    # MINIO_API_SYNC_EVENTS=on: delivered (and answered) before the PUT returned; no waiting needed.
    [delivery] = webhook.for_bucket(bucket)
    assert delivery.path == "/events"
    assert delivery.headers["authorization"] == f"Bearer {TOKEN}"
    assert delivery.headers["content-type"] == "application/json"
    assert delivery.headers["user-agent"].startswith("Go-http-client/")
    assert set(delivery.body) == {"EventName", "Key", "Records"}
    assert delivery.body["EventName"] == "s3:ObjectCreated:Put"
    assert delivery.body["Key"] == f"{bucket}/input/photo.jpg"  # bucket/key, key decoded

    record = delivery.record
    assert record["eventVersion"] == "2.0"
    assert record["eventSource"] == "minio:s3"
    assert record["awsRegion"] == ""
    assert record["eventName"] == "s3:ObjectCreated:Put"
    assert record["userIdentity"] == {"principalId": "oscar-test"}
    s3_part = record["s3"]
    assert s3_part["configurationId"] == "Config"  # not the Id we gave the QueueConfiguration
    assert s3_part["bucket"]["name"] == bucket
    assert s3_part["bucket"]["arn"] == f"arn:aws:s3:::{bucket}"
    obj = s3_part["object"]
    assert obj["key"] == "input%2Fphoto.jpg"  # URL-encoded (Go url.QueryEscape), even the "/"
    assert obj["size"] == len(b"jpeg bytes")
    assert obj["eTag"] == hashlib.md5(b"jpeg bytes").hexdigest()  # noqa: S324
    assert set(obj) >= {"key", "size", "eTag", "contentType", "userMetadata", "sequencer"}
    assert set(record["responseElements"]) >= {"x-amz-request-id", "x-minio-origin-endpoint"}


async def test_target_arns_are_case_sensitive_and_drop_the_region(s3: S3Client, bucket: str) -> None:
    with pytest.raises(ClientError) as lower:
        await _notify(s3, bucket, ENV_ARN.replace(ENV_TARGET, ENV_TARGET.lower()), within=0)
    assert lower.value.response["Error"]["Code"] == "InvalidArgument"
    assert "destination ARN does not exist" in lower.value.response["Error"]["Message"]

    await _notify(s3, bucket, f"arn:minio:sqs:us-east-1:{ENV_TARGET}:webhook")
    stored = await s3.get_bucket_notification_configuration(Bucket=bucket)
    assert [q["QueueArn"] for q in stored["QueueConfigurations"]] == [ENV_ARN]
    assert [q["Id"] for q in stored["QueueConfigurations"]] == ["oscar-input"]


async def test_sync_events_make_the_upload_wait_for_the_webhook(
    s3: S3Client, bucket: str, webhook: WebhookReceiver
) -> None:
    await _notify(s3, bucket, ENV_ARN)
    webhook.delay = 0.5
    try:
        took = await _put(s3, bucket, "input/slow.txt")
    finally:
        webhook.delay = 0.0
    assert took >= 0.5
    assert len(webhook.for_bucket(bucket)) == 1


async def test_a_failed_webhook_delivery_is_dropped_and_the_upload_succeeds(
    s3: S3Client, bucket: str, webhook: WebhookReceiver
) -> None:
    await _notify(s3, bucket, ENV_ARN)
    webhook.status = 503
    try:
        await _put(s3, bucket, "input/lost.txt")  # no error for the uploader
    finally:
        webhook.status = 200
    assert len(webhook.for_bucket(bucket)) == 1  # one attempt
    await asyncio.sleep(1.5)
    await _put(s3, bucket, "input/next.txt")
    keys = [d.record["s3"]["object"]["key"] for d in webhook.for_bucket(bucket)]
    assert keys == ["input%2Flost.txt", "input%2Fnext.txt"]  # the failed one was not sent again


async def test_a_webhook_target_registered_at_runtime_needs_a_restart(
    minio_binary: Path, webhook: WebhookReceiver, http: aiohttp.ClientSession
) -> None:
    server = await _start(minio_binary)
    try:
        admin = MinioAdmin(http, server.endpoint, server.access_key, server.secret_key)
        bucket = _bucket_name()
        arn = "arn:minio:sqs::runtime:webhook"
        async with _client(server) as s3:
            await s3.create_bucket(Bucket=bucket)

            # MinIO dials the endpoint while validating: an unreachable one is refused.
            with pytest.raises(MinioAdminError) as refused:
                await admin.set_config_kv(f"notify_webhook:gone endpoint=http://127.0.0.1:{free_port()}/x")
            assert refused.value.status == 400
            assert b"XMinioAdminConfigBadJSON" in refused.value.body
            assert b"connection refused" in refused.value.body

            line = f"notify_webhook:runtime endpoint={webhook.url('/runtime')} auth_token={TOKEN}"
            assert await admin.set_config_kv(line) is False  # saved, not applied
            assert line.split(" ", 1)[1] in await admin.config_history()
            with pytest.raises(MinioAdminError, match="there is no target `runtime`"):
                await admin.get_config_kv("notify_webhook:runtime")
            with pytest.raises(ClientError) as unknown:
                await _notify(s3, bucket, arn, within=0)
            assert unknown.value.response["Error"]["Code"] == "InvalidArgument"

        pid = server.process.pid
        started = time.monotonic()
        await admin.service_restart()
        live_after = await asyncio.to_thread(server.wait_restarted)
        async with _client(server) as s3:
            attempts = await _notify(s3, bucket, arn)
            usable_after = time.monotonic() - started
            assert server.process.pid == pid
            assert server.process.poll() is None  # re-exec'd in place: the Popen handle stays valid

            running = await admin.get_config_kv("notify_webhook:runtime")
            assert f"endpoint={webhook.url('/runtime')}" in running
            assert "auth_token" not in running  # secrets are left out of get-config-kv

            await _put(s3, bucket, "input/after-restart.txt")
        [delivery] = webhook.for_bucket(bucket)
        assert delivery.path == "/runtime"
        assert delivery.headers["authorization"] == f"Bearer {TOKEN}"
        assert delivery.record["s3"]["object"]["key"] == "input%2Fafter-restart.txt"
        print(
            f"\nrestart: S3 up again after {live_after:.2f} s, target usable after {usable_after:.2f} s"
            f" ({attempts} PutBucketNotification attempts)"
        )
        assert usable_after < 20
    finally:
        await asyncio.to_thread(server.stop)


async def test_a_two_word_auth_token_is_sent_as_is(minio_binary: Path, webhook: WebhookReceiver) -> None:
    server = await _start(minio_binary, webhook_env("raw", webhook.url("/raw"), "Token abc123"))
    try:
        bucket = _bucket_name()
        async with _client(server) as s3:
            await s3.create_bucket(Bucket=bucket)
            await _notify(s3, bucket, "arn:minio:sqs::raw:webhook")
            await _put(s3, bucket, "input/a.txt")
        [delivery] = webhook.for_bucket(bucket)
        assert delivery.headers["authorization"] == "Token abc123"  # no "Bearer " prefix
    finally:
        await asyncio.to_thread(server.stop)


# --- ListenBucketNotification ---------------------------------------------------------------------------


async def test_listen_streams_matching_events_without_any_bucket_configuration(
    minio: MinioServer, s3: S3Client, bucket: str, http: aiohttp.ClientSession
) -> None:
    started = time.monotonic()
    async with listen(http, minio, bucket, prefix="input/", ping=1) as stream:
        opened = time.monotonic() - started
        assert stream.response.headers["Content-Type"] == "text/event-stream"
        await _put(s3, bucket, "other/ignored.txt")
        await _put(s3, bucket, "input/a.txt", b"abc")
        put_at = time.monotonic()
        record = await stream.next_record()
        latency = time.monotonic() - put_at
    assert record["eventName"] == "s3:ObjectCreated:Put"
    assert record["s3"]["bucket"]["name"] == bucket
    assert record["s3"]["object"]["key"] == "input/a.txt"  # not URL-encoded here
    assert record["s3"]["object"]["size"] == 3
    print(f"\nlisten (ping=1): headers after {opened:.2f} s, event {latency * 1000:.0f} ms after the PUT")
    assert opened < 3


async def test_listen_through_miniopy_async(minio: MinioServer, s3: S3Client, bucket: str) -> None:
    try:
        from miniopy_async.api import Minio
    except ImportError as exc:
        unavailable(f"miniopy-async is not installed: {exc}")
    async with Minio(
        minio.address, access_key=minio.access_key, secret_key=minio.secret_key, secure=False
    ) as client:
        started = time.monotonic()
        events = await client.listen_bucket_notification(
            bucket, prefix="input/", events=("s3:ObjectCreated:*",)
        )
        opened = time.monotonic() - started
        async with events:
            await _put(s3, bucket, "input/b c.txt")
            document = await asyncio.wait_for(anext(events), 10)
    assert isinstance(document, dict)
    [record] = document["Records"]
    assert record["s3"]["object"]["key"] == "input/b c.txt"
    print(f"\nminiopy-async listen: returned after {opened:.2f} s")


# --- object key encoding --------------------------------------------------------------------------------

KEYS = {
    "plain": "input/file.txt",
    "space": "input/my file.txt",
    "plus": "input/my+file.txt",
    "unicode": "input/ünïcödé ✓.txt",
    "percent": "input/100% done.txt",
    "reserved": "input/a&b=c?d#e;f,g.txt",
    "tilde-dash": "input/~a-b_c.d.txt",
    "subfolder": "input/sub dir/x.txt",
}


@pytest.mark.parametrize("key", list(KEYS.values()), ids=list(KEYS))
async def test_object_key_encoding_in_webhook_and_listen_events(
    minio: MinioServer,
    s3: S3Client,
    bucket: str,
    webhook: WebhookReceiver,
    http: aiohttp.ClientSession,
    key: str,
) -> None:
    await _notify(s3, bucket, ENV_ARN)
    async with listen(http, minio, bucket) as stream:
        await _put(s3, bucket, key)
        listened = await stream.next_record()
    [delivery] = webhook.for_bucket(bucket)
    encoded = delivery.record["s3"]["object"]["key"]

    assert encoded == quote_plus(key, safe="")  # Go's url.QueryEscape: "/" -> %2F, " " -> "+", "+" -> %2B
    assert unquote_plus(encoded) == key  # decode with unquote_plus ...
    if " " in key:
        assert unquote(encoded) != key  # ... plain unquote leaves "+" for spaces
    assert delivery.body["Key"] == f"{bucket}/{key}"  # the top-level Key is not encoded
    assert listened["s3"]["object"]["key"] == key  # nor is the listen API's
    print(f"\n{key!r}: webhook s3.object.key={encoded!r} Key={delivery.body['Key']!r} listen={key!r}")


async def test_the_sequencer_names_the_put_in_both_sources_and_the_listing_shows_it_to_the_ms(
    minio: MinioServer, s3: S3Client, bucket: str, webhook: WebhookReceiver, http: aiohttp.ClientSession
) -> None:
    """What tells one PUT from another: ``s3.object.sequencer`` is the object's modification time in
    nanoseconds (``%X``), the same in the webhook and the listen record of one PUT (their ``eventTime``s
    differ: each source stamps its own), new for a PUT of identical content (whose ETag stays), and the
    listing's ``LastModified`` is that time truncated to milliseconds."""
    await _notify(s3, bucket, ENV_ARN)
    key = "input/again.txt"
    sequencers = []
    async with listen(http, minio, bucket) as stream:
        for _ in range(2):
            await _put(s3, bucket, key, b"identical")
            listened = await stream.next_record()
            [*_, delivered] = webhook.for_bucket(bucket)
            hooked = delivered.record
            assert hooked["s3"]["object"]["sequencer"] == listened["s3"]["object"]["sequencer"]
            assert hooked["s3"]["object"]["eTag"] == listened["s3"]["object"]["eTag"]
            listing = await s3.list_objects_v2(Bucket=bucket, Prefix=key)
            [item] = listing["Contents"]
            nanoseconds = int(hooked["s3"]["object"]["sequencer"], 16)
            since_epoch = item["LastModified"] - datetime(1970, 1, 1, tzinfo=UTC)
            assert since_epoch // timedelta(milliseconds=1) == nanoseconds // 1_000_000
            assert item["ETag"].strip('"') == hooked["s3"]["object"]["eTag"]
            sequencers.append(nanoseconds)
    assert sequencers[0] != sequencers[1]
    assert len(webhook.for_bucket(bucket)) == 2
