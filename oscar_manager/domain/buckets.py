"""Who may use a bucket of the manager's own storage (issue 16): its owner, visibility and members.

The registry keeps one :class:`BucketRecord` per bucket the manager knows an owner of; it is the one
source of truth. MinIO's groups and policies (``bucket_policies``) and the local store's checks are
derived from it, never read back, so they cannot drift from what ``GET /system/buckets`` says.

A bucket without a record (made in MinIO behind the manager's back, or before the registry kept owners)
is the admin's and private: only the admin sees it, as upstream treats untagged buckets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from oscar_manager.domain.principal import Principal
from oscar_manager.domain.service import DEFAULT_OWNER, VISIBILITIES, Service
from oscar_manager.errors import BadRequest, Forbidden

# The owner of the admin's buckets, as of the admin's services: upstream's name.
ADMIN_OWNER = DEFAULT_OWNER

# An OIDC subject as a member of a bucket: printable, no whitespace, bounded like the identities' uid
# column. What OIDC issuers use (EGI's ``<hex>@egi.eu``, Keycloak's UUIDs, emails) all fit.
_UID = re.compile(r"[\x21-\x7e]{1,255}")
MAX_ALLOWED_USERS = 1000
MAX_METADATA = 50


@dataclass(frozen=True, slots=True)
class BucketRecord:
    """``service``: the service whose input or output made the bucket (its visibility follows the
    service's and only a service change alters it), or None for a bucket made through the buckets API."""

    name: str
    owner: str = ADMIN_OWNER
    visibility: str = "private"
    allowed_users: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    service: str | None = None

    @property
    def admins(self) -> bool:
        return self.owner == ADMIN_OWNER

    def members(self) -> frozenset[str]:
        """The users (besides the admin) who may read and write the objects: ``public`` is every user,
        which :func:`can_use` checks apart; this is the owner and, when restricted, the allowed users."""
        owners = set() if self.admins else {self.owner}
        if self.visibility == "restricted":
            owners.update(self.allowed_users)
        return frozenset(owners)


def unrecorded(name: str) -> BucketRecord:
    """What a bucket without a record is: the admin's, private."""
    return BucketRecord(name=name)


def can_use(principal: Principal, bucket: BucketRecord) -> bool:
    """List, read, write and delete the bucket's objects."""
    if principal.is_admin or bucket.visibility == "public":
        return True
    return principal.uid in bucket.members()


def can_manage(principal: Principal, bucket: BucketRecord) -> bool:
    """Change the bucket's visibility or members, or delete it: its owner or the admin."""
    return principal.is_admin or (not bucket.admins and bucket.owner == principal.uid)


def require_use(principal: Principal, bucket: BucketRecord) -> None:
    if not can_use(principal, bucket):
        raise Forbidden(f"user {principal.uid!r} may not use bucket {bucket.name!r}")


def require_manage(principal: Principal, bucket: BucketRecord) -> None:
    if not can_manage(principal, bucket):
        raise Forbidden(f"bucket {bucket.name!r} belongs to another user: only its owner may change it")


def owner_of(principal: Principal) -> str:
    return ADMIN_OWNER if principal.is_admin else principal.uid


def visibility(value: str) -> str:
    """A visibility as given by a client: trimmed, any case, empty meaning private (as upstream)."""
    chosen = value.strip().lower() or "private"
    if chosen not in VISIBILITIES:
        raise BadRequest(f"invalid visibility {value!r} (valid: {', '.join(VISIBILITIES)})")
    return chosen


def allowed_users(values: Iterable[str], *, owner: str) -> tuple[str, ...]:
    """Members as given: trimmed, empties dropped (as upstream), duplicates and the owner removed; a
    malformed id is refused rather than silently kept or dropped."""
    members: dict[str, None] = {}
    for value in values:
        if not isinstance(value, str):
            raise BadRequest(f"allowed_users: {value!r} is not a user id")
        uid = value.strip()
        if not uid:
            continue
        if not _UID.fullmatch(uid):
            raise BadRequest(f"allowed_users: {value!r} is not a valid user id (printable, no spaces)")
        if uid != owner:
            members[uid] = None
    if len(members) > MAX_ALLOWED_USERS:
        raise BadRequest(f"allowed_users: at most {MAX_ALLOWED_USERS} users")
    return tuple(members)


def metadata(values: dict[str, str]) -> dict[str, str]:
    if len(values) > MAX_METADATA:
        raise BadRequest(f"metadata: at most {MAX_METADATA} entries")
    for key, value in values.items():
        if not key or len(key) > 128 or len(value) > 256:
            raise BadRequest(f"metadata: {key!r} must be 1-128 characters and its value at most 256")
    return dict(values)


@dataclass(frozen=True, slots=True)
class StorageUse:
    """The fields of a service its buckets on the manager's own storage are made from, as plain values:
    the registry reads these alone, where validating every definition would take seconds of CPU for
    10,000 services (finding who else uses a bucket, at each service deleted or changed)."""

    name: str
    owner: str
    inputs: tuple[tuple[str, str], ...]  # (storage_provider, path)
    outputs: tuple[tuple[str, str], ...]
    isolation_level: str = ""
    allowed_users: tuple[str, ...] = ()

    @classmethod
    def of(cls, service: Service) -> StorageUse:
        return cls(
            name=service.name,
            owner=service.owner,
            inputs=tuple((io.storage_provider, io.path) for io in service.input),
            outputs=tuple((io.storage_provider, io.path) for io in service.output),
            isolation_level=service.isolation_level,
            allowed_users=tuple(service.allowed_users),
        )
