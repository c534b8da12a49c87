from __future__ import annotations

import time
from typing import Any

import pytest

from oscar_manager.errors import BadRequest, Forbidden
from oscar_manager.storage.presign import (
    DEFAULT_EXPIRES,
    MAX_EXPIRES,
    MIN_EXPIRES,
    PresignSigner,
    expiry,
)

NOW = 1_700_000_000.0
EXPIRES_AT = int(NOW) + 60
REQUEST: dict[str, Any] = {
    "bucket": "photos",
    "key": "input/données été+1.png",
    "operation": "upload",
    "expires_at": EXPIRES_AT,
}


@pytest.fixture
def signer() -> PresignSigner:
    return PresignSigner(b"k" * 32)


def test_round_trip(signer: PresignSigner) -> None:
    signature = signer.sign(**REQUEST)
    assert len(signature) == 64
    signer.verify(**REQUEST, signature=signature, now=NOW)
    signer.verify(**REQUEST, signature=signature, now=EXPIRES_AT)  # still valid at the expiry second


def test_query_parameters_verify(signer: PresignSigner) -> None:
    query = signer.query(**REQUEST)
    assert query["operation"] == "upload"
    assert query["expires"] == str(EXPIRES_AT)
    signer.verify(
        bucket=REQUEST["bucket"],
        key=REQUEST["key"],
        operation=query["operation"],
        expires_at=int(query["expires"]),
        signature=query["signature"],
        now=NOW,
    )


def test_verify_uses_the_clock_by_default(signer: PresignSigner) -> None:
    future = int(time.time()) + 60
    signer.verify(
        **{**REQUEST, "expires_at": future}, signature=signer.sign(**{**REQUEST, "expires_at": future})
    )
    past = int(time.time()) - 1
    with pytest.raises(Forbidden, match="expired"):
        signer.verify(
            **{**REQUEST, "expires_at": past}, signature=signer.sign(**{**REQUEST, "expires_at": past})
        )


@pytest.mark.parametrize(
    "tampered",
    [
        {"bucket": "photos2"},
        {"key": "input/other.png"},
        {"key": "input/données été+1.png "},
        {"operation": "download"},
        {"expires_at": EXPIRES_AT + 1},
    ],
)
def test_tampered_request_refused(signer: PresignSigner, tampered: dict[str, Any]) -> None:
    signature = signer.sign(**REQUEST)
    with pytest.raises(Forbidden, match="does not match"):
        signer.verify(**{**REQUEST, **tampered}, signature=signature, now=NOW)


def test_field_boundaries_are_unambiguous(signer: PresignSigner) -> None:
    # Moving characters between bucket and key must not produce the same signature.
    one = signer.sign(bucket="abc", key="d/e", operation="download", expires_at=EXPIRES_AT)
    two = signer.sign(bucket="abcd", key="/e", operation="download", expires_at=EXPIRES_AT)
    assert one != two


def test_tampered_signature_refused(signer: PresignSigner) -> None:
    signature = signer.sign(**REQUEST)
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    with pytest.raises(Forbidden, match="does not match"):
        signer.verify(**REQUEST, signature=flipped, now=NOW)


@pytest.mark.parametrize("signature", ["", "abc", "é" * 64, "Z" * 64, "0" * 63, "0" * 65])
def test_malformed_signature_refused(signer: PresignSigner, signature: str) -> None:
    with pytest.raises(Forbidden, match="malformed"):
        signer.verify(**REQUEST, signature=signature, now=NOW)


def test_upper_case_signature_refused(signer: PresignSigner) -> None:
    with pytest.raises(Forbidden):
        signer.verify(**REQUEST, signature=signer.sign(**REQUEST).upper(), now=NOW)


def test_other_secret_refused(signer: PresignSigner) -> None:
    signature = PresignSigner(b"other secret").sign(**REQUEST)
    with pytest.raises(Forbidden, match="does not match"):
        signer.verify(**REQUEST, signature=signature, now=NOW)


def test_expired_refused(signer: PresignSigner) -> None:
    signature = signer.sign(**REQUEST)
    with pytest.raises(Forbidden, match="expired"):
        signer.verify(**REQUEST, signature=signature, now=EXPIRES_AT + 0.001)


def test_unknown_operation(signer: PresignSigner) -> None:
    with pytest.raises(ValueError, match="operation"):
        signer.sign(**{**REQUEST, "operation": "delete"})
    with pytest.raises(Forbidden, match="unknown operation"):
        signer.verify(**{**REQUEST, "operation": "delete"}, signature="0" * 64, now=NOW)


def test_empty_secret_refused() -> None:
    with pytest.raises(ValueError, match="secret"):
        PresignSigner(b"")


@pytest.mark.parametrize(
    ("expires_in", "expected"),
    [
        (None, 1000 + DEFAULT_EXPIRES),
        (0, 1000 + DEFAULT_EXPIRES),
        (MIN_EXPIRES, 1000 + MIN_EXPIRES),
        (3600, 4600),
        (MAX_EXPIRES, 1000 + MAX_EXPIRES),
    ],
)
def test_expiry(expires_in: int | None, expected: int) -> None:
    assert expiry(expires_in, 1000.0) == expected


def test_expiry_rounds_now_up() -> None:
    assert expiry(1, 1000.2) == 1002


@pytest.mark.parametrize("expires_in", [-1, MAX_EXPIRES + 1, 10**12])
def test_expiry_out_of_bounds(expires_in: int) -> None:
    with pytest.raises(BadRequest, match="between 1 and 604800"):
        expiry(expires_in, NOW)


def test_expiry_must_be_whole_seconds() -> None:
    with pytest.raises(BadRequest, match="whole number"):
        expiry(1.5, NOW)  # type: ignore[arg-type]
    with pytest.raises(BadRequest, match="whole number"):
        expiry(True, NOW)
