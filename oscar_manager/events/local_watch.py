"""Files dropped into local buckets become events (inotify), and files missed while down are found again.

The whole buckets tree is watched, so creating a service needs no watch bookkeeping: each batch of file
events is routed against the services' inputs as they are at that moment. Only finished files count:
``IN_CLOSE_WRITE`` (written in place) and ``IN_MOVED_TO`` (renamed in, as our own uploads do), never a
half-written file.

Watches follow the folders on disk, not the paths they once had: a folder removed (a bucket purged with
its service) is forgotten when the kernel drops its watch, a folder made again at the same path gets a
watch of its own, and every change to services walks the tree again (``wake``), adding what is missing.
What is watched is what the store calls objects: every folder inside a bucket, dot folders included
(``in/.x/file`` is a valid key), and no top-level folder that is not a bucket (the store's ``.staging``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from asyncinotify import Event, Inotify, Mask, Watch

from oscar_manager.events.reconcile import Deliver, Enqueue, Routes, object_event, reconcile
from oscar_manager.storage.base import InvalidKey
from oscar_manager.storage.keys import validate_bucket, validate_key
from oscar_manager.storage.local import LocalObjectStore

log = logging.getLogger(__name__)

_DIRECTORY_MASK = Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.CREATE | Mask.ONLYDIR | Mask.DONT_FOLLOW
PRINCIPAL = "local"


class LocalBucketWatcher:
    def __init__(
        self, store: LocalObjectStore, *, routes: Routes, enqueue: Enqueue, deliver: Deliver
    ) -> None:
        self._store = store
        self._root = store.root
        self._routes = routes
        self._enqueue = enqueue
        self._deliver = deliver
        self._inotify: Inotify | None = None
        self._watched: dict[Path, Watch] = {}
        # Watches change in threads (walking a tree blocks): one change at a time.
        self._watching = asyncio.Lock()
        self._rewalk = asyncio.Event()
        self.ready = asyncio.Event()

    def wake(self) -> None:
        """Services changed: walk the buckets tree again for folders that have no watch."""
        self._rewalk.set()

    @property
    def watch_count(self) -> int:
        return len(self._watched)

    async def reconcile(self) -> int:
        """Enqueue objects under service inputs that arrived after the service and have no event yet."""
        return await reconcile(self._store, await self._routes(), self._enqueue, principal=PRINCIPAL)

    async def run(self, up: Callable[[], None] = lambda: None) -> None:
        """Watch the tree until a failure, which the supervisor answers by calling this again: every run
        starts from a fresh inotify instance and an empty watch list, so nothing of a failed run (its
        watches died with its instance) is taken for a live watch."""
        self._root.mkdir(parents=True, exist_ok=True)
        # sync_timeout=0: draining already-read events must never block the event loop.
        with Inotify(sync_timeout=0) as inotify:
            self._inotify = inotify
            self._watched.clear()
            try:
                await asyncio.to_thread(self._watch_tree, self._root)
                self.ready.set()
                up()
                # Watches are in place: whatever arrived before (or while we were down) is found now.
                await self._catch_up()
                # Either failing ends both, and the supervisor starts over with a new inotify.
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._follow_services())
                    async for event in inotify:
                        await self._handle([event, *self._drain(inotify)])
            finally:
                self._inotify = None
                self._watched.clear()

    async def _follow_services(self) -> None:
        while True:
            await self._rewalk.wait()
            self._rewalk.clear()
            async with self._watching:
                await asyncio.to_thread(self._watch_tree, self._root)

    async def _catch_up(self) -> None:
        """The reconcile after (re)starting. Its failure (the registry cannot write: a full disk) must not
        stop the watching that just began: the periodic reconcile finds the same objects later."""
        try:
            found = await self.reconcile()
        except Exception as exc:
            log.warning(
                "reconciling the local input folders failed (the periodic reconcile retries): %s", exc
            )
            return
        if found:
            log.info("reconciled %d object(s) in local input folders", found)

    def _drain(self, inotify: Inotify) -> list[Event]:
        """Events already read and waiting: handled as one batch so routes are loaded once per batch."""
        batch: list[Event] = []
        while (event := inotify.sync_get()) is not None:
            batch.append(event)
        return batch

    def _watch_tree(self, top: Path) -> None:
        pending = [top]
        while pending:
            directory = pending.pop()
            # Watch first, then list: a folder created in between is then either listed here or reported
            # by the new watch, never missed.
            self._add_watch(directory)
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            pending.extend(
                Path(entry.path)
                for entry in entries
                if entry.is_dir(follow_symlinks=False) and self._holds_objects(Path(entry.path))
            )

    def _holds_objects(self, directory: Path) -> bool:
        """A bucket, or any folder inside one: not the store's own top-level folders (``.staging``)."""
        if directory.parent != self._root:
            return True
        try:
            validate_bucket(directory.name)
        except InvalidKey:
            return False
        return True

    def _add_watch(self, directory: Path) -> None:
        # Always asked of the kernel, never assumed from the path: the folder there may be a new one (the
        # old one's watch is gone). The same folder again gets its own watch back, its path brought up to
        # date.
        if self._inotify is None:
            return
        try:
            watch = self._inotify.add_watch(directory, _DIRECTORY_MASK)
        except OSError as exc:  # vanished meanwhile, or not a directory any more
            log.debug("cannot watch %s: %s", directory, exc)
            return
        watch.path = directory
        self._watched[directory] = watch

    def _forget(self, watch: Watch) -> None:
        """The kernel dropped ``watch`` (its folder was removed): its path is free for a new folder."""
        if self._watched.get(watch.path) is watch:
            del self._watched[watch.path]

    async def _handle(self, events: list[Event]) -> None:
        async with self._watching:
            files = await self._files_in(events)
        if files:
            await self._report(files)

    async def _files_in(self, events: list[Event]) -> list[Path]:
        files: list[Path] = []
        for event in events:
            if event.mask & Mask.Q_OVERFLOW:
                log.warning("inotify queue overflowed: watching the tree again and reconciling")
                await asyncio.to_thread(self._watch_tree, self._root)
                await self.reconcile()
                continue
            if event.mask & Mask.IGNORED:
                if event.watch is not None:
                    self._forget(event.watch)
                continue
            if event.path is None:
                continue
            if event.mask & Mask.ISDIR:
                if event.mask & (Mask.CREATE | Mask.MOVED_TO) and self._holds_objects(event.path):
                    # Files may already be inside a folder moved in or created before its watch existed.
                    await asyncio.to_thread(self._watch_tree, event.path)
                    files.extend(await asyncio.to_thread(_files_under, event.path))
                continue
            if event.mask & (Mask.CLOSE_WRITE | Mask.MOVED_TO):
                files.append(event.path)
        return files

    async def _report(self, files: list[Path]) -> None:
        """The finished files as object events, in one batch: the intake routes them to the services
        whose input folders hold them (and counts the others as ignored)."""
        events = []
        for path in files:
            located = self._locate(path)
            if located is None:
                continue
            info = await self._store.stat(*located)
            if info is not None:  # else gone again, or a symlink
                events.append(object_event(info, principal=PRINCIPAL))
        if events:
            await self._deliver(events)

    def _locate(self, path: Path) -> tuple[str, str] | None:
        try:
            relative = path.relative_to(self._root)
        except ValueError:
            return None
        parts = relative.parts
        if len(parts) < 2 or parts[0].startswith("."):
            return None
        bucket, key = parts[0], "/".join(parts[1:])
        try:
            validate_bucket(bucket)
            validate_key(key)
        except InvalidKey:
            log.warning("ignoring %s: not a valid bucket/key", path)
            return None
        return bucket, key


def _files_under(directory: Path) -> list[Path]:
    found: list[Path] = []
    for folder, _subdirs, files in os.walk(directory, followlinks=False):
        found.extend(Path(folder) / name for name in files)
    return found
