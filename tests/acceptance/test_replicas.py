"""Several manager processes sharing one real PostgreSQL and one real MinIO (issue 17): one killed
mid-stream, the leader killed, all restarted one by one; every event runs exactly one job, none is lost,
and no request is answered with a 5xx."""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.databases import PostgresDatabases
from tests.support.minio import MinioServer, boto3_client
from tests.support.replicas import (
    Balancer,
    Replicas,
    attempts,
    client,
    finished_jobs,
    registry,
    replica_env,
)

pytestmark = [pytest.mark.server, pytest.mark.postgres]

# Each event's output is named after its input, so a job run twice (killed, then run again) still
# leaves one output; slow enough that a replica is killed with jobs under way.
SCRIPT = 'sleep 0.5\ncp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/out-$(cat "$INPUT_FILE_PATH")"\n'


@pytest.fixture
def database_url(postgres_databases: PostgresDatabases) -> Iterator[str]:
    url = postgres_databases.create(migrated=True)
    try:
        yield url
    finally:
        postgres_databases.drop(url)


@pytest.fixture
def replicas(tmp_path: Path, database_url: str, minio_server: MinioServer) -> Iterator[Replicas]:
    group = Replicas(tmp_path, replica_env(database_url, minio_server, OSCAR_LOCAL_CONCURRENCY="2"))
    try:
        yield group
    finally:
        group.stop_all()


def create_service(replicas: Replicas, name: str) -> None:
    body = {
        "name": name,
        "image": "img",
        "script": SCRIPT,
        "input": [{"path": f"{name}/in"}],
        "output": [{"path": f"{name}/out"}],
    }
    with client(replicas.servers[0]) as http:
        answer = http.post("/system/services", json=body)
        assert answer.status_code == 201, answer.text


def outputs(minio: MinioServer, bucket: str) -> list[str]:
    s3 = boto3_client(minio.endpoint, minio.access_key, minio.secret_key)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="out/")
    # Without the folder's marker object (made with the service).
    return sorted(item["Key"] for item in listed.get("Contents", []) if not item["Key"].endswith("/"))


def send_events(balancer: Balancer, service: str, names: list[str], *, every: float) -> list[int]:
    """``/job`` per name, each with an idempotency key: a request retried on another replica after its
    connection dropped is the same event."""
    statuses = []
    for name in names:
        statuses.append(
            balancer.post(
                f"/job/{service}",
                content=base64.b64encode(name.encode()),
                headers={"Idempotency-Key": name},
            )
        )
        time.sleep(every)
    return statuses


def claims_by_replica(database_url: str) -> dict[str, str | None]:
    async def read(tx: Any) -> dict[str, str | None]:
        holders: dict[str, str | None] = await tx.events.holders()
        return holders

    result: dict[str, str | None] = registry(database_url, read)
    return result


def event_counts(database_url: str) -> dict[str, int]:
    async def read(tx: Any) -> dict[str, int]:
        counts: dict[str, int] = await tx.events.counts()
        return counts

    result: dict[str, int] = registry(database_url, read)
    return result


def test_a_replica_killed_mid_stream_loses_no_event_and_runs_none_twice(
    replicas: Replicas, database_url: str, minio_server: MinioServer
) -> None:
    for _ in range(3):
        replicas.start()
    create_service(replicas, "killed")
    balancer = Balancer(replicas)
    names = [f"e{n:03d}" for n in range(40)]
    sent: list[int] = []
    sender = threading.Thread(target=lambda: sent.extend(send_events(balancer, "killed", names, every=0.05)))
    sender.start()

    # Kill (SIGKILL) a replica while it holds claims: jobs under way in it die with it.
    victim_claims: list[str] = []
    deadline = time.monotonic() + 30
    while not victim_claims and time.monotonic() < deadline:
        held = claims_by_replica(database_url)
        for server in replicas.servers:
            pid = f"-{server.process.pid}-"
            mine = [job for job, replica in held.items() if replica is not None and pid in replica]
            if mine:
                replicas.kill(server)
                victim_claims = mine
                break
        time.sleep(0.05)
    assert victim_claims, "no replica ever held a claim"
    sender.join(timeout=120)

    assert sent == [201] * len(names)
    assert all(status < 500 for status in balancer.statuses), balancer.statuses
    jobs = finished_jobs(replicas, "killed", len(names))
    assert len(jobs) == len(names)  # one job per event, even for the events the killed replica held
    assert {job["status"] for job in jobs.values()} == {"Succeeded"}
    assert event_counts(database_url) == {"done": len(names)}
    # The killed replica's claims lapsed and another replica ran those jobs again.
    assert all(count >= 2 for count in attempts(database_url, "killed", victim_claims).values())
    assert outputs(minio_server, "killed") == [f"out/out-{name}" for name in names]


def test_the_leader_killed_gives_a_new_leader_and_no_upload_missed(
    replicas: Replicas, database_url: str, minio_server: MinioServer
) -> None:
    for _ in range(2):
        replicas.start()
    leader = replicas.one_leader()
    create_service(replicas, "leader")
    s3 = boto3_client(minio_server.endpoint, minio_server.access_key, minio_server.secret_key)
    # The leader listens to the bucket; the other replica does not.
    deadline = time.monotonic() + 20
    while "leader" not in replicas.info(leader)["listening"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "leader" in replicas.info(leader)["listening"]
    follower = next(server for server in replicas.servers if server is not leader)
    assert replicas.info(follower)["listening"] == []

    names = [f"u{n:03d}" for n in range(30)]
    for name in names[:10]:
        s3.put_object(Bucket="leader", Key=f"in/{name}", Body=name.encode())
        time.sleep(0.05)
    replicas.kill(leader)
    # Uploads go on while no one leads, then under the new leader.
    for name in names[10:]:
        s3.put_object(Bucket="leader", Key=f"in/{name}", Body=name.encode())
        time.sleep(0.05)
    assert replicas.one_leader(within=10) is follower

    jobs = finished_jobs(replicas, "leader", len(names))
    assert len(jobs) == len(names)
    assert {job["status"] for job in jobs.values()} == {"Succeeded"}
    assert outputs(minio_server, "leader") == [f"out/out-{name}" for name in names]


def test_a_rolling_restart_loses_nothing_and_answers_no_5xx(
    replicas: Replicas, database_url: str, minio_server: MinioServer
) -> None:
    for _ in range(2):
        replicas.start()
    create_service(replicas, "rolling")
    balancer = Balancer(replicas)
    names = [f"r{n:03d}-{uuid.uuid4().hex[:6]}" for n in range(60)]
    sent: list[int] = []
    sender = threading.Thread(target=lambda: sent.extend(send_events(balancer, "rolling", names, every=0.1)))
    sender.start()
    time.sleep(1)
    # Each replica in turn: a new one started, then the old one stopped (SIGTERM), as a Deployment's
    # rolling update with maxSurge 1 and maxUnavailable 0 does.
    for old in list(replicas.servers):
        replicas.start()
        replicas.stop(old)
    sender.join(timeout=120)

    assert sent == [201] * len(names)
    assert all(status < 500 for status in balancer.statuses), balancer.statuses
    jobs = finished_jobs(replicas, "rolling", len(names))
    assert len(jobs) == len(names)
    assert {job["status"] for job in jobs.values()} == {"Succeeded"}
    assert event_counts(database_url) == {"done": len(names)}
    assert outputs(minio_server, "rolling") == sorted(f"out/out-{name}" for name in names)
    assert len(replicas.leaders()) == 1
