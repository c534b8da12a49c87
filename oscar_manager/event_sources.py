"""The ways new objects and messages reach the intake, built from the settings: the local folder watcher,
MinIO's listen streams and webhook or Kafka target, Amazon S3 queues, services' Kafka topics, and the
reconciler that backs them all up; with what ``/system/info`` and readiness say of them.

Most run on the leader only (``leader_tasks``); the queues of S3 inputs on every replica (``tasks``: SQS
hands each message to one of them). The runtime starts and stops both lists with its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from oscar_manager.connections import S3QueueAccess, s3_queue_consumer
from oscar_manager.domain.events import InputRoute, ObjectEvent
from oscar_manager.domain.kafka_inputs import KAFKA, KafkaConnection
from oscar_manager.domain.service import Service
from oscar_manager.events.kafka import KafkaBrokers, KafkaSource
from oscar_manager.events.local_watch import LocalBucketWatcher
from oscar_manager.events.minio_kafka import MinioKafkaSource
from oscar_manager.events.minio_listen import MinioListener
from oscar_manager.events.minio_webhook import WEBHOOK_PATH, WebhookRules, ensure_target
from oscar_manager.events.reconcile import reconcile
from oscar_manager.operations import Database, readiness
from oscar_manager.operations.input_routes import InputRoutes
from oscar_manager.operations.intake import Intake
from oscar_manager.settings import Settings
from oscar_manager.storage.local import LocalObjectStore
from oscar_manager.storage.providers import Stores
from oscar_manager.workers.base import LoopWorker, RetryingTask, SupervisedTask
from oscar_manager.workers.leader import LeaderTask

if TYPE_CHECKING:  # the adapters are imported by ``connections`` only when the settings use them
    from oscar_manager.storage.minio import MinioExtras

log = logging.getLogger(__name__)

Task = SupervisedTask | LoopWorker | RetryingTask


def task_check(task: Task) -> readiness.Check:
    return readiness.Check(ok=task.state == "running", state=task.state, reason=task.last_error)


def _failing(check: readiness.Check, errors: dict[str, str]) -> readiness.Check:
    if not check.ok or not errors:
        return check
    reason = "; ".join(f"{key}: {error}" for key, error in sorted(errors.items()))
    return readiness.Check(ok=False, state="failing", reason=reason)


def _minio_kafka_connection(settings: Settings) -> KafkaConnection:
    servers = tuple(s.strip() for s in settings.oscar_minio_kafka_brokers.split(",") if s.strip())
    if not servers:
        raise ValueError("OSCAR_MINIO_NOTIFY=kafka needs OSCAR_MINIO_KAFKA_BROKERS (host:port,...)")
    return KafkaConnection(provider="OSCAR_MINIO_KAFKA_BROKERS", bootstrap_servers=servers)


class EventSources:
    def __init__(
        self,
        settings: Settings,
        *,
        database: Database,
        stores: Stores,
        intake: Intake,
        minio: MinioExtras | None,
        webhook_token: str,
        leading: Callable[[], bool],
    ) -> None:
        self._settings = settings
        self._stores = stores
        self._intake = intake
        self._minio = minio
        self._webhook_token = webhook_token
        self._leading = leading
        self._database = database
        self.input_routes = InputRoutes(database)
        self.tasks: list[Task] = []
        self.leader_tasks: list[LeaderTask] = []
        default_store = stores.default
        self.watcher: LocalBucketWatcher | None = None
        self.listener: MinioListener | None = None
        self.webhook_rules: WebhookRules | None = None
        self._watch_task: SupervisedTask | None = None
        self._listen_task: SupervisedTask | None = None
        self._webhook_task: RetryingTask | None = None
        if isinstance(default_store, LocalObjectStore):
            self.watcher = LocalBucketWatcher(
                default_store, routes=self.routes, enqueue=self._enqueue, deliver=intake.storage_events
            )
            self._watch_task = SupervisedTask("local-bucket-watcher", self.watcher.run)
            self.leader_tasks.append(self._watch_task)
        if minio is not None and settings.oscar_minio_listen:
            self.listener = MinioListener(
                minio, default_store, routes=self.routes, enqueue=self._enqueue, deliver=intake.storage_events
            )
            self._listen_task = SupervisedTask("minio-listener", self.listener.run)
            self.leader_tasks.append(self._listen_task)
        if minio is not None and settings.oscar_minio_webhook_url:
            self.webhook_rules = WebhookRules(
                minio, default_store, target=settings.oscar_minio_webhook_target
            )
            self._webhook_task = RetryingTask("MinIO webhook setup", self._prepare_webhook)
            self.leader_tasks.append(self._webhook_task)
        # MinIO's Kafka target instead of the webhook: its rules take the webhook's place.
        self.minio_kafka: MinioKafkaSource | None = None
        self._minio_kafka_task: SupervisedTask | None = None
        self._minio_kafka_setup: RetryingTask | None = None
        if minio is not None and settings.oscar_minio_notify == "kafka":
            if self.webhook_rules is not None:
                raise ValueError(
                    "OSCAR_MINIO_NOTIFY=kafka and OSCAR_MINIO_WEBHOOK_URL are both set: choose one delivery"
                )
            self.webhook_rules = WebhookRules(
                minio, default_store, target=settings.oscar_minio_kafka_target, kind="kafka"
            )
            self.minio_kafka = MinioKafkaSource(
                _minio_kafka_connection(settings),
                topic=settings.oscar_minio_kafka_topic,
                group_id=settings.oscar_minio_kafka_group,
                deliver=intake.storage_events,
            )
            self._minio_kafka_setup = RetryingTask("MinIO Kafka target setup", self._prepare_minio_kafka)
            self._minio_kafka_task = SupervisedTask("minio-kafka", self.minio_kafka.run)
            self.leader_tasks += [self._minio_kafka_setup, self._minio_kafka_task]
        # Services' Kafka topics, read by the leader (aiokafka is loaded once a service has one).
        self.kafka_brokers = KafkaBrokers(stores.egress, timeout=settings.oscar_provider_timeout)
        self.kafka = KafkaSource(
            services=self._kafka_services,
            load=self._service,
            record=lambda service, messages: intake.messages(service=service, messages=messages),
        )
        self._kafka_task = SupervisedTask("kafka", self.kafka.run)
        self.leader_tasks.append(self._kafka_task)
        # Amazon S3 inputs through SQS: on every replica (SQS hands each message to one of them).
        self.s3_queue_access = S3QueueAccess(stores, timeout=settings.oscar_provider_timeout)
        self.s3_queues = s3_queue_consumer(
            self.s3_queue_access, intake, inputs=self.input_routes, interval=10.0
        )
        self._s3_queues_task = SupervisedTask("s3-queues", self.s3_queues.run)
        self.tasks.append(self._s3_queues_task)
        # On every store: whatever happened to the watcher or the streams, a missed object is found
        # within the interval.
        self._reconciler: LoopWorker | None = None
        if settings.oscar_reconcile_interval > 0:
            self._reconciler = LoopWorker(
                "reconciler", self._reconcile_all, interval=settings.oscar_reconcile_interval
            )
            self.leader_tasks.append(self._reconciler)

    async def routes(self) -> list[InputRoute]:
        return await self.input_routes.current()

    async def _kafka_services(self) -> list[tuple[Service, datetime]]:
        routes, services = await self.input_routes.on_provider_type(KAFKA)
        since = {route.service: route.since for route in routes}
        return [(service, since[service.name]) for service in services]

    async def _service(self, name: str) -> Service | None:
        async with self._database.reading() as tx:
            return await tx.services.get(name)

    async def _enqueue(self, service: str, event: ObjectEvent) -> None:
        await self._intake.object_event(service=service, event=event)

    async def _reconcile_all(self) -> int:
        found = await reconcile(
            self._stores.default, await self.routes(), self._enqueue, principal="reconciler"
        )
        found += await self.s3_queues.reconcile()
        if found:
            log.debug("periodic reconcile offered %d object(s) to the intake", found)
        return 0  # never "more to do at once": the next round comes after the interval

    def status(self) -> dict[str, Any]:
        """How new objects reach the manager right now: its sources (``webhook-pending`` until MinIO has
        the target), the buckets whose listen streams are connected, and each source's state and last
        error."""
        sources = ["folder-watch"] if self.watcher is not None else []
        sources += ["listen"] if self.listener is not None else []
        sources += ["s3-queues"] if self.s3_queues.consuming else []
        sources += ["kafka"] if self.kafka.connected or self.kafka.errors else []
        if self.webhook_rules is not None:
            delivery = "minio-kafka" if self.minio_kafka is not None else "webhook"
            sources.append(delivery if self.webhook_rules.enabled else f"{delivery}-pending")
        listening = sorted(self.listener.connected) if self.listener is not None else []
        states = {
            name: {"state": check.state, "last_error": check.reason} for name, check in self.checks().items()
        }
        return {"event_sources": sources, "listening": listening, "source_states": states}

    def checks(self) -> dict[str, readiness.Check]:
        """Each event source (and the reconciler that backs them all up): up, or why not. Only the
        leader runs most of them: another replica answers for none of those (its intake of webhook
        deliveries is up)."""
        checks: dict[str, readiness.Check] = {}
        if self.s3_queues.consuming:  # every replica reads the queues
            check = task_check(self._s3_queues_task)
            if check.ok and self.s3_queues.errors:
                reason = "; ".join(f"queue {q}: {e}" for q, e in sorted(self.s3_queues.errors.items()))
                check = readiness.Check(ok=False, state="failing", reason=reason)
            checks["s3-queues"] = check
        if not self._leading():
            return checks
        if self._watch_task is not None:
            checks["folder-watch"] = task_check(self._watch_task)
        if self._listen_task is not None and self.listener is not None:
            check = task_check(self._listen_task)
            down = self.listener.stream_errors
            if check.ok and down:
                reason = "; ".join(f"bucket {bucket}: {error}" for bucket, error in sorted(down.items()))
                check = readiness.Check(ok=False, state="failing", reason=reason)
            checks["listen"] = check
        if self._webhook_task is not None:
            checks["webhook"] = task_check(self._webhook_task)
        if self._minio_kafka_setup is not None:
            checks["minio-kafka-setup"] = task_check(self._minio_kafka_setup)
        if self._minio_kafka_task is not None and self.minio_kafka is not None:
            errors = {"the consumer": self.minio_kafka.error} if self.minio_kafka.error else {}
            checks["minio-kafka"] = _failing(task_check(self._minio_kafka_task), errors)
        if self.kafka.connected or self.kafka.errors or self._kafka_task.failures:
            checks["kafka"] = _failing(task_check(self._kafka_task), self.kafka.errors)
        if self._reconciler is not None:
            checks["reconciler"] = task_check(self._reconciler)
        return checks

    def services_changed(self) -> None:
        """Called once a change to services is committed: follow the input buckets as they are now."""
        if self.listener is not None:
            self.listener.wake()
        if self.watcher is not None:
            self.watcher.wake()
        self.s3_queues.wake()
        self.kafka.wake()

    async def _prepare_webhook(self) -> None:
        """Register the target (MinIO dials its endpoint to validate it, so this runs once the manager
        listens), then the rules of every input bucket. Retried until it works; the listener, if on,
        delivers meanwhile, and the reconciler catches up afterwards."""
        assert self._minio is not None
        assert self.webhook_rules is not None
        await ensure_target(
            self._minio,
            target=self._settings.oscar_minio_webhook_target,
            endpoint=self._settings.oscar_minio_webhook_url.rstrip("/") + WEBHOOK_PATH,
            token=self._webhook_token,
        )
        await self.webhook_rules.enable(await self.routes())
        log.info("MinIO webhook delivery is set up")

    async def _prepare_minio_kafka(self) -> None:
        """MinIO's Kafka target (registered, restarting MinIO once, if it lacks it), then the rules of every
        input bucket for it. Retried until it works; the reconciler catches up afterwards."""
        assert self._minio is not None
        assert self.webhook_rules is not None
        target = self._settings.oscar_minio_kafka_target
        if not await self._minio.webhook_target_exists(target, "kafka"):
            await self._minio.register_kafka_target(
                target,
                brokers=self._settings.oscar_minio_kafka_brokers,
                topic=self._settings.oscar_minio_kafka_topic,
            )
        await self.webhook_rules.enable(await self.routes())
        log.info("MinIO Kafka delivery is set up (topic %s)", self._settings.oscar_minio_kafka_topic)
