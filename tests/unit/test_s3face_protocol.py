"""The S3 face's protocol parts against what real signers produce: botocore's own SigV4 signers, and the
aws-chunked example of the AWS documentation (its published signatures)."""

from __future__ import annotations

import base64
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSPreparedRequest, AWSRequest
from botocore.credentials import Credentials

from oscar_manager.storage.base import ObjectInfo
from oscar_manager.storage.s3face import s3xml
from oscar_manager.storage.s3face.chunked import payload
from oscar_manager.storage.s3face.errors import S3Error
from oscar_manager.storage.s3face.listing import continuation_token, page, read_token
from oscar_manager.storage.s3face.signatures import verify
from oscar_manager.storage.s3face.sigv4 import SignedRequest, Verified

KEYS = {"oscar": "the-admin-password"}
NOW = datetime.now(UTC)


def _received(prepared: AWSPreparedRequest, method: str) -> SignedRequest:
    """The request as the server receives it: raw path, decoded query pairs, lower-case headers."""
    url = urlsplit(str(prepared.url))
    headers = {
        name.lower(): value.decode() if isinstance(value, bytes) else str(value)
        for name, value in prepared.headers.items()
    }
    headers["host"] = url.netloc
    return SignedRequest(
        method=method,
        raw_path=url.path,
        query=parse_qsl(url.query, keep_blank_values=True),
        headers=headers,
    )


def _signed(
    method: str = "GET",
    url: str = "http://127.0.0.1:9000/bucket/in/a%20b%2Bc.txt?list-type=2&prefix=a%2Fb",
    *,
    secret: str = KEYS["oscar"],
    presign: int = 0,
) -> SignedRequest:
    """Signed now by botocore (which reads the clock itself): tests move the server's clock instead."""
    request = AWSRequest(method=method, url=url, data=b"")
    credentials = Credentials("oscar", secret)
    signer = (
        S3SigV4QueryAuth(credentials, "s3", "us-east-1", expires=presign)
        if presign
        else S3SigV4Auth(credentials, "s3", "us-east-1")
    )
    signer.add_auth(request)
    return _received(request.prepare(), method)


def _lookup(key: str) -> str | None:
    return KEYS.get(key)


def test_requests_signed_by_botocore_verify() -> None:
    verified = verify(_signed(), secrets=_lookup, now=datetime.now(UTC) + timedelta(minutes=14))
    assert verified.access_key == "oscar"
    presigned = verify(_signed(presign=300), secrets=_lookup, now=datetime.now(UTC) + timedelta(minutes=4))
    assert presigned.access_key == "oscar"


@pytest.mark.parametrize(
    ("secret", "presign", "clock", "code"),
    [
        ("wrong", 0, timedelta(0), "SignatureDoesNotMatch"),
        ("wrong", 300, timedelta(0), "SignatureDoesNotMatch"),
        (KEYS["oscar"], 0, timedelta(minutes=16), "RequestTimeTooSkewed"),
        (KEYS["oscar"], 0, -timedelta(minutes=16), "RequestTimeTooSkewed"),
        (KEYS["oscar"], 300, timedelta(minutes=6), "AccessDenied"),
    ],
    ids=["wrong-secret", "wrong-secret-presigned", "server-ahead", "server-behind", "expired-presign"],
)
def test_bad_signatures_are_refused(secret: str, presign: int, clock: timedelta, code: str) -> None:
    request = _signed(secret=secret, presign=presign)
    with pytest.raises(S3Error) as refused:
        verify(request, secrets=_lookup, now=datetime.now(UTC) + clock)
    assert refused.value.code == code
    assert refused.value.status_code == 403


def test_a_changed_path_query_or_unknown_key_is_refused() -> None:
    good = _signed()
    for tampered, code in [
        (SignedRequest(good.method, "/bucket/in/other", good.query, good.headers), "SignatureDoesNotMatch"),
        (
            SignedRequest(good.method, good.raw_path, [("list-type", "1")], good.headers),
            "SignatureDoesNotMatch",
        ),
        (SignedRequest("DELETE", good.raw_path, good.query, good.headers), "SignatureDoesNotMatch"),
    ]:
        with pytest.raises(S3Error) as refused:
            verify(tampered, secrets=_lookup, now=datetime.now(UTC))
        assert refused.value.code == code
    with pytest.raises(S3Error) as unknown:
        verify(good, secrets=lambda _key: None, now=datetime.now(UTC))
    assert unknown.value.code == "InvalidAccessKeyId"
    anonymous = SignedRequest("GET", "/bucket/key", [], {"host": "127.0.0.1:9000"})
    with pytest.raises(S3Error) as refused:
        verify(anonymous, secrets=_lookup, now=NOW)
    assert refused.value.code == "AccessDenied"


async def _collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


async def _body(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


# The example of "Signature Calculations for the Authorization Header: Transferring Payload in Multiple
# Chunks" (AWS S3 API reference): its headers, secret and the signatures it publishes.
AWS_EXAMPLE_HEADERS = {
    "host": "s3.amazonaws.com",
    "x-amz-date": "20130524T000000Z",
    "x-amz-storage-class": "REDUCED_REDUNDANCY",
    "authorization": "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
    "SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
    "x-amz-decoded-content-length;x-amz-storage-class,"
    "Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
    "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    "content-encoding": "aws-chunked",
    "x-amz-decoded-content-length": "66560",
    "content-length": "66824",
}
AWS_EXAMPLE_CHUNKS = [
    (65536, "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"),
    (1024, "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"),
    (0, "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"),
]


def _aws_example() -> tuple[Verified, bytes]:
    request = SignedRequest("PUT", "/examplebucket/chunkObject.txt", [], AWS_EXAMPLE_HEADERS)
    verified = verify(
        request,
        secrets={"AKIAIOSFODNN7EXAMPLE": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}.get,
        now=datetime(2013, 5, 24, 0, 5, tzinfo=UTC),
    )
    body = b"".join(
        f"{size:x};chunk-signature={signature}\r\n".encode() + b"a" * size + b"\r\n"
        for size, signature in AWS_EXAMPLE_CHUNKS
    )
    return verified, body


async def test_signed_chunks_of_the_aws_example_decode() -> None:
    verified, body = _aws_example()
    # Fed a few bytes at a time, as a socket may deliver it.
    pieces = [body[i : i + 777] for i in range(0, len(body), 777)]
    assert await _collect(payload(_body(*pieces), AWS_EXAMPLE_HEADERS, verified)) == b"a" * 66560


async def test_a_changed_chunk_fails_its_signature() -> None:
    verified, body = _aws_example()
    tampered = body.replace(b"a" * 10, b"b" * 10, 1)
    with pytest.raises(S3Error) as refused:
        await _collect(payload(_body(tampered), AWS_EXAMPLE_HEADERS, verified))
    assert refused.value.code == "SignatureDoesNotMatch"


def _trailer_body(data: bytes, checksum: bytes) -> bytes:
    encoded = base64.b64encode(checksum).decode()
    return f"{len(data):x}\r\n".encode() + data + f"\r\n0\r\nx-amz-checksum-crc32:{encoded}\r\n\r\n".encode()


async def test_unsigned_chunks_with_a_crc32_trailer() -> None:
    headers = {
        "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "x-amz-trailer": "x-amz-checksum-crc32",
        "x-amz-decoded-content-length": "11",
    }
    verified = Verified("oscar", "STREAMING-UNSIGNED-PAYLOAD-TRAILER", b"", "", "", "")
    good = _trailer_body(b"hello world", zlib.crc32(b"hello world").to_bytes(4, "big"))
    assert await _collect(payload(_body(good), headers, verified)) == b"hello world"
    bad = _trailer_body(b"hello world", zlib.crc32(b"hello there").to_bytes(4, "big"))
    with pytest.raises(S3Error) as refused:
        await _collect(payload(_body(bad), headers, verified))
    assert refused.value.code == "BadDigest"
    with pytest.raises(S3Error) as cut:
        await _collect(payload(_body(good[:-20]), headers, verified))
    assert cut.value.code in ("IncompleteBody", "InvalidRequest")


async def test_a_body_that_is_not_the_signed_sha256_is_refused() -> None:
    claimed = "0" * 64
    verified = Verified("oscar", claimed, b"", "", "", "")
    with pytest.raises(S3Error) as refused:
        await _collect(payload(_body(b"data"), {"x-amz-content-sha256": claimed}, verified))
    assert refused.value.code == "XAmzContentSHA256Mismatch"


def _entries(*keys: str) -> list[ObjectInfo]:
    return [ObjectInfo("b", key, 1, NOW, "e", "") for key in sorted(keys)]


def test_pages_with_common_prefixes_resume_after_the_prefix() -> None:
    entries = _entries("a/1", "a/2", "b", "c/1", "d")
    first = page(entries, prefix="", delimiter="/", after="", after_prefix=False, limit=2)
    assert first.prefixes == ["a/"]
    assert [o.key for o in first.objects] == ["b"]
    assert first.truncated
    after, is_prefix = read_token(continuation_token(first.last, is_prefix=first.last_is_prefix))
    second = page(entries, prefix="", delimiter="/", after=after, after_prefix=is_prefix, limit=2)
    assert second.prefixes == ["c/"]
    assert [o.key for o in second.objects] == ["d"]
    assert not second.truncated


def test_listing_xml_encodes_keys_when_asked() -> None:
    request = s3xml.ListRequest("b", "in/", "", 1000, url_encoded=True, v2=True)
    document = s3xml.list_objects(
        request,
        page(_entries("in/a b+c"), prefix="in/", delimiter="", after="", after_prefix=False, limit=10),
        owner="oscar",
    )
    assert b"<Key>in/a%20b%2Bc</Key>" in document
    assert b"<KeyCount>1</KeyCount>" in document


def test_xml_bodies_with_a_dtd_are_refused() -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaa">]>'
        b"<Delete><Object><Key>&a;</Key></Object></Delete>"
    )
    with pytest.raises(S3Error) as refused:
        s3xml.delete_request(bomb)
    assert refused.value.code == "MalformedXML"
    keys, quiet = s3xml.delete_request(b"<Delete><Quiet>true</Quiet><Object><Key>x</Key></Object></Delete>")
    assert (keys, quiet) == (["x"], True)
