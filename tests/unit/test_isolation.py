"""USER isolation's private buckets (``domain.isolation``): who gets one, its name, where outputs go."""

from __future__ import annotations

import hashlib

import pytest

from oscar_manager.domain.events import input_folders
from oscar_manager.domain.isolation import isolated_users, output_bucket, user_bucket_name, with_bucket_list
from oscar_manager.domain.service import Service, StorageIOConfig
from oscar_manager.errors import BadRequest


def isolated(**fields: object) -> Service:
    values: dict[str, object] = {
        "name": "gray",
        "image": "img",
        "script": "true",
        "owner": "owner-uid-1234",
        "isolation_level": "USER",
        "allowed_users": ["62bb11b40398f73778b6@egi.eu"],
        "input": [StorageIOConfig(storage_provider="minio.default", path="gray/in")],
        "output": [StorageIOConfig(storage_provider="minio.default", path="gray/out")],
        **fields,
    }
    return Service.model_validate(values)


def test_the_owner_joins_the_allowed_users_but_not_the_admin() -> None:
    assert isolated_users("USER", ["a", "b", "a"], "owner") == ["a", "b", "owner"]
    assert isolated_users("user", ["a"], "cluster_admin") == ["a"]
    # Upstream makes none without allowed users, nor at the SERVICE level.
    assert isolated_users("USER", [], "owner") == []
    assert isolated_users("SERVICE", ["a"], "owner") == []


def test_names_are_the_bucket_and_a_clean_uid_prefix() -> None:
    assert user_bucket_name("gray", "62bb11b40398f73778b6@egi.eu") == "gray-62bb11b403"
    assert user_bucket_name("gray", "Alice@Lab.Org") == "gray-alice-lab"
    assert user_bucket_name("gray", "owner@egi.test") == "gray-owner-egi"
    assert user_bucket_name("gray", "@@@") == "gray-" + hashlib.sha256(b"@@@").hexdigest()[:10]


def test_bucket_list_is_computed_whatever_the_client_sent() -> None:
    service = with_bucket_list(isolated(bucket_list=["forged"]))
    assert service.bucket_list == ["gray-62bb11b403", "gray-owner-uid"]
    assert with_bucket_list(isolated(isolation_level="SERVICE", bucket_list=["x"])).bucket_list == []


def test_users_meeting_in_one_bucket_are_refused() -> None:
    with pytest.raises(BadRequest, match="gray-0123456789"):
        with_bucket_list(isolated(allowed_users=["0123456789a", "0123456789b"]))
    # Nor may a private bucket be one of the service's own.
    with pytest.raises(BadRequest, match="gray-out"):
        with_bucket_list(
            isolated(
                allowed_users=["out"],
                output=[StorageIOConfig(storage_provider="minio.default", path="gray-out/x")],
            )
        )


def test_private_buckets_are_inputs_of_the_service() -> None:
    folders = {(f.bucket, f.folder) for f in input_folders(isolated())}
    assert folders == {("gray", "in"), ("gray-62bb11b403", "in"), ("gray-owner-uid", "in")}


def test_outputs_go_back_to_the_private_bucket_the_upload_came_from() -> None:
    service = isolated()
    assert output_bucket(service, configured="gray", event_bucket="gray-62bb11b403") == "gray-62bb11b403"
    # An upload to the shared bucket, another bucket, or no event at all: the configured output.
    for event_bucket in ("gray", "elsewhere", None):
        assert output_bucket(service, configured="gray", event_bucket=event_bucket) == "gray"
