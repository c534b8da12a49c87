"""Several manager processes sharing one real PostgreSQL and one real MinIO (issue 17): one killed
mid-stream, the leader killed, all restarted one by one; every event runs exactly one job, none is lost,
and no request is answered with a 5xx."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.minio import MinioServer, boto3_client
from tests.support.replicas import (
    Balancer,
    Replicas,
    attempts,
    client,
    event_counts,
    finished_jobs,
    kill_holding_claims,
    replica_env,
    send_events,
)

pytestmark = [pytest.mark.server, pytest.mark.postgres]

# Each event's output is named after its input, so a job run twice (killed, then run again) still
# leaves one output; slow enough that a replica is killed with jobs under way.
SCRIPT = 'sleep 0.5\ncp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/out-$(cat "$INPUT_FILE_PATH")"\n'


@pytest.fixture
def replicas(tmp_path: Path, postgres_url: str, minio_server: MinioServer) -> Iterator[Replicas]:
    group = Replicas(tmp_path, replica_env(postgres_url, minio_server, OSCAR_LOCAL_CONCURRENCY="2"))
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


def test_a_replica_killed_mid_stream_loses_no_event_and_runs_none_twice(
    replicas: Replicas, postgres_url: str, minio_server: MinioServer
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
    victim_claims = kill_holding_claims(replicas, postgres_url, list(replicas.servers))
    assert victim_claims, "it died holding no claim"
    sender.join(timeout=120)

    assert sent == [201] * len(names)
    assert all(status < 500 for status in balancer.statuses), balancer.statuses
    jobs = finished_jobs(replicas, "killed", len(names))
    assert len(jobs) == len(names)  # one job per event, even for the events the killed replica held
    assert {job["status"] for job in jobs.values()} == {"Succeeded"}
    assert event_counts(postgres_url) == {"done": len(names)}
    # The killed replica's claims lapsed and another replica ran those jobs again.
    assert all(count >= 2 for count in attempts(postgres_url, "killed", victim_claims).values())
    assert outputs(minio_server, "killed") == [f"out/out-{name}" for name in names]


def test_the_leader_killed_gives_a_new_leader_and_no_upload_missed(
    replicas: Replicas, postgres_url: str, minio_server: MinioServer
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
    replicas: Replicas, postgres_url: str, minio_server: MinioServer
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
    assert event_counts(postgres_url) == {"done": len(names)}
    assert outputs(minio_server, "rolling") == sorted(f"out/out-{name}" for name in names)
    assert len(replicas.leaders()) == 1
