"""``GET /system/services`` from each service's JSON rendered once per change.

Validating and dumping 10,000 definitions took seconds a request. Here the process keeps its last listing:
every service's public JSON rendered once, with the version of each row (its ``updated_at``, which every
change moves). When services may have changed, a list reads every (name, version) from an index (a few
milliseconds) and renders again only the services whose version moved. A change this process commits is
seen by the next list (the database's services generation moves, and its journal names the services: an
update is read again alone, without the 10,000 versions); one committed by another process within the
seconds the database's service cache trusts its copies for (``SERVICE_CACHE_SECONDS``), after which
the versions are read again. Who sees what is worked out per caller from each service's owner, visibility
and allowed users (``domain.access.sees``, as ``can_view``), and kept with the listing for the caller's
next requests (the dashboard asks three times a page load).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from oscar_manager.domain.access import owns, sees
from oscar_manager.domain.principal import Principal
from oscar_manager.domain.service import Service
from oscar_manager.domain.service_views import public_views
from oscar_manager.registry import Database, Transaction
from oscar_manager.registry.database import SERVICE_CACHE_SECONDS

# Callers whose answers one listing keeps; past that, the kept answers are dropped and worked out again.
_ANSWERS_KEPT = 256

# Services read and rendered between two turns of the event loop: rendering 10,000 (the first list after a
# start) takes seconds of CPU, during which the other requests must still be answered.
_RENDERED_AT_ONCE = 100

Versions = Sequence[tuple[str, str]]  # (name, version) by name


@dataclass(frozen=True, slots=True)
class _Rendered:
    owner: str
    visibility: str
    allowed_users: frozenset[str]
    public: bytes  # for who may see it
    revealed: bytes  # for who may change it (its providers' credentials shown); often ``public`` itself


@dataclass(slots=True)
class _Listing:
    """Every service as of ``versions`` (by name), and the answers worked out from them per caller.
    Read when the database's services generation was ``generation``, checked against the registry at
    ``checked`` (loop time)."""

    versions: Versions
    entries: dict[str, _Rendered]  # by name, in the order of ``versions``
    generation: int
    checked: float
    answers: dict[tuple[str, bool], list[bytes]] = field(default_factory=dict)

    def current(self, generation: int, now: float) -> bool:
        return self.generation == generation and now - self.checked < SERVICE_CACHE_SECONDS

    def answer(self, principal: Principal) -> list[bytes]:
        key = (principal.uid, principal.is_admin)  # all of the caller that ``sees`` and ``owns`` read
        found = self.answers.get(key)
        if found is not None:
            return found
        if principal.is_admin:  # sees every service, and may change every one
            found = [entry.revealed for entry in self.entries.values()]
        else:
            found = [
                entry.revealed if owns(principal, entry.owner) else entry.public
                for entry in self.entries.values()
                if sees(
                    principal,
                    owner=entry.owner,
                    visibility=entry.visibility,
                    allowed_users=entry.allowed_users,
                )
            ]
        if len(self.answers) >= _ANSWERS_KEPT:
            self.answers.clear()
        self.answers[key] = found
        return found


def render(service: Service) -> tuple[bytes, bytes]:
    """The service's JSON as the API sends it to who may see it, and to who may change it."""
    public, revealed = public_views(service)
    encoded = _encode(public)
    return encoded, encoded if revealed is public else _encode(revealed)


def _encode(view: dict[str, object]) -> bytes:
    # As FastAPI's JSONResponse writes it.
    return json.dumps(view, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _rendered(service: Service) -> _Rendered:
    public, revealed = render(service)
    return _Rendered(
        owner=service.owner,
        visibility=service.visibility,
        allowed_users=frozenset(service.allowed_users),
        public=public,
        revealed=revealed,
    )


class RenderedServices:
    """The last listing of every service, rendered (one per manager process)."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._last: _Listing | None = None
        # One listing is made at a time: lists that arrive meanwhile (the dashboard sends three at once)
        # take the one made rather than each making its own.
        self._making = asyncio.Lock()

    async def visible(self, tx: Transaction, *, principal: Principal) -> list[bytes]:
        """The JSON of each service ``principal`` may see, by name, as of this request or later."""
        last = self._last
        if last is None or not last.current(self._database.services_generation, _now()):
            async with self._making:
                last = await self._current(tx)
        return last.answer(principal)

    async def prepare(self, tx: Transaction) -> None:
        """Make the listing now, so that the first list after a start does not wait for it."""
        async with self._making:
            await self._current(tx)

    async def _current(self, tx: Transaction) -> _Listing:
        # Taken before the registry is read: a change committed meanwhile moves it, so what is read
        # now is checked again by the next list.
        generation, now = self._database.services_generation, _now()
        last = self._last
        if last is not None and last.current(generation, now):  # made while this list waited
            return last
        if last is not None and now - last.checked < SERVICE_CACHE_SECONDS:
            changed = self._database.services_changed_since(last.generation)
            patched = None if changed is None else await self._patched(tx, last, changed, generation)
            if patched is not None:
                self._last = patched
                return patched
        versions = await tx.services.versions()
        if last is not None and last.versions == versions:
            last.generation, last.checked = generation, now
            return last
        self._last = await self._listing(tx, versions, last, generation=generation, now=now)
        return self._last

    @staticmethod
    async def _patched(
        tx: Transaction, last: _Listing, changed: frozenset[str], generation: int
    ) -> _Listing | None:
        """``last`` with the services this process changed since read again, when they were only updated
        (None when one was created or deleted: the order of names is then the registry's to say). What
        other processes changed is checked when ``last`` would have been: its ``checked`` stays."""
        names = sorted(changed)
        versions = await tx.services.versions_of(names)
        fresh = {service.name: _rendered(service) for service in await tx.services.get_many(names)}
        if any((name in last.entries) != (name in fresh) or name not in versions for name in names):
            return None
        current = dict(last.versions)
        if any(current.get(name) != versions[name] for name in names):
            current.update(versions)
            versions_now: Versions = [(name, current[name]) for name, _version in last.versions]
        else:  # changes that did not commit
            versions_now = last.versions
        entries = dict(last.entries)  # replacing values keeps the order
        entries.update(fresh)
        return _Listing(versions=versions_now, entries=entries, generation=generation, checked=last.checked)

    @staticmethod
    async def _listing(
        tx: Transaction, versions: Versions, last: _Listing | None, *, generation: int, now: float
    ) -> _Listing:
        """The listing of ``versions``: what ``last`` rendered of the versions it has too, the rest
        rendered now. ``last`` is never changed (a list may be answering from it)."""
        kept: dict[str, _Rendered] = last.entries if last is not None else {}
        moved = {name for name, _version in set(versions).difference(last.versions if last else ())}
        fresh: dict[str, _Rendered] = {}
        stale = sorted(moved)
        for start in range(0, len(stale), _RENDERED_AT_ONCE):
            if start:
                await asyncio.sleep(0)  # let the loop answer others between batches
            for service in await tx.services.get_many(stale[start : start + _RENDERED_AT_ONCE]):
                fresh[service.name] = _rendered(service)
        if len(versions) == len(kept) and moved <= kept.keys():
            # The same services (the usual change: one updated): what moved replaced in a copy.
            entries = dict(kept)
            for name in moved:
                if name in fresh:
                    entries[name] = fresh[name]
                else:  # deleted since ``versions`` were read
                    del entries[name]
            return _Listing(versions=versions, entries=entries, generation=generation, checked=now)
        entries = {}
        for name, _version in versions:
            # A service changed since ``versions`` were read comes fresh in its newer version; one
            # deleted since, not at all.
            entry = fresh.get(name) or (kept.get(name) if name not in moved else None)
            if entry is not None:
                entries[name] = entry
        return _Listing(versions=versions, entries=entries, generation=generation, checked=now)


def _now() -> float:
    return asyncio.get_running_loop().time()
