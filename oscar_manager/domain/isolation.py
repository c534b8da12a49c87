"""``isolation_level: USER`` (upstream ``docs/multitenancy.md``): a private bucket per user of a service.

Each allowed user (and the owner, unless the admin) gets ``<input bucket>-<first 10 characters of their
uid>`` for every input bucket on ``minio.default``, with the input folder, which triggers the service,
and the output folders, where the jobs its uploads start write their results (the supervisor redirects
``minio`` outputs to the event's bucket, as upstream's faas-supervisor does). Only that user may use it.

Upstream takes ``uid[:10]`` as it is; here it is lowered, anything a bucket name cannot hold becomes
``-`` and dashes at its ends are dropped (a uid with nothing usable there gets a hash), and two users
whose prefixes meet in one bucket name are refused (400): upstream would let them share one "private"
bucket.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from oscar_manager.domain.providers import DEFAULT_PROVIDER_ID, ProviderRef
from oscar_manager.domain.service import DEFAULT_OWNER, Service
from oscar_manager.errors import BadRequest

USER_LEVEL = "USER"
UID_PREFIX = 10
_NOT_IN_BUCKET_NAMES = re.compile(r"[^a-z0-9-]")


@dataclass(frozen=True, slots=True)
class UserBucket:
    """``name``: the private bucket of ``uid`` made from the service's input bucket ``source``."""

    name: str
    uid: str
    source: str


def isolated_users(isolation_level: str, allowed_users: Sequence[str], owner: str) -> list[str]:
    """Who gets a bucket of their own: none unless USER isolation with allowed users, as upstream."""
    if isolation_level.strip().upper() != USER_LEVEL or not allowed_users:
        return []
    users = list(dict.fromkeys(allowed_users))
    if owner != DEFAULT_OWNER and owner not in users:
        users.append(owner)
    return users


def user_bucket_name(bucket: str, uid: str) -> str:
    # Without dashes at the ends ("owner@egi.test" gives "owner-egi"): a bucket name cannot end in one.
    prefix = _NOT_IN_BUCKET_NAMES.sub("-", uid[:UID_PREFIX].lower()).strip("-")
    return f"{bucket}-{prefix or hashlib.sha256(uid.encode()).hexdigest()[:UID_PREFIX]}"


def possible_sources(bucket: str) -> list[str]:
    """The names a service that uses ``bucket`` has in its definition: ``bucket`` itself, or the input
    bucket a user's private bucket of that name would be made from (what comes before one of its dashes)."""
    return [bucket, *(bucket[:at] for at, char in enumerate(bucket) if char == "-" and at > 0)]


def _input_buckets(inputs: Iterable[tuple[str, str]]) -> list[str]:
    """The buckets of (provider, path) inputs on ``minio.default``, in order, once each."""
    buckets: dict[str, None] = {}
    for provider, path in inputs:
        ref = ProviderRef(provider or "minio")
        if (ref.type, ref.id) == ("minio", DEFAULT_PROVIDER_ID):
            buckets[path.strip().strip("/").partition("/")[0]] = None
    return list(buckets)


def user_buckets_of(
    inputs: Iterable[tuple[str, str]], *, isolation_level: str, allowed_users: Sequence[str], owner: str
) -> list[UserBucket]:
    """Every user bucket of a service given as plain values (the registry's routes read them so)."""
    users = isolated_users(isolation_level, allowed_users, owner)
    return [
        UserBucket(user_bucket_name(source, uid), uid, source)
        for source in _input_buckets(inputs)
        for uid in users
    ]


def user_buckets(service: Service) -> list[UserBucket]:
    return user_buckets_of(
        ((io.storage_provider, io.path) for io in service.input),
        isolation_level=service.isolation_level,
        allowed_users=service.allowed_users,
        owner=service.owner,
    )


def with_bucket_list(service: Service) -> Service:
    """``service`` with its ``bucket_list`` computed (clients send none, or a stale one), or a 400 when
    two of its buckets would be one. The names' validity is the storage's to check."""
    buckets = user_buckets(service)
    taken: dict[str, str] = {}
    own = set(_input_buckets((io.storage_provider, io.path) for io in [*service.input, *service.output]))
    for bucket in buckets:
        if bucket.name in taken or bucket.name in own:
            other = taken.get(bucket.name, "the service's own buckets")
            raise BadRequest(
                f"users {other!r} and {bucket.uid!r} would share the private bucket {bucket.name!r} "
                f"(the first {UID_PREFIX} characters of their ids meet)"
            )
        taken[bucket.name] = bucket.uid
    return service.model_copy(update={"bucket_list": [bucket.name for bucket in buckets]})


def output_bucket(service: Service, *, configured: str, event_bucket: str | None) -> str:
    """Where a ``minio.default`` output of a job goes: the user's own bucket when their upload there
    started it, else the configured one."""
    if event_bucket is not None and any(b.name == event_bucket for b in user_buckets(service)):
        return event_bucket
    return configured
