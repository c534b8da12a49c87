"""Who is calling."""

from __future__ import annotations

from dataclasses import dataclass

from oscar_manager.domain.service import DEFAULT_OWNER


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``uid`` owns the services it creates; admins see and change everything."""

    uid: str
    is_admin: bool = False
    name: str = ""

    @classmethod
    def admin(cls, name: str) -> Principal:
        # Upstream records services created through Basic auth as owned by ``cluster_admin``.
        return cls(uid=DEFAULT_OWNER, is_admin=True, name=name)
