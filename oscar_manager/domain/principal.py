"""Who is calling."""

from __future__ import annotations

from dataclasses import dataclass

from oscar_manager.domain.service import DEFAULT_OWNER


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``uid`` owns the services it creates; admins see and change everything.

    ``is_admin`` is the Basic-auth admin only. An OIDC user is never one: its ``uid`` is the token's
    subject and ``groups`` its VOs. ``users_admin`` marks a uid listed in ``USERS_ADMIN``: as upstream, it
    may read cluster-wide logs and status, but owns and sees services like any other user.
    """

    uid: str
    is_admin: bool = False
    name: str = ""
    groups: tuple[str, ...] = ()
    users_admin: bool = False

    @classmethod
    def admin(cls, name: str) -> Principal:
        # Upstream records services created through Basic auth as owned by ``cluster_admin``.
        return cls(uid=DEFAULT_OWNER, is_admin=True, name=name)
