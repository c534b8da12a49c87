"""Everything the running manager owns, built from the settings, started and stopped in order."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import pwd
import secrets
import sys
import tempfile
from pathlib import Path

from oscar_manager.backends.local import LocalBackend
from oscar_manager.backends.sandbox import Sandbox
from oscar_manager.domain.events import InputRoute, ObjectEvent
from oscar_manager.events.local_watch import LocalBucketWatcher
from oscar_manager.operations import Database
from oscar_manager.operations.dispatch import Dispatcher, recover
from oscar_manager.operations.intake import Intake
from oscar_manager.operations.jobs import DatabaseJobReporter
from oscar_manager.settings import Settings, kept_secret
from oscar_manager.storage.local import LocalObjectStore
from oscar_manager.storage.presign import PresignSigner
from oscar_manager.storage.providers import Stores
from oscar_manager.workers.base import LoopWorker, SupervisedTask

log = logging.getLogger(__name__)


def _presign_secret(path: Path) -> bytes:
    """Kept in the data directory, so URLs handed out stay valid across a restart until they expire."""
    return bytes.fromhex(kept_secret(path, lambda: secrets.token_hex(32)))


def unprivileged_user() -> tuple[int, int]:
    """Who scripts run as when the manager runs as root: ``nobody``."""
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return 65534, 65534
    return entry.pw_uid, entry.pw_gid


def shared_work_root(settings: Settings) -> Path:
    """Job folders for scripts run as another user: under the system temp dir, which that user can reach
    (the data directory may sit under a private home or temp folder)."""
    digest = hashlib.sha256(str(settings.oscar_data_dir.resolve()).encode()).hexdigest()[:12]
    top = Path(tempfile.gettempdir()) / "oscar-manager"
    root = top / digest
    for folder in (top, root):
        folder.mkdir(exist_ok=True)
        os.chmod(folder, 0o711)  # noqa: S103 - traversable, not listable, by the script user
    return root


def _fast_child_watcher() -> None:
    """Python 3.11 waits for each subprocess with a new thread (about 2 ms a job); a pidfd needs none.
    Python 3.12 and later use pidfds by themselves."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.get_event_loop_policy().set_child_watcher(watcher)


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.database = Database(settings.database_url)
        self.local_store = LocalObjectStore(settings.buckets_dir)
        self.stores = Stores(self.local_store)
        self.presigner = PresignSigner(_presign_secret(settings.oscar_data_dir / "presign-key"))
        run_as = unprivileged_user() if os.geteuid() == 0 else None
        # The data directory (database, admin password, presign key, every bucket) is invisible to scripts.
        self.sandbox = Sandbox(
            require=settings.oscar_require_sandbox, hidden_paths=[settings.oscar_data_dir], run_as=run_as
        )
        self.backend = LocalBackend(
            stores=self.stores,
            sandbox=self.sandbox,
            work_root=settings.work_dir if self.sandbox.runs_as is None else shared_work_root(settings),
            concurrency=settings.oscar_local_concurrency,
            job_timeout=settings.oscar_job_timeout,
        )
        self.dispatcher = Dispatcher(
            self.database, self.backend, max_attempts=settings.oscar_dispatch_max_attempts
        )
        self.dispatch_loop = LoopWorker(
            "dispatcher", self.dispatcher.dispatch_once, interval=settings.oscar_dispatch_interval
        )
        self.intake = Intake(self.database, wake=self.dispatch_loop.wake)
        self.watcher = LocalBucketWatcher(self.local_store, routes=self._routes, enqueue=self._enqueue)
        self.watch_task = SupervisedTask("local-bucket-watcher", self.watcher.run)

    async def _routes(self) -> list[InputRoute]:
        async with self.database.transaction() as tx:
            return await tx.services.input_routes()

    async def _enqueue(self, service: str, event: ObjectEvent) -> None:
        await self.intake.object_event(service=service, event=event)

    async def start(self) -> None:
        _fast_child_watcher()
        await recover(self.database)
        reporter = DatabaseJobReporter(
            self.database,
            complete_events_on_finish=not self.backend.durable_submissions,
            wake=self.dispatch_loop.wake,
        )
        await self.backend.start(reporter)
        self.watch_task.start()
        try:
            await asyncio.wait_for(self.watcher.ready.wait(), timeout=30)
        except TimeoutError:
            log.error("the local bucket watcher did not start within 30 s")
        if self.settings.oscar_dispatch:
            self.dispatch_loop.start()
        else:
            log.warning("OSCAR_DISPATCH is off: events are recorded but no job runs")

    async def stop(self) -> None:
        await self.dispatch_loop.stop()
        await self.watch_task.stop()
        await self.backend.stop()
        await self.database.dispose()
