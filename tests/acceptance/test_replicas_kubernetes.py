"""Several manager processes on one real PostgreSQL with the Kubernetes backend on the tests' real control
plane (issue 17): the leader killed mid-stream, then a follower; every event ends with exactly one Job in
the cluster and one job record, all Succeeded, reported by whichever replica leads.

The replicas are ``oscar-manager serve`` processes running as the shipped ServiceAccount (its token in
their kubeconfig), in a namespace of the test's own whose pods go to the kwok node: kwok plays every pod
to Succeeded, so the Job controller and the scheduler do their real work. Storage is moto's S3 server, as
for the API tests' Kubernetes variant (nothing reads it: the pods run no container). Each replica submits
at most ``SUBMISSIONS_A_SECOND`` Jobs a second, so that the events it claims wait, claimed, a while
before their Jobs are made: one killed leaves claims to lapse. A claim whose Job is made but whose event
is not yet recorded done lasts milliseconds: the kill waits a few seconds for one, and checks the 409 of
its resubmission when it caught one (``tests/integration/test_dispatch.py`` covers that case for sure).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from oscar_manager.domain.service import SERVICE_LABEL
from tests.support.controlplane import AuditRecord, ControlPlane, audit_records
from tests.support.kube_cluster import (
    MANAGER_USER,
    MOTO_KEYS,
    JobNamespace,
    create_namespace,
    manager_environment,
)
from tests.support.replicas import (
    Balancer,
    Replicas,
    Stream,
    attempts,
    client,
    event_counts,
    finished_jobs,
    kill_holding_claims,
    replica_env,
)
from tests.support.server import RunningServer

pytestmark = [pytest.mark.server, pytest.mark.postgres]

SUBMISSIONS_A_SECOND = "1"
SENDERS = 4  # requests at once
# How long the victim is watched for a claim whose Job is made, before it is killed holding any.
PREFER_MADE_FOR = 2.0


@pytest.fixture
async def kwok_namespace(kube_admin: httpx.AsyncClient) -> AsyncIterator[JobNamespace]:
    """A namespace like the shipped one whose pods go to the kwok node (played to Succeeded)."""
    namespace = await create_namespace(kube_admin, node="kwok", credentials=MOTO_KEYS)
    try:
        yield namespace
    finally:
        await kube_admin.delete(f"/api/v1/namespaces/{namespace.name}")


@pytest.fixture
def replicas(
    tmp_path: Path,
    postgres_url: str,
    control_plane: ControlPlane,
    manager_token: str,
    kwok_namespace: JobNamespace,
    moto_endpoint: str,
) -> Iterator[Replicas]:
    kubernetes = manager_environment(control_plane, manager_token, kwok_namespace.name, tmp_path)
    env = replica_env(
        postgres_url,
        None,
        **kubernetes,
        MINIO_ENDPOINT=moto_endpoint,
        MINIO_ACCESS_KEY=MOTO_KEYS["accessKey"],
        MINIO_SECRET_KEY=MOTO_KEYS["secretKey"],
        OSCAR_MINIO_LISTEN="false",  # moto has no ListenBucketNotification
        OSCAR_KUBERNETES_RATE=SUBMISSIONS_A_SECOND,
    )
    group = Replicas(tmp_path, env)
    try:
        yield group
    finally:
        group.stop_all()


def create_service(replicas: Replicas, name: str) -> None:
    body = {"name": name, "image": "img", "script": "echo done", "input": [{"path": f"{name}/in"}]}
    with client(replicas.servers[0]) as http:
        answer = http.post("/system/services", json=body)
        assert answer.status_code == 201, answer.text


def manager_requests(plane: ControlPlane, namespace: str, start: int) -> list[AuditRecord]:
    """What the replicas (all as the shipped ServiceAccount) asked the apiserver for in ``namespace``."""
    return [
        record
        for record in audit_records(plane.audit_log, user=MANAGER_USER, start=start)
        if record.namespace == namespace and not record.dry_run
    ]


def job_creations(records: list[AuditRecord]) -> Counter[str]:
    """Each Job's creations answered 201 (or 409, already there), by the name sent."""
    return Counter(
        f"{record.code} {record.body['metadata']['name']}"
        for record in records
        if (record.verb, record.resource) == ("create", "jobs") and record.body
    )


def cluster_jobs(plane: ControlPlane, namespace: str) -> list[str]:
    """The services' Jobs in ``namespace`` (one service a test)."""
    with plane.http(timeout=30) as http:
        answer = http.get(
            f"/apis/batch/v1/namespaces/{namespace}/jobs", params={"labelSelector": SERVICE_LABEL}
        )
        answer.raise_for_status()
        return sorted(job["metadata"]["name"] for job in answer.json()["items"])


def assert_one_job_each(
    replicas: Replicas,
    plane: ControlPlane,
    namespace: str,
    service: str,
    names: list[str],
    postgres_url: str,
    audit_start: int,
) -> dict[str, Any]:
    """Every event ended with one Job in the cluster, created once, and one job record, Succeeded."""
    jobs = finished_jobs(replicas, service, len(names))
    assert len(jobs) == len(names)
    assert {job["status"] for job in jobs.values()} == {"Succeeded"}, jobs
    assert event_counts(postgres_url) == {"done": len(names)}
    assert cluster_jobs(plane, namespace) == sorted(jobs)
    created = job_creations(manager_requests(plane, namespace, audit_start))
    assert sorted(name.split()[1] for name in created if name.startswith("201 ")) == sorted(jobs)
    assert all(count == 1 for key, count in created.items() if key.startswith("201 ")), created
    return jobs


def kill_with_jobs_made(
    replicas: Replicas, postgres_url: str, plane: ControlPlane, namespace: str, among: list[RunningServer]
) -> tuple[list[str], set[str]]:
    """SIGKILL the first of ``among`` seen holding a few claims, preferably one of them with its Job made
    already (its event not yet recorded done: a window of milliseconds, caught now and then); the jobs of
    the events it died holding, and those of them whose Job it had made. (A few: one claim seen may be
    done by the time of the kill.)"""
    deadline = time.monotonic() + PREFER_MADE_FOR

    def ripe(jobs: list[str]) -> bool:
        if len(jobs) < 3:
            return False
        return time.monotonic() > deadline or bool(set(jobs) & set(cluster_jobs(plane, namespace)))

    victim_claims = kill_holding_claims(replicas, postgres_url, among, when=ripe)
    assert victim_claims, "it died holding no claim"
    made = set(victim_claims) & set(cluster_jobs(plane, namespace))
    print(f"killed holding {len(victim_claims)} claim(s), {len(made)} of them with their Job made")
    return victim_claims, made


def three_replicas_streaming(
    replicas: Replicas, control_plane: ControlPlane, service: str
) -> tuple[RunningServer, int, Balancer, list[str], Stream]:
    """Three replicas, ``service`` created, and a stream of 45 events to them begun: the leader, where the
    audit log stood before the stream, the balancer, the events' names and the stream."""
    for _ in range(3):
        replicas.start()
    leader = replicas.one_leader()
    create_service(replicas, service)
    audit_start = control_plane.audit_log.stat().st_size
    balancer = Balancer(replicas)
    names = [f"{service}-{n:03d}" for n in range(45)]
    return leader, audit_start, balancer, names, Stream(balancer, service, names, every=0.02, senders=SENDERS)


def test_the_leader_killed_mid_stream_gives_a_new_leader_whose_watcher_reports_every_job(
    replicas: Replicas,
    postgres_url: str,
    control_plane: ControlPlane,
    kwok_namespace: JobNamespace,
) -> None:
    leader, audit_start, balancer, names, stream = three_replicas_streaming(
        replicas, control_plane, "kleader"
    )

    # The leader killed (SIGKILL) with claims of its own, some of their Jobs made: its job watcher dies
    # with it, and another replica leads within seconds. (A watcher lists the Jobs when it starts only:
    # the old leader's list came before the stream.)
    before_kill = control_plane.audit_log.stat().st_size
    victim_claims, made = kill_with_jobs_made(
        replicas, postgres_url, control_plane, kwok_namespace.name, [leader]
    )
    new_leader = replicas.one_leader(within=10)
    assert new_leader is not leader
    assert stream.join() == [201] * len(names)
    assert all(status < 500 for status in balancer.statuses), balancer.statuses

    jobs = assert_one_job_each(
        replicas, control_plane, kwok_namespace.name, "kleader", names, postgres_url, audit_start
    )
    after = manager_requests(control_plane, kwok_namespace.name, before_kill)
    # The new leader's watcher listed the Jobs (then watched them): the ends of the Jobs made after the
    # kill, and of those the old leader saw end but did not record, could come from it alone.
    lists = [r for r in after if (r.verb, r.resource) == ("list", "jobs")]
    assert [r.code for r in lists] == [200], after
    assert_claims_ran_elsewhere(postgres_url, "kleader", victim_claims, made, after)
    assert set(victim_claims) <= set(jobs)


def test_a_follower_killed_mid_stream_has_its_claims_run_elsewhere_once(
    replicas: Replicas,
    postgres_url: str,
    control_plane: ControlPlane,
    kwok_namespace: JobNamespace,
) -> None:
    leader, audit_start, balancer, names, stream = three_replicas_streaming(
        replicas, control_plane, "kfollower"
    )

    followers = [server for server in replicas.servers if server is not leader]
    before_kill = control_plane.audit_log.stat().st_size
    victim_claims, made = kill_with_jobs_made(
        replicas, postgres_url, control_plane, kwok_namespace.name, followers
    )
    assert stream.join() == [201] * len(names)
    assert all(status < 500 for status in balancer.statuses), balancer.statuses

    assert_one_job_each(
        replicas, control_plane, kwok_namespace.name, "kfollower", names, postgres_url, audit_start
    )
    after = manager_requests(control_plane, kwok_namespace.name, before_kill)
    assert_claims_ran_elsewhere(postgres_url, "kfollower", victim_claims, made, after)
    # The leader's watcher went on watching: no list of the Jobs again.
    assert not [r for r in after if (r.verb, r.resource) == ("list", "jobs")]
    assert replicas.one_leader() is leader


def assert_claims_ran_elsewhere(
    postgres_url: str, service: str, victim_claims: list[str], made: set[str], after: list[AuditRecord]
) -> None:
    """The killed replica's claims lapsed and a live replica submitted each again: those whose Job it had
    made (if any) were answered 409, which counts as done, once each."""
    assert all(count >= 2 for count in attempts(postgres_url, service, victim_claims).values())
    resubmitted = job_creations(after)
    assert {name: resubmitted[f"409 {name}"] for name in made} == dict.fromkeys(made, 1)
