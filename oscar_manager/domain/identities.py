"""A user's own MinIO identity (issue 16): which access key an OIDC user gets, and the record kept of it.

Upstream names a user's MinIO user after their OIDC subject, as it is (``pkg/utils/auth/oidc.go``), so
keys stay recognisable in MinIO's console and in bucket policies. MinIO refuses some access keys; those
subjects get a key derived from a hash instead, stable and just as unique.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

# The all-users group every user's MinIO identity joins: upstream's name. Its policy (the public buckets)
# is ``domain.bucket_policies.all_users_policy``.
ALL_USERS_GROUP = "all_users_group"

# What MinIO takes as an access key and is safe in IAM paths and policy ARNs: no "=" or "," (MinIO's
# reserved characters), no "/" (IAM paths), at least 3 characters (MinIO's minimum); the upper bound keeps
# keys far below what the registry's column and an admin query string hold.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9@._+:-]{3,128}")
DERIVED_PREFIX = "oscar-u-"


def minio_access_key(uid: str, *, reserved: str) -> str:
    """The access key of OIDC subject ``uid``: the subject itself when MinIO takes it, else a hash of it.

    ``reserved`` is the manager's own (root) access key, which no user may be given: MinIO refuses it,
    and a subject equal to it must not be mistaken for the root.
    """
    if _PLAIN_KEY.fullmatch(uid) and uid != reserved and not uid.startswith(DERIVED_PREFIX):
        return uid
    return DERIVED_PREFIX + hashlib.sha256(uid.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class StorageIdentity:
    """What the registry keeps of a user's MinIO identity: the secret only sealed (``auth.sealing``)."""

    uid: str
    access_key: str
    sealed_secret: bytes
