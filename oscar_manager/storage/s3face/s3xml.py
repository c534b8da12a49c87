"""S3's XML: the answers of the S3 face, its error documents, and the few request bodies it reads
(DeleteObjects, CompleteMultipartUpload)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from oscar_manager.storage.base import ObjectInfo
from oscar_manager.storage.s3face.errors import S3Error
from oscar_manager.storage.s3face.listing import Page, continuation_token

NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
CONTENT_TYPE = "application/xml"


def iso_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def quoted_etag(etag: str) -> str:
    return f'"{etag}"'


def _document(root: ET.Element) -> bytes:
    document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return document


def _root(name: str) -> ET.Element:
    return ET.Element(name, xmlns=NAMESPACE)


def _add(parent: ET.Element, name: str, text: str | int | bool | None = None) -> ET.Element:
    child = ET.SubElement(parent, name)
    if isinstance(text, bool):
        child.text = "true" if text else "false"
    elif text is not None:
        child.text = str(text)
    return child


def error(code: str, message: str, *, resource: str, request_id: str) -> bytes:
    root = ET.Element("Error")
    _add(root, "Code", code)
    _add(root, "Message", message)
    _add(root, "Resource", resource)
    _add(root, "RequestId", request_id)
    return _document(root)


def list_buckets(buckets: Iterable[tuple[str, datetime]], *, owner: str) -> bytes:
    root = _root("ListAllMyBucketsResult")
    who = _add(root, "Owner")
    _add(who, "ID", owner)
    _add(who, "DisplayName", owner)
    listed = _add(root, "Buckets")
    for name, created in buckets:
        bucket = _add(listed, "Bucket")
        _add(bucket, "Name", name)
        _add(bucket, "CreationDate", iso_time(created))
    return _document(root)


def location() -> bytes:
    # Empty: us-east-1, what every client assumes of a bucket without a location constraint.
    return _document(_root("LocationConstraint"))


@dataclass(frozen=True, slots=True)
class ListRequest:
    bucket: str
    prefix: str
    delimiter: str
    max_keys: int
    url_encoded: bool  # encoding-type=url (boto3 asks for it and decodes keys itself)
    v2: bool
    marker: str = ""  # v1 marker; v2 start-after
    token: str = ""  # v2 continuation-token as received
    fetch_owner: bool = False


def list_objects(request: ListRequest, result: Page, *, owner: str) -> bytes:
    def encode(text: str) -> str:
        return quote(text, safe="/") if request.url_encoded else text

    root = _root("ListBucketResult")
    _add(root, "Name", request.bucket)
    _add(root, "Prefix", encode(request.prefix))
    if request.v2:
        if request.marker:
            _add(root, "StartAfter", encode(request.marker))
        if request.token:
            _add(root, "ContinuationToken", request.token)
        if result.truncated:
            token = continuation_token(result.last, is_prefix=result.last_is_prefix)
            _add(root, "NextContinuationToken", token)
        _add(root, "KeyCount", len(result.objects) + len(result.prefixes))
    else:
        _add(root, "Marker", encode(request.marker))
        if result.truncated and request.delimiter:
            _add(root, "NextMarker", encode(result.last))
    _add(root, "MaxKeys", request.max_keys)
    if request.delimiter:
        _add(root, "Delimiter", encode(request.delimiter))
    if request.url_encoded:
        _add(root, "EncodingType", "url")
    _add(root, "IsTruncated", result.truncated)
    for info in result.objects:
        item = _add(root, "Contents")
        _add(item, "Key", encode(info.key))
        _add(item, "LastModified", iso_time(info.last_modified))
        _add(item, "ETag", quoted_etag(info.etag))
        _add(item, "Size", info.size)
        _add(item, "StorageClass", "STANDARD")
        if not request.v2 or request.fetch_owner:
            who = _add(item, "Owner")
            _add(who, "ID", owner)
            _add(who, "DisplayName", owner)
    for common in result.prefixes:
        _add(_add(root, "CommonPrefixes"), "Prefix", encode(common))
    return _document(root)


def copy_result(info: ObjectInfo) -> bytes:
    root = _root("CopyObjectResult")
    _add(root, "LastModified", iso_time(info.last_modified))
    _add(root, "ETag", quoted_etag(info.etag))
    return _document(root)


def delete_result(deleted: Sequence[str], errors: Sequence[tuple[str, str, str]], *, quiet: bool) -> bytes:
    root = _root("DeleteResult")
    if not quiet:
        for key in deleted:
            _add(_add(root, "Deleted"), "Key", key)
    for key, code, message in errors:
        item = _add(root, "Error")
        _add(item, "Key", key)
        _add(item, "Code", code)
        _add(item, "Message", message)
    return _document(root)


def multipart_started(bucket: str, key: str, upload_id: str) -> bytes:
    root = _root("InitiateMultipartUploadResult")
    _add(root, "Bucket", bucket)
    _add(root, "Key", key)
    _add(root, "UploadId", upload_id)
    return _document(root)


def multipart_completed(bucket: str, key: str, etag: str, *, location: str) -> bytes:
    root = _root("CompleteMultipartUploadResult")
    _add(root, "Location", location)
    _add(root, "Bucket", bucket)
    _add(root, "Key", key)
    _add(root, "ETag", quoted_etag(etag))
    return _document(root)


def _parse(body: bytes) -> ET.Element:
    # No DTDs at all: nothing an entity could expand into, and nothing external to fetch.
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise S3Error("MalformedXML", "DTDs are not allowed")
    try:
        return ET.fromstring(body)  # noqa: S314 - see _parse's check above
    except ET.ParseError:
        raise S3Error("MalformedXML", "the XML you provided was not well-formed") from None


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if _local(child.tag) == name]


def _text(element: ET.Element, name: str) -> str | None:
    found = _children(element, name)
    return (found[0].text or "") if found else None


def delete_request(body: bytes, *, limit: int = 1000) -> tuple[list[str], bool]:
    """The keys of a DeleteObjects body and whether it asked for a quiet answer."""
    root = _parse(body)
    if _local(root.tag) != "Delete":
        raise S3Error("MalformedXML", "the body of DeleteObjects must be a Delete element")
    keys = [_text(item, "Key") or "" for item in _children(root, "Object")]
    if not keys or len(keys) > limit:
        raise S3Error("MalformedXML", f"DeleteObjects takes 1 to {limit} keys")
    return keys, (_text(root, "Quiet") or "").strip().lower() == "true"


def complete_request(body: bytes) -> list[tuple[int, str]]:
    """The (part number, ETag) list of a CompleteMultipartUpload body, in the order given."""
    root = _parse(body)
    parts = []
    for item in _children(root, "Part"):
        number, etag = _text(item, "PartNumber"), _text(item, "ETag")
        if number is None or not number.strip().isdigit() or etag is None:
            raise S3Error("MalformedXML", "each Part needs a PartNumber and an ETag")
        parts.append((int(number), etag.strip().strip('"')))
    if not parts:
        raise S3Error("MalformedXML", "CompleteMultipartUpload needs at least one Part")
    return parts
