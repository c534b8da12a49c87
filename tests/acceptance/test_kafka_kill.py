"""A manager process SIGKILLed between recording a Kafka message and committing its offset (issue 19): the
next manager is given the message again by the consumer group, and the intake's dedup key drops it, so the
message still runs exactly one job.

The manager runs as the README runs it (``oscar-manager serve``, SQLite, local backend). To be killed at
that exact moment, the first process gets a ``sitecustomize`` on its ``PYTHONPATH`` that makes the
consumer's commit write a mark and then wait for ever; the test kills it once the mark is there.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from tests.support.components import free_port
from tests.support.factories import ADMIN_PASSWORD, service_body
from tests.support.kafka import KafkaServer, committed, create_topic, produce
from tests.support.server import crash_server, start_server, stop_server

pytestmark = pytest.mark.server

HANGING_COMMIT = """
import asyncio
import os

from oscar_manager.events import kafka_client


async def _never(self, next_offsets):
    with open(os.environ["KAFKA_COMMIT_MARK"], "w") as mark:
        mark.write(repr(next_offsets))
    await asyncio.Event().wait()


kafka_client.Consumer.commit = _never
"""


async def jobs(http: httpx.AsyncClient, service: str) -> dict[str, dict[str, str]]:
    response = await http.get(f"/system/logs/{service}")
    assert response.status_code == 200, response.text
    found: dict[str, dict[str, str]] = response.json()["jobs"]
    return found


async def until(check: Callable[[], Awaitable[bool]], what: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        await asyncio.sleep(0.2)


async def test_a_manager_killed_between_intake_and_commit_runs_the_message_once(
    kafka_broker: KafkaServer, tmp_path: Path
) -> None:
    topic = f"kill-{uuid.uuid4().hex[:10]}"
    await create_topic(kafka_broker.bootstrap, topic, partitions=1)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HANGING_COMMIT)
    mark = tmp_path / "commit-reached"
    workdir = tmp_path / "work"
    workdir.mkdir()
    port = free_port()
    env = {"OSCAR_PASSWORD": ADMIN_PASSWORD, "OSCAR_PROVIDER_ALLOWED_NETWORKS": "127.0.0.0/8"}
    body = service_body(
        "survivor",
        script='echo "got: $(cat "$INPUT_FILE_PATH")"\n',
        input=[{"storage_provider": "kafka.events", "path": topic}],
        storage_providers={"kafka": {"events": {"bootstrap_servers": kafka_broker.bootstrap}}},
    )

    first = await asyncio.to_thread(
        start_server, workdir, port, env={**env, "PYTHONPATH": str(hook), "KAFKA_COMMIT_MARK": str(mark)}
    )
    try:
        async with httpx.AsyncClient(base_url=first.url, auth=("oscar", ADMIN_PASSWORD)) as http:
            created = await http.post("/system/services", json=body)
            assert created.status_code == 201, created.text
            await produce(kafka_broker.bootstrap, topic, b'{"n": 1}')

            async def recorded_and_run() -> bool:
                found = await jobs(http, "survivor")
                return mark.exists() and [job["status"] for job in found.values()] == ["Succeeded"]

            await until(recorded_and_run, "the message is recorded, its job run, and the commit reached")
    finally:
        await asyncio.to_thread(crash_server, first)
    assert await committed(kafka_broker.bootstrap, "oscar-survivor", topic, partitions=1) == {0: None}

    second = await asyncio.to_thread(start_server, workdir, port, env=env)
    try:
        async with httpx.AsyncClient(base_url=second.url, auth=("oscar", ADMIN_PASSWORD)) as http:

            async def read_again() -> bool:
                offsets = await committed(kafka_broker.bootstrap, "oscar-survivor", topic, partitions=1)
                return offsets == {0: 1}

            # The killed member is dropped from the group once its session times out (10 s).
            await until(read_again, "the message is read again and committed", within=90)
            await asyncio.sleep(1.5)
            found = await jobs(http, "survivor")
            assert [job["status"] for job in found.values()] == ["Succeeded"], found
    finally:
        await asyncio.to_thread(stop_server, second)
