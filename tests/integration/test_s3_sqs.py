"""Amazon S3 inputs through SQS, on moto's server (S3 and SQS, a process of its own) and on ElasticMQ (a
real SQS-compatible server): a file uploaded to S3 runs exactly one job, across a manager restart and a
crash between the intake's commit and the message's deletion; malformed messages become failed events
and the consumer goes on; a queue that cannot be read makes the readiness answer say so."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from oscar_manager.registry.tables import EventRow
from oscar_manager.settings import Settings
from oscar_manager.storage import sqs
from oscar_manager.storage.s3_queue_rules import RULE_ID_PREFIX
from tests.support.app import app_client
from tests.support.components import free_port, unavailable
from tests.support.factories import make_settings, service_body
from tests.support.jobs import all_jobs, settle, wait_for_jobs
from tests.support.sqs_servers import ServerProcess, start_elasticmq, start_moto

KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
SCRIPT = 'echo "processing $(basename "$INPUT_FILE_PATH")"; cat "$INPUT_FILE_PATH"\n'


@pytest.fixture(scope="module")
def moto() -> Iterator[ServerProcess]:
    try:
        server = start_moto()
    except (RuntimeError, OSError) as exc:
        unavailable(f"cannot start moto's server: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def elasticmq() -> Iterator[ServerProcess]:
    try:
        server = start_elasticmq()
    except (RuntimeError, OSError, Exception) as exc:
        unavailable(f"cannot start ElasticMQ: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    # moto and ElasticMQ listen on loopback, where a service's providers may not reach by default.
    return make_settings(
        database_url=database_url, data_dir=tmp_path / "data", oscar_provider_allowed_networks="127.0.0.1"
    )


class Aws:
    """Plain boto3 clients on a test server: what the user (and S3) do."""

    def __init__(self, s3_endpoint: str, sqs_endpoint: str) -> None:
        self.s3 = boto3.client("s3", endpoint_url=s3_endpoint, **KEYS)
        self.sqs = boto3.client("sqs", endpoint_url=sqs_endpoint, **KEYS)

    def queue(self, name: str, *, visibility: int = 30) -> str:
        url: str = self.sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": str(visibility)})[
            "QueueUrl"
        ]
        return url

    def left_in(self, url: str) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )


def our_rules(aws: Aws, bucket: str) -> list[Any]:
    rules = aws.s3.get_bucket_notification_configuration(Bucket=bucket).get("QueueConfigurations", [])
    return [rule for rule in rules if rule["Id"].startswith(RULE_ID_PREFIX)]


def s3_service(name: str, *, bucket: str, endpoint: str, queue: str) -> dict[str, Any]:
    provider = {"endpoint": endpoint, "access_key": "testing", "secret_key": "testing", "queue": queue}
    return service_body(
        name,
        script=SCRIPT,
        input=[{"storage_provider": "s3.aws", "path": f"{bucket}/in"}],
        output=[{"path": f"{name}/out"}],
        storage_providers={"s3": {"aws": provider}},
    )


async def eventually(check: Callable[[], bool | Awaitable[bool]], *, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not await _value(check()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


async def failed_events(settings: Settings, service: str) -> list[str]:
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(EventRow.last_error).where(EventRow.service == service, EventRow.status == "failed")
            )
            return sorted(str(error) for (error,) in rows)
    finally:
        await engine.dispose()


async def _value(answer: bool | Awaitable[bool]) -> bool:
    return answer if isinstance(answer, bool) else await answer


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@pytest.fixture
def aws(moto: ServerProcess) -> Aws:
    return Aws(moto.endpoint, moto.endpoint)


async def test_an_upload_to_s3_runs_one_job_across_a_restart(
    settings: Settings, moto: ServerProcess, aws: Aws
) -> None:
    bucket, name = unique("photos"), unique("s3in")
    aws.s3.create_bucket(Bucket=bucket)
    url = aws.queue(unique("uploads"))
    async with app_client(settings) as http:
        body = s3_service(name, bucket=bucket, endpoint=moto.endpoint, queue=url)
        assert (await http.post("/system/services", json=body)).status_code == 201

        # The manager pointed the bucket's notifications at the queue, for the input folder only.
        await eventually(lambda: bool(our_rules(aws, bucket)))
        [rule] = aws.s3.get_bucket_notification_configuration(Bucket=bucket)["QueueConfigurations"]
        assert rule["Filter"]["Key"]["FilterRules"] == [{"Name": "prefix", "Value": "in/"}]

        aws.s3.put_object(Bucket=bucket, Key="in/a file.txt", Body=b"hello from S3")
        aws.s3.put_object(Bucket=bucket, Key="elsewhere/b.txt", Body=b"not an input")
        [job] = (await wait_for_jobs(http, name, count=1)).values()
        assert job["status"] == "Succeeded"
        logs = (await http.get(f"/system/logs/{name}/{next(iter(await all_jobs(http, name)))}")).text
        assert "processing a file.txt" in logs
        assert "hello from S3" in logs
        await eventually(lambda: aws.left_in(url) == 0)

    # A new start reconciles the input folder (finding the object again) and reads the queue: no new job.
    async with app_client(settings) as http:
        await settle(2.0)
        assert len(await all_jobs(http, name)) == 1

        # Deleted, the service's bucket stops sending to the queue (other rules would be kept).
        assert (await http.delete(f"/system/services/{name}")).status_code == 204
        await eventually(lambda: not our_rules(aws, bucket))


async def test_a_crash_between_the_intake_and_the_delete_still_runs_one_job(
    settings: Settings, moto: ServerProcess, aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The message is received and recorded, and the manager dies before deleting it: SQS delivers it
    again (after its visibility timeout) to the manager started again, which runs nothing more."""
    bucket, name = unique("crash"), unique("s3crash")
    aws.s3.create_bucket(Bucket=bucket)
    url = aws.queue(unique("uploads"), visibility=2)
    deletes: list[str] = []
    original_delete = sqs.SqsQueue.delete

    async def crash_before_delete(self: sqs.SqsQueue, message: Any) -> None:
        deletes.append(message.id)
        raise RuntimeError("the manager died here")  # a double: a crash at this exact point

    monkeypatch.setattr(sqs.SqsQueue, "delete", crash_before_delete)
    async with app_client(settings) as http:
        body = s3_service(name, bucket=bucket, endpoint=moto.endpoint, queue=url)
        assert (await http.post("/system/services", json=body)).status_code == 201
        await eventually(lambda: bool(our_rules(aws, bucket)))
        # The reconcile at connect has run already (nothing there): only the queue reports the object.
        await settle(1.0)
        aws.s3.put_object(Bucket=bucket, Key="in/once.txt", Body=b"x")
        await wait_for_jobs(http, name, count=1)
        await eventually(lambda: bool(deletes))
    assert aws.left_in(url) >= 1  # not deleted: it comes back

    monkeypatch.setattr(sqs.SqsQueue, "delete", original_delete)
    async with app_client(settings) as http:
        await eventually(lambda: aws.left_in(url) == 0)
        await settle(1.0)
        assert len(await all_jobs(http, name)) == 1


async def test_malformed_messages_are_failed_events_and_the_consumer_goes_on(
    settings: Settings, moto: ServerProcess, aws: Aws
) -> None:
    bucket, name = unique("malformed"), unique("s3bad")
    aws.s3.create_bucket(Bucket=bucket)
    url = aws.queue(unique("uploads"))
    async with app_client(settings) as http:
        body = s3_service(name, bucket=bucket, endpoint=moto.endpoint, queue=url)
        assert (await http.post("/system/services", json=body)).status_code == 201
        aws.sqs.send_message(QueueUrl=url, MessageBody="this is not JSON")
        aws.sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"hello": "world"}))
        bad_record = {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": {}}]}
        aws.sqs.send_message(QueueUrl=url, MessageBody=json.dumps(bad_record))
        aws.s3.put_object(Bucket=bucket, Key="in/good.txt", Body=b"x")
        await wait_for_jobs(http, name, count=1)
        await eventually(lambda: aws.left_in(url) == 0)

        async def three_failed() -> bool:
            return len(await failed_events(settings, name)) == 3

        await eventually(three_failed)
        errors = await failed_events(settings, name)
        assert any("not JSON" in error for error in errors)
        assert any("not an S3 event notification" in error for error in errors)
        assert any("missing s3.bucket.name" in error for error in errors)
        assert len(await all_jobs(http, name)) == 1


async def test_an_input_on_s3_needs_a_queue_that_exists_and_answers(
    settings: Settings, moto: ServerProcess
) -> None:
    """Refused before anything is written: no queue (400), a queue that does not exist (400), a queue
    server that does not answer (502), each naming the provider's field."""
    async with app_client(settings) as http:
        for queue, status, says in [
            ("", 400, "storage_providers.s3.aws.queue is required"),
            ("no-such-queue", 400, "storage_providers.s3.aws.queue: SQS"),
            (f"http://127.0.0.1:{free_port()}/000000000000/down", 502, "storage_providers.s3.aws.queue: SQS"),
        ]:
            body = s3_service("noqueue", bucket="photos", endpoint=moto.endpoint, queue=queue)
            answer = await http.post("/system/services", json=body)
            assert answer.status_code == status, answer.text
            assert says in answer.text
            assert (await http.get("/system/services/noqueue")).status_code == 404


async def test_a_queue_that_cannot_be_read_makes_readiness_say_so(
    settings: Settings, moto: ServerProcess, aws: Aws
) -> None:
    queue = unique("vanishing")
    url = aws.queue(queue)
    body = s3_service(unique("s3gone"), bucket=unique("gone"), endpoint=moto.endpoint, queue=url)
    async with app_client(settings) as http:
        assert (await http.post("/system/services", json=body)).status_code == 201

        async def ready() -> bool:
            return (await http.get("/health", params={"ready": "1"})).status_code == 200

        await eventually(ready)
        aws.sqs.delete_queue(QueueUrl=url)

        async def not_ready() -> bool:
            answer = await http.get("/health", params={"ready": "1"})
            return answer.status_code == 503 and queue in answer.text

        await eventually(not_ready, within=60)


async def test_elasticmq_queue_feeds_jobs_once(
    settings: Settings, moto: ServerProcess, elasticmq: ServerProcess
) -> None:
    """A real SQS-compatible server as the queue (S3 on moto): the notification S3 would send is posted
    by the test, twice (plain, and through SNS); one job runs."""
    aws = Aws(moto.endpoint, elasticmq.endpoint)
    bucket, name = unique("emq"), unique("s3emq")
    aws.s3.create_bucket(Bucket=bucket)
    url = aws.queue(unique("uploads"))
    async with app_client(settings) as http:
        body = s3_service(name, bucket=bucket, endpoint=moto.endpoint, queue=url)
        assert (await http.post("/system/services", json=body)).status_code == 201
        await settle(1.0)
        aws.s3.put_object(Bucket=bucket, Key="in/from emq.txt", Body=b"queued")
        record = {
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": "us-east-1",
            "eventTime": "2026-01-01T00:00:00.000Z",
            "eventName": "ObjectCreated:Put",
            "s3": {
                "bucket": {"name": bucket},
                "object": {"key": "in/from+emq.txt", "size": 6, "sequencer": "0055AED6DCD90281E5"},
            },
        }
        notification = json.dumps({"Records": [record]})
        aws.sqs.send_message(QueueUrl=url, MessageBody=notification)
        # Again, as S3 -> SNS -> SQS delivers it: the same upload, the same event.
        envelope = {"Type": "Notification", "TopicArn": "arn:aws:sns:us-east-1:0:t", "Message": notification}
        aws.sqs.send_message(QueueUrl=url, MessageBody=json.dumps(envelope))
        await wait_for_jobs(http, name, count=1)
        await eventually(lambda: aws.left_in(url) == 0)
        await settle(1.0)
        assert len(await all_jobs(http, name)) == 1
        assert await failed_events(settings, name) == []


async def test_two_replicas_reading_one_queue_run_each_upload_once(
    settings: Settings, moto: ServerProcess, aws: Aws
) -> None:
    """Two managers on one PostgreSQL read the same queue (each takes messages; a redelivery or the other's
    scan is the same event): every upload runs once."""
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("replicas share a PostgreSQL registry")
    bucket, name = unique("replicas"), unique("s3rep")
    aws.s3.create_bucket(Bucket=bucket)
    url = aws.queue(unique("uploads"), visibility=5)
    async with app_client(settings) as first, app_client(settings) as second:
        body = s3_service(name, bucket=bucket, endpoint=moto.endpoint, queue=url)
        assert (await first.post("/system/services", json=body)).status_code == 201
        await eventually(lambda: bool(our_rules(aws, bucket)))

        async def both_read_the_queue() -> bool:
            # The other replica sees the new service at its next look at the registry (10 s at most).
            for http in (first, second):
                info = (await http.get("/system/info")).json()
                if "s3-queues" not in info["storage"]["event_sources"]:
                    return False
            return True

        await eventually(both_read_the_queue)
        for index in range(8):
            aws.s3.put_object(Bucket=bucket, Key=f"in/{index}.txt", Body=b"x")
        await wait_for_jobs(first, name, count=8, within=60)
        await eventually(lambda: aws.left_in(url) == 0)
        await settle(1.0)
        assert len(await all_jobs(second, name)) == 8
