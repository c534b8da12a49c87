from __future__ import annotations

import pytest

from oscar_manager.errors import BadRequest
from oscar_manager.storage.base import InvalidKey
from oscar_manager.storage.keys import MAX_KEY_BYTES, validate_bucket, validate_key


@pytest.mark.parametrize(
    "bucket",
    ["abc", "my-bucket", "bucket.with.dots", "0bucket9", "a" * 63],
)
def test_bucket_names_allowed(bucket: str) -> None:
    assert validate_bucket(bucket) == bucket


@pytest.mark.parametrize(
    "bucket",
    [
        "",
        "ab",
        "a" * 64,
        "Upper",
        "under_score",
        "-leading",
        "trailing-",
        ".staging",
        "a..b",
        "a/b",
        "../etc",
        "with space",
        "abc\n",
        "été",
    ],
)
def test_bucket_names_refused(bucket: str) -> None:
    with pytest.raises(InvalidKey, match="invalid bucket name"):
        validate_bucket(bucket)


@pytest.mark.parametrize(
    "key",
    [
        "file.txt",
        "input/image.png",
        "a/b/c/d.tar.gz",
        "with space/and more.txt",
        "données/été.txt",
        "日本語/ファイル",
        "a+b=c.txt",
        "literal%2Fpercent",
        "100%",
        ".hidden",
        "..double-dot-prefix",
        "dots.../x",
        "a" * MAX_KEY_BYTES,
    ],
)
def test_keys_allowed(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "empty"),
        ("../etc/passwd", "segments"),
        ("a/../b", "segments"),
        ("a/..", "segments"),
        ("..", "segments"),
        ("./x", "segments"),
        ("a/./b", "segments"),
        ("a//b", "segments"),
        ("/absolute", "start or end"),
        ("trailing/", "start or end"),
        ("nul\x00byte", "control"),
        ("new\nline", "control"),
        ("carriage\rreturn", "control"),
        ("tab\there", "control"),
        ("del\x7f", "control"),
        ("c1\x85control", "control"),
        ("back\\slash", "backslash"),
        ("..\\windows", "backslash"),
        ("a" * (MAX_KEY_BYTES + 1), "longer than"),
        ("é" * (MAX_KEY_BYTES // 2 + 1), "longer than"),  # 2 bytes each in UTF-8
        ("lone\udc80surrogate", "unicode"),
    ],
)
def test_keys_refused(key: str, reason: str) -> None:
    with pytest.raises(InvalidKey, match=reason):
        validate_key(key)


@pytest.mark.parametrize("folder", ["input", "input/", "a/b/", "données/"])
def test_folder_keys_may_end_with_a_slash(folder: str) -> None:
    assert validate_key(folder, folder=True) == folder


@pytest.mark.parametrize("folder", ["/", "a//", "../", "a/../", "/input/"])
def test_folder_keys_refused(folder: str) -> None:
    with pytest.raises(InvalidKey):
        validate_key(folder, folder=True)


def test_object_keys_may_not_end_with_a_slash_even_if_folders_may() -> None:
    with pytest.raises(InvalidKey):
        validate_key("input/")


def test_invalid_key_is_a_bad_request() -> None:
    with pytest.raises(InvalidKey) as caught:
        validate_key("a/../b")
    assert isinstance(caught.value, BadRequest)
    assert caught.value.status_code == 400
