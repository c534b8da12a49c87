"""Who uploaded an object: the OIDC user whose own MinIO user wrote it (issue 16).

MinIO names the writer's access key in each event record (``ObjectEvent.uploader``), and the registry
knows which user each access key of the users' own MinIO users belongs to (``operations.identities``).
The jobs an upload starts are recorded as that user's, so a user allowed on a service sees the jobs their
own uploads started (``operations.jobs``). The root's key, a key the manager did not make (users or
service accounts made by MinIO's administrator) and a record naming none stand for no user: such jobs
have no owner, as before, and only the service's owner (and the admin) see them.
"""

from __future__ import annotations

from collections.abc import Iterable

from oscar_manager.registry import Database

# Keys looked up in one statement: far below what SQLite and PostgreSQL take as parameters.
LOOKUP_CHUNK = 500
# Users remembered; past this the memory starts again (a lookup is one indexed read).
CACHE_SIZE = 10_000


class Uploaders:
    """Access key -> uid, remembered once found: a user's access key never changes nor goes to another
    user (``storage_identities`` rows are only ever added, the first one wins). Keys of no user are not
    remembered, so none is taken for no one's once it is a user's."""

    def __init__(self, database: Database, *, root_access_key: str) -> None:
        self._database = database
        self._root_access_key = root_access_key
        self._known: dict[str, str] = {}

    async def owners(self, access_keys: Iterable[str]) -> dict[str, str]:
        """The uid behind each of ``access_keys`` that is a user's own; the others are left out."""
        wanted = {key for key in access_keys if key and key != self._root_access_key}
        found = {key: self._known[key] for key in wanted if key in self._known}
        missing = sorted(wanted - set(found))
        if missing:
            async with self._database.reading() as tx:
                for start in range(0, len(missing), LOOKUP_CHUNK):
                    found.update(
                        await tx.identities.uids_by_access_key(missing[start : start + LOOKUP_CHUNK])
                    )
            self._remember({key: found[key] for key in missing if key in found})
        return found

    def _remember(self, new: dict[str, str]) -> None:
        if len(self._known) + len(new) > CACHE_SIZE:
            self._known.clear()
        self._known.update(new)
