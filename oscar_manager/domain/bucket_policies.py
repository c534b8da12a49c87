"""The MinIO groups and policies that make buckets' visibility hold in MinIO itself (issue 16).

Derived whole from the registry's bucket records, never edited piecemeal (upstream appends and removes
resources in shared policies, which drift when a step fails half-way):

* every bucket with members (``BucketRecord.members``: a user owner, and for ``restricted`` its allowed
  users) has a group ``oscar-bucket-<bucket>`` of exactly their MinIO users, holding a policy of the same
  name over that bucket alone;
* ``public`` buckets are in the policy of the all-users group, which every user's MinIO user joins.

What a member may do is what the manager's own bucket API lets them do: list, read, write and delete
objects. Bucket-level changes (deleting it, its notifications, policies and tags) stay with the manager,
which checks ownership and the services using the bucket first.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from oscar_manager.domain.buckets import BucketRecord

BUCKET_GROUP_PREFIX = "oscar-bucket-"

# On the bucket itself: what listing it and uploading in parts need.
BUCKET_ACTIONS = ("s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads")
# On its objects.
OBJECT_ACTIONS = (
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
)
# No ``s3:ListAllMyBuckets``: without it MinIO's ListBuckets answers each user the buckets they may list,
# as upstream's users get (the dashboard builds its bucket page from that answer, so with it every user
# would see every bucket's name), and AccessDenied to a user who may list none, which the dashboard and
# upstream's own listing read as "no buckets". The all-users policy needs a statement even when no bucket
# is public: one that denies on a bucket no name can be (``_`` is not a bucket name character).
NOTHING_PUBLIC = {"Effect": "Deny", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::_/*"]}


def bucket_group(bucket: str) -> str:
    return BUCKET_GROUP_PREFIX + bucket


def use_statements(buckets: Iterable[str]) -> list[dict[str, Any]]:
    """Allow using (``domain.buckets.can_use``) each of ``buckets``; none when there are none (MinIO
    refuses a statement without resources)."""
    names = sorted(set(buckets))
    if not names:
        return []
    return [
        {"Effect": "Allow", "Action": list(BUCKET_ACTIONS), "Resource": [f"arn:aws:s3:::{b}" for b in names]},
        {
            "Effect": "Allow",
            "Action": list(OBJECT_ACTIONS),
            "Resource": [f"arn:aws:s3:::{b}/*" for b in names],
        },
    ]


def policy(statements: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": statements}


def all_users_policy(records: Iterable[BucketRecord]) -> dict[str, Any]:
    """The all-users group's policy: the public buckets, or nothing at all."""
    public = [record.name for record in records if record.visibility == "public"]
    return policy(use_statements(public) or [NOTHING_PUBLIC])


@dataclass(frozen=True, slots=True)
class BucketGroup:
    """A bucket's MinIO group as it must be: exactly ``members`` (access keys) and ``policy``."""

    name: str
    bucket: str
    members: frozenset[str]
    policy: dict[str, Any]


def bucket_group_for(record: BucketRecord, access_keys: Mapping[str, str]) -> BucketGroup | None:
    """The group of ``record``'s members, or None when it has none (the admin's private bucket, which
    only the root identity uses). ``access_keys``: uid -> MinIO access key, for every member."""
    members = frozenset(access_keys[uid] for uid in record.members())
    if not members:
        return None
    return BucketGroup(bucket_group(record.name), record.name, members, policy(use_statements([record.name])))


def same_policy(one: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    """Whether two policy documents say the same: MinIO hands a stored policy back with its actions in an
    order of its own, so the order of actions, resources and statements does not count."""
    return _normal(one) == _normal(other)


def _normal(document: Mapping[str, Any]) -> tuple[Any, ...]:
    statements = document.get("Statement") or []
    return (
        document.get("Version"),
        sorted(_normal_statement(statement) for statement in statements),
        sorted(key for key in document if key not in ("Version", "Statement")),
    )


def _normal_statement(statement: Mapping[str, Any]) -> str:
    normal = {
        key: sorted(value) if key in ("Action", "Resource") and isinstance(value, list) else value
        for key, value in statement.items()
    }
    for key in ("Action", "Resource"):
        if isinstance(normal.get(key), str):
            normal[key] = [normal[key]]
    return json.dumps(normal, sort_keys=True)
