"""MinIO's bucket notifications through a Kafka topic (``OSCAR_MINIO_NOTIFY=kafka``, issue 19): a real MinIO
publishing to a real one-node KRaft broker, the manager consuming the topic with the listen stream and the
periodic reconcile off, so Kafka is the only way an upload reaches it. An upload runs exactly one job, also
when the manager stops between recording the notification and committing its offset; the manager sets the
input buckets' rules for the Kafka target, and registers the target (restarting MinIO once) when MinIO
lacks it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from oscar_manager.events import kafka_client
from oscar_manager.settings import Settings
from tests.support.app import app_client
from tests.support.factories import make_settings, service_body
from tests.support.jobs import all_jobs, settle, wait_for_jobs
from tests.support.kafka import KafkaServer, committed, create_topic
from tests.support.minio import MinioServer, boto3_client, start_minio

TARGET = "OSCAR"
SCRIPT = 'echo "processing $STORAGE_OBJECT_KEY"\n'


def kafka_target_env(broker: KafkaServer, topic: str) -> dict[str, str]:
    return {
        f"MINIO_NOTIFY_KAFKA_ENABLE_{TARGET}": "on",
        f"MINIO_NOTIFY_KAFKA_BROKERS_{TARGET}": broker.bootstrap,
        f"MINIO_NOTIFY_KAFKA_TOPIC_{TARGET}": topic,
    }


@pytest.fixture
async def topic(kafka_broker: KafkaServer) -> str:
    name = f"minio-{uuid.uuid4().hex[:10]}"
    await create_topic(kafka_broker.bootstrap, name, partitions=1)
    return name


@pytest.fixture
async def minio_with_target(
    minio_binary: Path, kafka_broker: KafkaServer, topic: str
) -> AsyncIterator[MinioServer]:
    server = await start_minio(minio_binary, kafka_target_env(kafka_broker, topic))
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


def through_kafka(
    minio: MinioServer, broker: KafkaServer, topic: str, database_url: str, data: Path
) -> Settings:
    return make_settings(
        database_url=database_url,
        data_dir=data,
        minio_endpoint=minio.endpoint,
        minio_access_key=minio.access_key,
        minio_secret_key=minio.secret_key,
        oscar_minio_listen=False,
        oscar_reconcile_interval=0,
        oscar_minio_notify="kafka",
        oscar_minio_kafka_brokers=broker.bootstrap,
        oscar_minio_kafka_topic=topic,
        oscar_minio_kafka_group=f"group-{topic}",
    )


async def create(http: httpx.AsyncClient, name: str) -> None:
    body = service_body(name, script=SCRIPT, input=[{"path": f"{name}/in"}], output=[{"path": f"{name}/out"}])
    response = await http.post("/system/services", json=body)
    assert response.status_code == 201, response.text


async def until_delivering(http: httpx.AsyncClient, within: float = 90) -> None:
    """The Kafka target's rules are in place once /system/info says so."""
    deadline = asyncio.get_running_loop().time() + within
    while "minio-kafka" not in (await http.get("/system/info")).json()["storage"]["event_sources"]:
        assert asyncio.get_running_loop().time() < deadline, "MinIO's Kafka delivery was not set up"
        await asyncio.sleep(0.1)


def arns(s3: Any, bucket: str) -> list[tuple[str, str]]:
    config = s3.get_bucket_notification_configuration(Bucket=bucket)
    return sorted(
        (rule["QueueArn"], rule.get("Filter", {}).get("Key", {}).get("FilterRules", [{}])[0].get("Value", ""))
        for rule in config.get("QueueConfigurations", [])
    )


async def test_an_upload_notified_through_kafka_runs_one_job_across_a_stop_before_the_commit(
    minio_with_target: MinioServer,
    kafka_broker: KafkaServer,
    topic: str,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first manager records the upload's notification but never commits its offset (its commit hangs
    until it stops, as a kill then would leave it); the next one reads it again and the intake's dedup key
    (the same as the webhook's and the listen stream's for that upload) drops it: one job."""
    settings = through_kafka(minio_with_target, kafka_broker, topic, database_url, tmp_path / "data")
    s3 = boto3_client(minio_with_target.endpoint, minio_with_target.access_key, minio_with_target.secret_key)
    name = f"viak-{uuid.uuid4().hex[:8]}"
    commit = kafka_client.Consumer.commit

    async def never(self: kafka_client.Consumer, next_offsets: dict[tuple[str, int], int]) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(kafka_client.Consumer, "commit", never)
    async with app_client(settings) as http:
        await until_delivering(http)
        await create(http, name)
        assert arns(s3, name) == [(f"arn:minio:sqs::{TARGET}:kafka", "in/")]
        await asyncio.to_thread(s3.put_object, Bucket=name, Key="in/a b.txt", Body=b"x")
        await wait_for_jobs(http, name, count=1, within=60)
    assert (await committed(kafka_broker.bootstrap, f"group-{topic}", topic, partitions=1)) == {0: None}

    monkeypatch.setattr(kafka_client.Consumer, "commit", commit)
    async with app_client(settings) as http:
        deadline = asyncio.get_running_loop().time() + 60
        while (await committed(kafka_broker.bootstrap, f"group-{topic}", topic, partitions=1))[0] != 1:
            assert asyncio.get_running_loop().time() < deadline, "the notification was not read again"
            await asyncio.sleep(0.2)
        await settle(1.5)
        jobs = await all_jobs(http, name)
        assert len(jobs) == 1, jobs
        [job] = jobs.values()
        assert job["status"] == "Succeeded", job
        info = (await http.get("/system/info")).json()["storage"]["events"]
        assert info["duplicates"] == 1, info


async def test_the_manager_registers_minios_kafka_target_when_it_lacks_it(
    minio_binary: Path, kafka_broker: KafkaServer, topic: str, database_url: str, tmp_path: Path
) -> None:
    server = await start_minio(minio_binary)
    try:
        settings = through_kafka(server, kafka_broker, topic, database_url, tmp_path / "data")
        name = f"reg-{uuid.uuid4().hex[:8]}"
        async with app_client(settings) as http:
            await until_delivering(http)
            await create(http, name)
            s3 = boto3_client(server.endpoint, server.access_key, server.secret_key)
            await asyncio.to_thread(s3.put_object, Bucket=name, Key="in/x.txt", Body=b"x")
            await wait_for_jobs(http, name, count=1, within=60)
            await settle(1.5)
            assert len(await all_jobs(http, name)) == 1
    finally:
        await asyncio.to_thread(server.stop)
