"""The readiness answer: is each part the manager needs to take and run work up, and if not, why.

``/health`` stays a liveness probe (the process answers); this one tells an orchestrator (and people)
that uploads would be refused or never run: an event source down, the registry or the store unusable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from oscar_manager.registry import Database
from oscar_manager.storage.base import ObjectStore
from oscar_manager.storage.local import LocalObjectStore


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    reason: str = ""
    state: str = ""

    def render(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"ok": self.ok}
        if self.state:
            shown["state"] = self.state
        if self.reason:
            shown["reason"] = self.reason
        return shown


def _described(exc: Exception) -> str:
    return f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"


async def database(db: Database) -> Check:
    try:
        async with db.reading() as tx:
            await tx.services.exists("")
    except Exception as exc:
        return Check(ok=False, reason=_described(exc))
    return Check(ok=True)


async def storage(store: ObjectStore) -> Check:
    """Local storage: whether a file could be written now (read-only, full); others: whether the
    server answers a listing."""
    if isinstance(store, LocalObjectStore):
        reason = store.unwritable_reason()
        return Check(ok=not reason, reason=reason)
    try:
        await store.list_buckets()
    except Exception as exc:
        return Check(ok=False, reason=_described(exc))
    return Check(ok=True)


def answer(*, sources: dict[str, Check], database: Check, storage: Check) -> tuple[bool, dict[str, Any]]:
    ready = database.ok and storage.ok and all(check.ok for check in sources.values())
    return ready, {
        "ready": ready,
        "event_sources": {name: check.render() for name, check in sources.items()},
        "database": database.render(),
        "storage": storage.render(),
    }
