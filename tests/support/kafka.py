"""A real Kafka broker for the tests: one node in KRaft mode (broker and controller in one JVM), from the jars
``scripts/build-kafka`` gathers from Maven Central into ``.cache/bin/kafka-<version>/libs``.

Storage is formatted with a random cluster id in a throwaway folder; the broker listens on free loopback
ports and is ready once it answers a metadata request (about 3-5 s on 2 cores). ``halt``/``resume`` stop it
and start it again on the same ports with the same data (a broker outage).
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.components import free_port, unavailable

ROOT = Path(__file__).resolve().parents[2]
KAFKA_VERSION = "4.1.1"
KAFKA_HOME = ROOT / ".cache" / "bin" / f"kafka-{KAFKA_VERSION}"
BUILD_SCRIPT = ROOT / "scripts" / "build-kafka"


def locate_kafka() -> Path:
    """The folder of the broker's jars; ``RuntimeError`` with the reason when there is none (the tests do
    not fetch it: ``scripts/setup --test`` does)."""
    if not (KAFKA_HOME / "complete").is_file():
        raise RuntimeError(f"{KAFKA_HOME} is missing (run scripts/build-kafka)")
    if shutil.which("java") is None:
        raise RuntimeError("java is not installed (the Kafka broker runs on Java 17)")
    return KAFKA_HOME


def _properties(datadir: Path, port: int, controller_port: int) -> str:
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={datadir / 'log'}",
            "num.partitions=2",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true",
            "",
        ]
    )


@dataclass
class KafkaServer:
    home: Path
    datadir: Path
    port: int
    controller_port: int
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.datadir / "broker.log"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _java(self, main: str, *args: str, heap: str) -> list[str]:
        return ["java", f"-Xmx{heap}", "-XX:+UseSerialGC", "-cp", str(self.home / "libs" / "*"), main, *args]

    @classmethod
    async def start(cls, home: Path, *, within: float = 60) -> KafkaServer:
        datadir = Path(tempfile.mkdtemp(prefix="oscar-kafka-"))
        port = free_port()
        controller_port = free_port()
        while controller_port == port:
            controller_port = free_port()
        server = cls(home=home, datadir=datadir, port=port, controller_port=controller_port)
        config = datadir / "server.properties"
        config.write_text(_properties(datadir, port, controller_port))
        # Kafka's cluster ids: 16 random bytes, URL-safe base64 without padding.
        cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        await asyncio.to_thread(
            subprocess.run,
            server._java("kafka.tools.StorageTool", "format", "-t", cluster, "-c", str(config), heap="128m"),
            check=True,
            capture_output=True,
            timeout=120,
        )
        try:
            await server.resume(within=within)
        except BaseException:
            server.stop()
            raise
        return server

    async def resume(self, *, within: float = 60) -> None:
        """Start (again) on the same ports and data; returns once the broker answers."""
        self.process = await asyncio.to_thread(self._spawn)
        await self.wait_ready(within)

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                self._java("kafka.Kafka", str(self.datadir / "server.properties"), heap="384m"),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def wait_ready(self, within: float) -> None:
        from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

        deadline = time.monotonic() + within
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the Kafka broker exited ({self.process.returncode}):\n{self.log_tail()}")
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000)
            try:
                await admin.start()
                await admin.list_topics()
                return
            except Exception as exc:
                last = exc
            finally:
                await admin.close()
            await asyncio.sleep(0.3)
        raise RuntimeError(f"the Kafka broker did not answer within {within} s ({last}):\n{self.log_tail()}")

    def halt(self) -> None:
        """The broker goes away (SIGKILL: connections cut), its data kept for :meth:`resume`."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        try:
            if self.process is not None and self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait(timeout=10)
        finally:
            shutil.rmtree(self.datadir, ignore_errors=True)


def kafka_home() -> Path:
    """The broker's jars, or the test is skipped (a failure with ``OSCAR_TEST_STRICT=1``)."""
    try:
        return locate_kafka()
    except (RuntimeError, OSError) as exc:
        unavailable(f"no Kafka broker: {exc}")


async def start_kafka(home: Path) -> KafkaServer:
    """A broker, or the test is skipped with why (a failure under ``OSCAR_TEST_STRICT=1``). Tried twice, on
    new ports and data: once in a CI run the storage format step failed at once and never again after."""
    failures: list[str] = []
    for _attempt in range(2):
        try:
            return await KafkaServer.start(home)
        except subprocess.CalledProcessError as exc:
            output = (exc.stdout or b"") + (exc.stderr or b"")
            failures.append(f"{exc}: {output.decode(errors='replace')[-2000:]}")
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            failures.append(str(exc))
    unavailable("the Kafka broker did not start: " + " / then: ".join(failures))


async def create_topic(bootstrap: str, topic: str, *, partitions: int = 2) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, *values: bytes, partition: int | None = None) -> None:
    from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, partition=partition)
    finally:
        await producer.stop()


async def committed(bootstrap: str, group: str, topic: str, partitions: int = 2) -> dict[int, int | None]:
    """The group's committed offset of each partition of ``topic`` (None: nothing committed)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await consumer.stop()
