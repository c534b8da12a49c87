"""The MinIO groups and policies derived from bucket records (``domain.bucket_policies``), and the keys of
the registry's named locks."""

from __future__ import annotations

from typing import Any

import pytest

from oscar_manager.domain.bucket_policies import (
    BUCKET_GROUP_PREFIX,
    NOTHING_PUBLIC,
    all_users_policy,
    bucket_group,
    bucket_group_for,
    policy,
    same_policy,
    use_statements,
)
from oscar_manager.domain.buckets import BucketRecord, unrecorded
from oscar_manager.registry.locks import lock_key

KEYS = {"alice": "alice-key", "bob": "bob-key", "carol": "carol-key"}


def granted(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (action, resource)
        for statement in document["Statement"]
        if statement["Effect"] == "Allow"
        for action in statement["Action"]
        for resource in statement["Resource"]
    }


def test_a_private_buckets_group_is_its_owner_over_that_bucket_alone() -> None:
    group = bucket_group_for(BucketRecord("data", owner="alice", allowed_users=("bob",)), KEYS)
    assert group is not None
    assert (group.name, group.bucket, group.members) == (
        "oscar-bucket-data",
        "data",
        frozenset({"alice-key"}),
    )
    rights = granted(group.policy)
    assert {resource for _action, resource in rights} == {"arn:aws:s3:::data", "arn:aws:s3:::data/*"}
    assert ("s3:ListBucket", "arn:aws:s3:::data") in rights
    assert {("s3:GetObject", "arn:aws:s3:::data/*"), ("s3:PutObject", "arn:aws:s3:::data/*")} <= rights
    assert ("s3:DeleteObject", "arn:aws:s3:::data/*") in rights


def test_a_restricted_buckets_group_adds_the_allowed_users() -> None:
    record = BucketRecord("data", owner="alice", visibility="restricted", allowed_users=("bob", "carol"))
    group = bucket_group_for(record, KEYS)
    assert group is not None
    assert group.members == {"alice-key", "bob-key", "carol-key"}


def test_the_admins_private_bucket_has_no_group_and_its_restricted_one_only_the_allowed() -> None:
    assert bucket_group_for(unrecorded("data"), {}) is None
    assert bucket_group_for(BucketRecord("data", allowed_users=("bob",)), KEYS) is None
    shared = bucket_group_for(BucketRecord("data", visibility="restricted", allowed_users=("bob",)), KEYS)
    assert shared is not None
    assert shared.members == {"bob-key"}


def test_members_get_object_rights_and_read_only_bucket_rights_never_a_wildcard() -> None:
    """Deleting the bucket, its policy, notifications, tags or versioning stays with the manager."""
    group = bucket_group_for(BucketRecord("data", owner="alice", visibility="public"), KEYS)
    assert group is not None
    actions = {action for action, _resource in granted(group.policy) | granted(all_users_policy([]))}
    assert actions == {
        "s3:ListBucket",
        "s3:GetBucketLocation",
        "s3:ListBucketMultipartUploads",
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts",
    }


def test_bucket_level_actions_are_on_the_bucket_and_object_actions_on_its_objects() -> None:
    for statement in use_statements(["one", "two"]):
        on_objects = all(resource.endswith("/*") for resource in statement["Resource"])
        assert on_objects == all("Object" in a or "Multipart" in a for a in statement["Action"])
    assert use_statements([]) == []  # MinIO refuses a statement without resources


LIST_ALL = {"Effect": "Allow", "Action": ["s3:ListAllMyBuckets"], "Resource": ["arn:aws:s3:::*"]}


def test_the_all_users_policy_opens_the_public_buckets_only() -> None:
    records = [
        BucketRecord("open", owner="alice", visibility="public"),
        BucketRecord("shared", owner="alice", visibility="restricted", allowed_users=("bob",)),
        BucketRecord("mine", owner="alice"),
        BucketRecord("admins", visibility="public"),
    ]
    document = all_users_policy(records)
    buckets = {resource.split(":::")[1].split("/")[0] for _a, resource in granted(document)}
    assert buckets == {"open", "admins"}
    # Bucket names are not every user's: MinIO lists each user the buckets they may list.
    assert "s3:ListAllMyBuckets" not in {action for action, _resource in granted(document)}
    # None public: a statement that grants nothing (MinIO wants one).
    assert all_users_policy([])["Statement"] == [NOTHING_PUBLIC]
    assert granted(all_users_policy([])) == set()


def test_group_names_are_the_prefix_and_the_bucket() -> None:
    assert bucket_group("data") == BUCKET_GROUP_PREFIX + "data"
    assert bucket_group("data").removeprefix(BUCKET_GROUP_PREFIX) == "data"


@pytest.mark.parametrize("name", ["bucket-rules", "storage-identity:alice@egi.eu", ""])
def test_lock_keys_are_stable_signed_64_bit_and_distinct(name: str) -> None:
    key = lock_key(name)
    assert -(2**63) <= key < 2**63
    assert key == lock_key(name)
    assert key != lock_key(name + "x")


def test_a_policy_as_minio_hands_it_back_is_the_same_and_any_real_change_is_not() -> None:
    written = all_users_policy(
        [BucketRecord("b2", visibility="public"), BucketRecord("a1", visibility="public")]
    )
    handed_back = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": [*reversed(statement["Action"])],
                "Resource": [*reversed(statement["Resource"])],
            }
            for statement in reversed(written["Statement"])
        ],
    }
    assert same_policy(written, handed_back)
    assert not same_policy(written, all_users_policy([BucketRecord("a1", visibility="public")]))
    widened = {**written, "Statement": [*written["Statement"], {**LIST_ALL, "Action": ["s3:*"]}]}
    assert not same_policy(written, widened)
    conditional = {**LIST_ALL, "Condition": {"StringLike": {"s3:prefix": ["in/*"]}}}
    assert not same_policy(policy([LIST_ALL]), policy([conditional]))
    assert same_policy(policy([{**LIST_ALL, "Action": "s3:ListAllMyBuckets"}]), policy([LIST_ALL]))
