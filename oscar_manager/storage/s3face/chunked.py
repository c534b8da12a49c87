"""Request bodies as S3 clients send them: plain (checked against the signed SHA-256, ``Content-MD5`` or an
``x-amz-checksum-*`` header) or ``aws-chunked`` (each chunk signed, or unsigned with a checksum trailer:
boto3 1.36 and later send PutObject that way with a CRC32 by default).

Bytes are passed on as they arrive, so nothing holds a whole object; a check that fails at the end raises
before the caller publishes anything (``LocalObjectStore.put_stream`` discards the staged file then).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import zlib
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

from oscar_manager.storage.s3face.errors import S3Error, not_implemented
from oscar_manager.storage.s3face.sigv4 import (
    STREAMING_SIGNED,
    STREAMING_SIGNED_TRAILER,
    STREAMING_UNSIGNED_TRAILER,
    UNSIGNED_PAYLOAD,
    Verified,
    chunk_signature,
)

MAX_LINE = 4096  # a chunk header or trailer line
_CHECKSUM_PREFIX = "x-amz-checksum-"


class _Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


class _Crc32:
    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes, /) -> None:
        self._value = zlib.crc32(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")


def _checksum(algorithm: str) -> _Digest:
    if algorithm == "crc32":
        return _Crc32()
    if algorithm in ("sha1", "sha256"):
        return hashlib.new(algorithm)
    raise S3Error(
        "InvalidRequest", f"checksum algorithm {algorithm!r} is not supported here: use CRC32, SHA1 or SHA256"
    )


# x-amz-content-sha256 values that are not a digest of the body.
_NOT_A_DIGEST = (UNSIGNED_PAYLOAD, STREAMING_SIGNED, STREAMING_UNSIGNED_TRAILER, STREAMING_SIGNED_TRAILER)


class BodyCheck:
    """Digests of the (decoded) payload, compared at the end with what the request claimed."""

    def __init__(self, headers: Mapping[str, str], *, payload: str) -> None:
        self._sha256 = hashlib.sha256() if payload not in _NOT_A_DIGEST else None
        self._claimed_sha256 = payload
        self._md5 = hashlib.md5(usedforsecurity=False) if "content-md5" in headers else None
        self._claimed_md5 = headers.get("content-md5", "")
        self._checksums: dict[str, tuple[_Digest, str]] = {}
        for name, value in headers.items():
            if name.startswith(_CHECKSUM_PREFIX) and name != "x-amz-checksum-type":
                self._checksums[name] = (_checksum(name.removeprefix(_CHECKSUM_PREFIX)), value)
        self.size = 0

    def expect_trailer(self, name: str) -> None:
        """A checksum that comes after the body (``x-amz-trailer``)."""
        if not name.startswith(_CHECKSUM_PREFIX):
            raise S3Error("InvalidRequest", f"unsupported trailer {name!r}")
        self._checksums.setdefault(name, (_checksum(name.removeprefix(_CHECKSUM_PREFIX)), ""))

    def trailer(self, name: str, value: str) -> None:
        if name not in self._checksums:
            raise S3Error("InvalidRequest", f"trailer {name!r} was not announced in x-amz-trailer")
        self._checksums[name] = (self._checksums[name][0], value)

    def update(self, data: bytes) -> None:
        self.size += len(data)
        for digest in (self._sha256, self._md5, *(d for d, _ in self._checksums.values())):
            if digest is not None:
                digest.update(data)

    def finish(self) -> None:
        if self._sha256 is not None and not hmac.compare_digest(
            self._sha256.hexdigest(), self._claimed_sha256
        ):
            raise S3Error(
                "XAmzContentSHA256Mismatch", "the body's SHA-256 is not the one in x-amz-content-sha256"
            )
        if self._md5 is not None and base64.b64encode(self._md5.digest()).decode() != self._claimed_md5:
            raise S3Error("BadDigest", "the Content-MD5 you specified did not match what we received")
        for name, (digest, claimed) in self._checksums.items():
            if not claimed:
                raise S3Error("InvalidRequest", f"{name} was announced but not sent")
            if base64.b64encode(digest.digest()).decode() != claimed:
                raise S3Error("BadDigest", f"the {name} you specified did not match what we received")


class ChunkedDecoder:
    """Sans-IO decoder of an ``aws-chunked`` body: :meth:`feed` returns payload bytes as they arrive."""

    def __init__(self, *, verified: Verified | None, trailer: bool, check: BodyCheck) -> None:
        self._verified = verified  # chunk signatures chain from the request's when set
        self._previous = verified.seed_signature if verified is not None else ""
        self._trailer = trailer
        self._check = check
        self._buffer = bytearray()
        self._remaining = 0  # payload bytes left in the current chunk
        self._chunk_signature = ""
        self._chunk_sha256: _Digest | None = None
        self._state = "size"  # size -> data -> crlf -> size ... -> final/trailer -> done
        self.done = False

    def _fail(self, message: str) -> S3Error:
        return S3Error("IncompleteBody", f"malformed aws-chunked body: {message}")

    def _line(self) -> str | None:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > MAX_LINE:
                raise self._fail("a chunk header line is too long")
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        try:
            return line.decode("ascii")
        except UnicodeDecodeError:
            raise self._fail("a chunk header is not ASCII") from None

    def _start_chunk(self, line: str) -> None:
        size_text, _, extension = line.partition(";")
        try:
            size = int(size_text, 16)
        except ValueError:
            raise self._fail(f"bad chunk size {size_text!r}") from None
        if size < 0 or len(size_text) > 16:
            raise self._fail(f"bad chunk size {size_text!r}")
        if self._verified is not None:
            name, _, value = extension.partition("=")
            if name != "chunk-signature" or not value:
                raise self._fail("a chunk has no chunk-signature")
            self._chunk_signature = value
            self._chunk_sha256 = hashlib.sha256()
        self._remaining = size
        if size:
            self._state = "data"
        else:
            self._end_chunk()
            self._state = "trailer" if self._trailer else "final"

    def _end_chunk(self) -> None:
        if self._verified is None or self._chunk_sha256 is None:
            return
        expected = chunk_signature(self._verified, self._previous, self._chunk_sha256.digest().hex())
        if not hmac.compare_digest(expected.encode(), self._chunk_signature.encode()):
            raise S3Error("SignatureDoesNotMatch", "a chunk signature does not match", status=403)
        self._previous = expected

    def feed(self, data: bytes) -> list[bytes]:
        if self.done and data:
            raise self._fail("data after the final chunk")
        self._buffer += data
        out: list[bytes] = []
        while self._buffer and not self.done:
            if self._state == "data":
                piece = bytes(self._buffer[: self._remaining])
                del self._buffer[: len(piece)]
                self._remaining -= len(piece)
                self._check.update(piece)
                if self._chunk_sha256 is not None:
                    self._chunk_sha256.update(piece)
                out.append(piece)
                if not self._remaining:
                    self._state = "crlf"
                continue
            if self._state == "crlf":
                if len(self._buffer) < 2:
                    break
                if self._buffer[:2] != b"\r\n":
                    raise self._fail("a chunk is longer than its declared size")
                del self._buffer[:2]
                self._end_chunk()
                self._state = "size"
                continue
            line = self._line()
            if line is None:
                break
            if self._state == "size":
                self._start_chunk(line)
            elif self._state == "final":
                if line:
                    raise self._fail("data after the final chunk")
                self.done = True
            elif not line:  # trailer: header lines up to an empty one
                self.done = True
            else:
                name, separator, value = line.partition(":")
                if not separator:
                    raise self._fail(f"bad trailer line {line!r}")
                self._check.trailer(name.strip().lower(), value.strip())
        if self.done and self._buffer:
            raise self._fail("data after the final chunk")
        return out

    def close(self) -> None:
        if not self.done:
            # A trailer without its closing empty line is complete once its lines are in.
            if self._state == "trailer" and not self._buffer:
                return
            raise self._fail("the body ended before its final chunk")


async def payload(
    body: AsyncIterator[bytes], headers: Mapping[str, str], verified: Verified
) -> AsyncIterator[bytes]:
    """The request's payload, decoded and checked as its headers and signature say."""
    mode = verified.payload
    chunked = mode in (STREAMING_SIGNED, STREAMING_UNSIGNED_TRAILER, STREAMING_SIGNED_TRAILER)
    if mode == STREAMING_SIGNED_TRAILER:
        raise not_implemented("STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER")
    # The payload mode alone decides (some clients leave ``Content-Encoding: aws-chunked`` out).
    check = BodyCheck(headers, payload=mode)
    if not chunked:
        async for data in body:
            check.update(data)
            yield data
        check.finish()
        return
    decoder = ChunkedDecoder(
        verified=verified if mode == STREAMING_SIGNED else None,
        trailer=mode == STREAMING_UNSIGNED_TRAILER,
        check=check,
    )
    if mode == STREAMING_UNSIGNED_TRAILER:
        for name in filter(None, (n.strip().lower() for n in headers.get("x-amz-trailer", "").split(","))):
            check.expect_trailer(name)
    async for data in body:
        for piece in decoder.feed(data):
            yield piece
    decoder.close()
    declared = headers.get("x-amz-decoded-content-length")
    if declared is not None and (not declared.isdigit() or int(declared) != check.size):
        raise S3Error("IncompleteBody", "the body's length is not x-amz-decoded-content-length")
    check.finish()
