"""Everything the running manager owns, built from the settings, started and stopped in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from oscar_manager.backends.base import Backend, WarmScaling
from oscar_manager.backends.local import LocalBackend
from oscar_manager.connections import open_kubernetes, open_minio
from oscar_manager.event_sources import EventSources
from oscar_manager.local_runtime import fast_child_watcher, local_backend
from oscar_manager.operations import Database, exposed, readiness, service_buckets
from oscar_manager.operations import services as service_operations
from oscar_manager.operations.bucket_access import MinioBucketPolicies
from oscar_manager.operations.buckets import BucketPolicies
from oscar_manager.operations.dispatch import Dispatcher, recover
from oscar_manager.operations.identities import StorageIdentities
from oscar_manager.operations.intake import Intake
from oscar_manager.operations.jobs import DatabaseJobReporter
from oscar_manager.operations.ratelimit import RateLimiter
from oscar_manager.operations.service_listing import RenderedServices
from oscar_manager.operations.uploaders import Uploaders
from oscar_manager.registry.leadership import Leadership
from oscar_manager.settings import PRESIGN_KEY_BYTES, BackendKind, Settings, kept_secret
from oscar_manager.storage.base import ObjectStore
from oscar_manager.storage.egress import EgressPolicy
from oscar_manager.storage.leftovers import sweep_all, sweep_older
from oscar_manager.storage.local import STAGING, LocalObjectStore
from oscar_manager.storage.presign import PresignSigner
from oscar_manager.storage.providers import Stores
from oscar_manager.waiting import wait_or_timeout
from oscar_manager.workers.base import LoopWorker, RetryingTask, SupervisedTask
from oscar_manager.workers.leader import LeaderTask, LeaderWork

if TYPE_CHECKING:  # the adapters are imported by ``connections`` only when the settings use them
    from oscar_manager.storage.minio import MinioExtras
    from oscar_manager.storage.minio_users import MinioUsers

log = logging.getLogger(__name__)

# How often MinIO's bucket rules left by a change that did not commit are looked for (it is woken at
# once; this bounds the wait after a failed attempt, with backoff).
BUCKET_RULES_REPAIR_INTERVAL = 10.0


def _presign_secret(settings: Settings) -> bytes:
    """OSCAR_PRESIGN_KEY (shared by replicas), else kept in the data directory, so URLs handed out stay
    valid across a restart until they expire."""
    if settings.oscar_presign_key:
        return bytes.fromhex(settings.oscar_presign_key)
    return bytes.fromhex(kept_secret(settings.presign_key_file, lambda: secrets.token_hex(PRESIGN_KEY_BYTES)))


def _webhook_token(settings: Settings) -> str:
    if settings.oscar_minio_webhook_token:
        return settings.oscar_minio_webhook_token
    return kept_secret(settings.webhook_token_file, lambda: secrets.token_hex(32))


def replica_name() -> str:
    """This process among the managers sharing a database: host, pid and a random part (a pid may come
    again on another start, in a container always)."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(4)}"


class Runtime:
    """Open with :meth:`open`, which connects the storage first (MinIO when ``MINIO_ENDPOINT`` is set)."""

    def __init__(
        self,
        settings: Settings,
        *,
        default_store: ObjectStore,
        minio: MinioExtras | None,
        backend: Backend | None = None,
        minio_users: MinioUsers | None = None,
    ) -> None:
        self.settings = settings
        self.database = Database(settings.database_url)
        self.rendered_services = RenderedServices(self.database)
        self.stores = Stores(
            default_store,
            timeout=settings.oscar_provider_timeout,
            egress=EgressPolicy.from_settings(
                settings.oscar_provider_allowed_networks, listen_host=settings.oscar_host
            ),
        )
        self.presigner = PresignSigner(_presign_secret(settings))
        self.backend = backend if backend is not None else local_backend(settings, self.stores)
        self.replica = replica_name()
        self.dispatcher = Dispatcher(
            self.database,
            self.backend,
            max_attempts=settings.oscar_dispatch_max_attempts,
            limiter=RateLimiter(settings.oscar_kubernetes_rate)
            if settings.oscar_backend == BackendKind.KUBERNETES
            else None,
            replica=self.replica,
            lease=settings.oscar_claim_lease,
        )
        self.dispatch_loop = LoopWorker(
            "dispatcher", self.dispatcher.dispatch_round, interval=settings.oscar_dispatch_interval
        )
        self.dispatcher.wake = self.dispatch_loop.wake
        # Jobs of an upload are its uploader's when that is a user's own MinIO user (issue 16).
        uploaders = (
            Uploaders(self.database, root_access_key=settings.minio_access_key)
            if minio_users is not None
            else None
        )
        self.intake = Intake(self.database, dispatch=self.dispatcher.claim_after_writes, uploaders=uploaders)
        self.webhook_token = _webhook_token(settings)
        self._minio = minio
        # OIDC users' own MinIO users (issue 16): only with OIDC on and MinIO as ``minio.default``.
        self.identities: StorageIdentities | None = None
        if minio_users is not None:
            from oscar_manager.auth.sealing import Sealer  # cryptography: only for users' identities

            self.identities = StorageIdentities(
                self.database,
                minio_users,
                Sealer.from_settings(settings.oscar_credentials_key, settings.credentials_key_file),
                root_access_key=settings.minio_access_key,
                check_interval=settings.oscar_minio_user_check_interval,
            )
        # What makes MinIO itself enforce the bucket records (issue 16); None on the local store.
        self.bucket_policies: BucketPolicies | None = None
        # Every replica's own work; and the work one of them does, the leader (``_leader_tasks``).
        self._tasks: list[SupervisedTask | LoopWorker | RetryingTask] = []
        if not self.database.alone:
            # Alone on its database (SQLite), no other replica could take a lapsed claim: nothing to renew.
            self._tasks.append(
                LoopWorker(
                    "claim leases", self.dispatcher.keep_leases, interval=settings.oscar_claim_lease / 3
                )
            )
        self._leader_tasks: list[LeaderTask] = []
        # The first list of services renders every one (seconds for 10,000): done while nobody waits.
        self._tasks.append(RetryingTask("services listing at start-up", self._render_services))
        # Exposed services' instances, made again at start-up: by each replica for the instances that
        # live in its own process (local), once by the leader for those that outlive it (Kubernetes,
        # where it repairs what went missing).
        self.exposing = RetryingTask("exposed services at start-up", self._expose_services)
        (self._leader_tasks if self.backend.durable_submissions else self._tasks).append(self.exposing)
        if settings.oscar_image_prepull and isinstance(self.backend, LocalBackend):
            self._tasks.append(RetryingTask("image pre-pull", self._prepull_images))
        if self.backend.follows_jobs:
            self._leader_tasks.append(SupervisedTask("job watcher", self.backend.follow_jobs))
        if isinstance(self.backend, WarmScaling):  # warm pods scale down on what they say: one replica's work
            self._leader_tasks.append(
                LoopWorker(
                    "warm pods scale-down",
                    self.backend.scale_down_warm_pods,
                    interval=self.backend.warm_scale_interval,
                )
            )
        if minio_users is not None and self.identities is not None:
            policies = MinioBucketPolicies(self.database, minio_users, self.identities)
            self.identities.rules = policies
            repair = LoopWorker("bucket rules repair", policies.repair, interval=BUCKET_RULES_REPAIR_INTERVAL)
            policies.wake_repair = repair.wake
            # Retried while MinIO's admin API cannot be reached (the manager serves meanwhile).
            self._leader_tasks.append(
                RetryingTask("MinIO bucket rules from the registry", policies.reconcile)
            )
            self._tasks.append(repair)
            self.bucket_policies = policies
        self.sources = EventSources(
            settings,
            database=self.database,
            stores=self.stores,
            intake=self.intake,
            minio=minio,
            webhook_token=self.webhook_token,
            leading=lambda: self.leader.leading,
        )
        self._tasks += self.sources.tasks
        self._leader_tasks += self.sources.leader_tasks
        self.leader = LeaderWork(
            Leadership(settings.database_url),
            self._leader_tasks,
            interval=settings.oscar_leader_interval,
            on_lead=self._take_up_leadership,
        )

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, settings: Settings) -> AsyncIterator[Runtime]:
        async with contextlib.AsyncExitStack() as stack:
            minio: MinioExtras | None = None
            minio_users: MinioUsers | None = None
            default_store: ObjectStore
            if settings.uses_minio:
                connection = await open_minio(stack, settings)
                default_store, minio, minio_users = connection.store, connection.extras, connection.users
            else:
                default_store = LocalObjectStore(settings.buckets_dir)
            backend: Backend | None = None
            if settings.oscar_backend == BackendKind.KUBERNETES:
                backend = await open_kubernetes(stack, settings)
            runtime = cls(
                settings, default_store=default_store, minio=minio, backend=backend, minio_users=minio_users
            )
            await runtime.start()
            try:
                yield runtime
            finally:
                await runtime.stop()

    def event_status(self) -> dict[str, Any]:
        """How new objects reach the manager right now (``EventSources.status``), and which replica this
        is: the sources but webhook deliveries run on the leader only (another replica, when false)."""
        return {**self.sources.status(), "leader": self.leader.leading, "replica": self.replica}

    def source_checks(self) -> dict[str, readiness.Check]:
        return self.sources.checks()

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        return readiness.answer(
            sources=self.source_checks(),
            database=await readiness.database(self.database),
            storage=await readiness.storage(self.stores.default),
        )

    def services_changed(self) -> None:
        """Called once a change to services is committed: follow the input buckets as they are now."""
        self.sources.services_changed()

    async def _render_services(self) -> None:
        async with self.database.reading() as tx:
            await self.rendered_services.prepare(tx)

    async def _expose_services(self) -> None:
        if self.backend.exposed is None:
            return
        failed = await exposed.expose_all(self.database, self.backend)
        if failed:
            log.error("%d exposed service(s) could not be started; see above", failed)

    async def _prepull_images(self) -> None:
        assert isinstance(self.backend, LocalBackend)
        async with self.database.reading() as tx:
            services = await service_operations.every_service(tx)
        failed = await self.backend.prepull(services)
        log.info("pre-pulled the images of %d service(s), %d failed", len(services), failed)

    async def _take_up_leadership(self) -> None:
        """Once per leadership, before the leader's tasks start."""
        async with self.database.transaction() as tx:
            adopted = await service_buckets.adopt(tx)
        if adopted:
            log.info("recorded the owners of %d bucket(s) of existing services", len(adopted))

    async def start(self) -> None:
        fast_child_watcher()
        await recover(self.database, jobs_die_with_manager=not self.backend.durable_submissions)
        await asyncio.to_thread(self._sweep_leftovers)
        reporter = DatabaseJobReporter(
            self.database,
            complete_events_on_finish=not self.backend.durable_submissions,
            wake=self.dispatcher.slot_freed,
        )
        await self.backend.start(reporter)
        for task in self._tasks:
            task.start()
        # Alone on the database (SQLite), or no replica leads: this one leads before it serves.
        await self.leader.try_once()
        self.leader.start()
        watcher = self.sources.watcher
        if watcher is not None and self.leader.leading:
            await wait_or_timeout(watcher.ready, 30)
            if not watcher.ready.is_set():
                log.error("the local bucket watcher did not start within 30 s")
        if self.settings.oscar_dispatch:
            self.dispatcher.claiming = True
            self.dispatch_loop.start()
        else:
            log.warning("OSCAR_DISPATCH is off: events are recorded but no job runs")

    def _sweep_leftovers(self) -> None:
        """Before any job runs or upload arrives: what a killed process left is nobody's any more."""
        removed = sweep_older(self.settings.s3_uploads_dir)
        if isinstance(self.backend, LocalBackend):
            removed += sweep_all(self.backend.work_root)
        if isinstance(self.stores.default, LocalObjectStore):
            removed += sweep_all(self.stores.default.root / STAGING)
        if removed:
            log.info("removed %d folder(s) and file(s) left by a previous run", removed)

    async def stop(self) -> None:
        """Claim nothing more, let another replica lead, stop the jobs of this process and hand their
        events back to the queue (another replica runs them at once, or this one when it starts again)."""
        self.dispatcher.claiming = False
        await self.dispatch_loop.stop()
        await self.dispatcher.stop()
        await self.leader.stop()
        for task in reversed(self._tasks):
            await task.stop()
        await self.backend.stop()
        try:
            handed = await self.dispatcher.hand_back()
        except Exception:
            log.exception("could not hand this manager's claims back: they go back once their lease lapses")
        else:
            if handed:
                log.info("handed %d claimed event(s) back to the queue", handed)
        await self.stores.close()
        await self.database.dispose()
