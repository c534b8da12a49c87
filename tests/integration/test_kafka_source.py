"""Kafka topics as service inputs (issue 19), against a real one-node KRaft broker
(``tests/support/kafka.py``), on SQLite and PostgreSQL: a message runs exactly one job, also when the
manager stops between recording it and committing its offset; a broker outage loses nothing and
readiness says so while it lasts; a poison message is recorded as failed with its reason and the
consumer goes on; a service whose brokers do not answer is refused with a 503 and nothing is written."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from oscar_manager.events import kafka_client
from oscar_manager.registry import Database
from oscar_manager.settings import Settings
from tests.support.app import app_client
from tests.support.components import free_port
from tests.support.factories import make_settings, service_body
from tests.support.jobs import all_jobs, settle, wait_for_jobs
from tests.support.kafka import KafkaServer, committed, create_topic, kafka_home, produce, start_kafka

SCRIPT = 'echo "got: $(cat "$INPUT_FILE_PATH")"\n'


@pytest.fixture
def broker(kafka_broker: KafkaServer) -> KafkaServer:
    return kafka_broker


@pytest.fixture
def kafka_settings(database_url: str, tmp_path: Path) -> Settings:
    # The broker is on loopback, which services' own endpoints may not name unless the operator allows it.
    return make_settings(
        database_url=database_url,
        data_dir=tmp_path / "data",
        oscar_provider_allowed_networks=["127.0.0.0/8"],
    )


def kafka_service(name: str, bootstrap: str, topic: str, **provider: Any) -> dict[str, Any]:
    return service_body(
        name,
        script=SCRIPT,
        input=[{"storage_provider": "kafka.events", "path": topic}],
        storage_providers={"kafka": {"events": {"bootstrap_servers": bootstrap, **provider}}},
    )


async def create(http: httpx.AsyncClient, body: dict[str, Any]) -> None:
    response = await http.post("/system/services", json=body)
    assert response.status_code == 201, response.text


async def new_topic(broker: KafkaServer) -> str:
    topic = f"t-{uuid.uuid4().hex[:10]}"
    await create_topic(broker.bootstrap, topic)
    return topic


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {within} s: {what}")


async def job_logs(http: httpx.AsyncClient, service: str) -> list[str]:
    logs = []
    for job in await all_jobs(http, service):
        response = await http.get(f"/system/logs/{service}/{job}")
        assert response.status_code == 200, response.text
        logs.append(response.text)
    return logs


async def exactly(http: httpx.AsyncClient, service: str, count: int) -> dict[str, dict[str, Any]]:
    await wait_for_jobs(http, service, count=count, within=60)
    await settle(1.5)  # a second delivery would have been consumed and recorded by now
    jobs = await all_jobs(http, service)
    assert len(jobs) == count, jobs
    assert all(job["status"] == "Succeeded" for job in jobs.values()), jobs
    return jobs


async def test_a_message_on_a_topic_runs_exactly_one_job_with_the_value_as_its_event(
    broker: KafkaServer, kafka_settings: Settings
) -> None:
    topic = await new_topic(broker)
    async with app_client(kafka_settings) as http:
        await create(http, kafka_service("consumer", broker.bootstrap, topic))
        await produce(broker.bootstrap, topic, b'{"greeting": "hello"}', partition=1)
        await exactly(http, "consumer", 1)
        [log] = await job_logs(http, "consumer")
        assert 'got: {"greeting": "hello"}' in log, log

        async def offset_committed() -> bool:
            return (await committed(broker.bootstrap, "oscar-consumer", topic)) == {0: None, 1: 1}

        await eventually(offset_committed, "the message's offset is committed in the service's group")
        ready = (await http.get("/health", params={"ready": "1"})).json()
        assert ready["event_sources"]["kafka"]["state"] == "running", ready


async def test_a_manager_stopped_between_recording_and_committing_still_runs_the_message_once(
    broker: KafkaServer, kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first manager records the message but never gets to commit its offset (its commit hangs until
    the manager stops, as a kill at that moment would leave it); the next one is given the message again
    by the group, and the intake's dedup key drops it: still one job."""
    topic = await new_topic(broker)
    commit = kafka_client.Consumer.commit
    commits: list[dict[tuple[str, int], int]] = []

    async def never(self: kafka_client.Consumer, next_offsets: dict[tuple[str, int], int]) -> None:
        commits.append(next_offsets)
        await asyncio.Event().wait()

    monkeypatch.setattr(kafka_client.Consumer, "commit", never)
    async with app_client(kafka_settings) as http:
        await create(http, kafka_service("once", broker.bootstrap, topic))
        await produce(broker.bootstrap, topic, b"aGVsbG8=", partition=0)  # base64 of "hello"
        await exactly(http, "once", 1)
        assert commits == [{(topic, 0): 1}]
    assert await committed(broker.bootstrap, "oscar-once", topic) == {0: None, 1: None}

    monkeypatch.setattr(kafka_client.Consumer, "commit", commit)
    async with app_client(kafka_settings) as http:

        async def offset_committed() -> bool:
            return (await committed(broker.bootstrap, "oscar-once", topic))[0] == 1

        # Committed now means the redelivered message went through the intake again.
        await eventually(offset_committed, "the redelivered message is consumed and committed")
        jobs = await exactly(http, "once", 1)
        [log] = await job_logs(http, "once")
        assert "got: hello" in log, (jobs, log)


async def test_a_poison_message_is_recorded_as_failed_and_the_consumer_moves_on(
    broker: KafkaServer, kafka_settings: Settings
) -> None:
    topic = await new_topic(broker)
    async with app_client(kafka_settings) as http:
        await create(http, kafka_service("poisoned", broker.bootstrap, topic))
        await produce(broker.bootstrap, topic, b"not base64 at all!", b'{"n": 2}', partition=0)
        await exactly(http, "poisoned", 1)
        [log] = await job_logs(http, "poisoned")
        assert 'got: {"n": 2}' in log
    database = Database(kafka_settings.database_url)
    try:
        async with database.reading() as tx:
            failures = await tx.events.failures("poisoned")
    finally:
        await database.dispose()
    [(key, reason)] = failures.items()
    assert key.startswith(f"kafka:poisoned:kafka.events:{topic}/0/0@"), key
    assert "base64" in reason, reason


async def test_brokers_that_do_not_answer_at_create_are_a_503_and_nothing_is_written(
    kafka_settings: Settings,
) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    async with app_client(kafka_settings) as http:
        response = await http.post("/system/services", json=kafka_service("early", nobody, "topic-a"))
        assert response.status_code == 503, response.text
        assert "kafka.events" in response.text
        assert nobody in response.text
        assert (await http.get("/system/services/early")).status_code == 404


@pytest.mark.parametrize(
    ("provider", "field"),
    [
        ({"bootstrap_servers": ""}, "bootstrap_servers"),
        ({"bootstrap_servers": "broker-without-port"}, "bootstrap_servers"),
        ({"bootstrap_servers": "b:9092", "security_protocol": "TELNET"}, "security_protocol"),
        ({"bootstrap_servers": "b:9092", "security_protocol": "SASL_SSL"}, "sasl_username"),
    ],
)
async def test_bad_provider_settings_are_a_400_naming_the_field(
    kafka_settings: Settings, provider: dict[str, str], field: str
) -> None:
    body = kafka_service("bad", "", "topic-a")
    body["storage_providers"]["kafka"]["events"] = provider
    async with app_client(kafka_settings) as http:
        response = await http.post("/system/services", json=body)
        assert response.status_code == 400, response.text
        assert f"storage_providers.kafka.events.{field}" in response.text
        bad_topic = kafka_service("bad", "b:9092", "no/slashes")
        response = await http.post("/system/services", json=bad_topic)
        assert response.status_code == 400, response.text
        assert "topic name" in response.text


async def test_a_broker_outage_loses_nothing_and_readiness_says_so(kafka_settings: Settings) -> None:
    own = await start_kafka(kafka_home())
    try:
        topic = await new_topic(own)
        async with app_client(kafka_settings) as http:
            await create(http, kafka_service("steady", own.bootstrap, topic))
            await produce(own.bootstrap, topic, b'{"n": 1}')
            await wait_for_jobs(http, "steady", count=1, within=60)

            await asyncio.to_thread(own.halt)

            async def not_ready() -> bool:
                body = (await http.get("/health", params={"ready": "1"})).json()
                kafka = body["event_sources"].get("kafka", {})
                return kafka.get("state") == "failing" and "steady/kafka.events" in kafka.get("reason", "")

            await eventually(not_ready, "readiness reports the consumer failing", within=60)
            await own.resume()
            await produce(own.bootstrap, topic, b'{"n": 2}', b'{"n": 3}')
            await exactly(http, "steady", 3)

            async def ready_again() -> bool:
                body = (await http.get("/health", params={"ready": "1"})).json()
                return bool(body["event_sources"].get("kafka", {}).get("state") == "running")

            await eventually(ready_again, "readiness reports the consumer running again", within=60)
    finally:
        await asyncio.to_thread(own.stop)


async def test_the_sasl_password_is_a_credential_an_update_sending_it_back_masked_keeps(
    broker: KafkaServer, kafka_settings: Settings
) -> None:
    topic = await new_topic(broker)
    body = kafka_service("secretive", broker.bootstrap, topic, sasl_username="u", sasl_password="s3cret")
    async with app_client(kafka_settings) as http:
        await create(http, body)
        shown = (await http.get("/system/services/secretive")).json()
        # Who may change the service reads its providers' credentials back, as for minio.<id> keys.
        assert shown["storage_providers"]["kafka"]["events"]["sasl_password"] == "s3cret"
        shown["storage_providers"]["kafka"]["events"]["sasl_password"] = ""  # as a viewer's copy has it
        shown["script"] = "echo changed\n"
        response = await http.put("/system/services", json=shown)
        assert response.status_code == 204, response.text
    database = Database(kafka_settings.database_url)
    try:
        async with database.reading() as tx:
            stored = await tx.services.get("secretive")
    finally:
        await database.dispose()
    assert stored is not None
    assert stored.storage_providers["kafka"]["events"]["sasl_password"] == "s3cret"
    assert stored.script == "echo changed\n"
