"""S3-compatible servers that leave out what MinIO and AWS always send (issue 12, item 8).

``Last-Modified`` is optional in practice: some gateways omit it from listings and ``HEAD``/``GET``
answers. The manager must describe such objects as of unknown age (``UNKNOWN_TIME``) instead of failing
with a ``KeyError`` (a 500), and answers missing a field it cannot do without (an ETag) are a
``StorageError`` naming the server and the field.

A double, on purpose: neither MinIO nor moto can be made to leave these headers and elements out, so a
small S3 server on loopback answers the few requests these tests make, in S3's own XML.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from oscar_manager.domain.events import InputRoute
from oscar_manager.events.reconcile import reconcile
from oscar_manager.operations.buckets import object_page
from oscar_manager.storage.base import UNKNOWN_TIME, StorageError
from oscar_manager.storage.s3 import S3ObjectStore

BUCKET = "undated"
NO_ETAG = "untagged"
OBJECTS = {"in/a.txt": b"first", "in/b.txt": b"second object"}
ETAG = '"0123456789abcdef0123456789abcdef"'


def _listing(bucket: str, prefix: str) -> bytes:
    entries = "".join(
        f"<Contents><Key>{key}</Key><Size>{len(body)}</Size>"
        + (f"<ETag>{ETAG}</ETag>" if bucket != NO_ETAG else "")
        + "<StorageClass>STANDARD</StorageClass></Contents>"
        for key, body in OBJECTS.items()
        if key.startswith(prefix)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<Name>{bucket}</Name><Prefix>{prefix}</Prefix><KeyCount>{len(OBJECTS)}</KeyCount>"
        f"<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>{entries}</ListBucketResult>"
    ).encode()


class _Handler(BaseHTTPRequestHandler):
    """Buckets ``undated`` and ``untagged`` holding ``OBJECTS``; never a ``Last-Modified``."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _target(self) -> tuple[str, str, dict[str, list[str]]]:
        parts = urlsplit(self.path)
        bucket, _, key = parts.path.lstrip("/").partition("/")
        return bucket, key, parse_qs(parts.query)

    def _object(self) -> None:
        bucket, key, query = self._target()
        if bucket not in (BUCKET, NO_ETAG):
            self._answer(404)
            return
        if not key:
            if "list-type" in query:
                self._answer(
                    200, _listing(bucket, query.get("prefix", [""])[0]), {"Content-Type": "text/xml"}
                )
            else:
                self._answer(200)  # HEAD bucket
            return
        if key not in OBJECTS:
            self._answer(404)
            return
        body = OBJECTS[key]
        headers = {"Content-Type": "application/octet-stream"}
        if bucket != NO_ETAG:
            headers["ETag"] = ETAG
        self.send_response(200)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)

    do_GET = _object
    do_HEAD = _object


@dataclass
class UndatedS3:
    endpoint: str


@pytest.fixture(scope="module")
def undated_s3() -> Iterator[UndatedS3]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield UndatedS3(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
async def store(undated_s3: UndatedS3) -> AsyncIterator[S3ObjectStore]:
    async with S3ObjectStore.connect(
        endpoint=undated_s3.endpoint,
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
        max_attempts=1,
        read_timeout=10,
    ) as opened:
        yield opened


async def test_listing_without_dates_describes_objects_of_unknown_age(store: S3ObjectStore) -> None:
    listed = await store.list_objects(BUCKET, "in/")
    assert [(info.key, info.size, info.etag) for info in listed] == [
        ("in/a.txt", 5, ETAG.strip('"')),
        ("in/b.txt", 13, ETAG.strip('"')),
    ]
    assert {info.last_modified for info in listed} == {UNKNOWN_TIME}


async def test_head_and_get_without_dates(store: S3ObjectStore, tmp_path: Path) -> None:
    info = await store.stat(BUCKET, "in/b.txt")
    assert info is not None
    assert (info.size, info.last_modified) == (13, UNKNOWN_TIME)
    target = tmp_path / "b.txt"
    fetched = await store.get_file(BUCKET, "in/b.txt", target)
    assert target.read_bytes() == b"second object"
    assert fetched.last_modified == UNKNOWN_TIME


async def test_bucket_listing_shows_go_zero_time(store: S3ObjectStore) -> None:
    answer = await object_page(store, bucket=BUCKET, page="", limit=10)
    assert [(item["object_name"], item["last_modified"]) for item in answer["objects"]] == [
        ("in/a.txt", "0001-01-01T00:00:00Z"),
        ("in/b.txt", "0001-01-01T00:00:00Z"),
    ]


async def test_reconcile_skips_objects_of_unknown_age(store: S3ObjectStore) -> None:
    """Older than any service: a scan must not run jobs for objects it cannot place in time."""
    offered: list[str] = []

    async def enqueue(service: str, event: object) -> None:
        offered.append(service)

    route = InputRoute(
        provider="minio.default",
        bucket=BUCKET,
        folder="in",
        service="svc",
        since=datetime(2020, 1, 1, tzinfo=UTC),
    )
    assert await reconcile(store, [route], enqueue, principal="test") == 0
    assert offered == []


async def test_missing_etag_is_a_storage_error_naming_server_and_field(
    store: S3ObjectStore, undated_s3: UndatedS3
) -> None:
    with pytest.raises(StorageError, match=r"without ETag") as listing:
        await store.list_objects(NO_ETAG, "in/")
    assert undated_s3.endpoint.removeprefix("http://") in str(listing.value)
    with pytest.raises(StorageError, match=r"without ETag"):
        await store.stat(NO_ETAG, "in/a.txt")
