"""Several ``oscar-manager serve`` processes on one PostgreSQL and one MinIO, as replicas behind a Service.

``Replicas`` starts, stops (SIGTERM), kills (SIGKILL) and restarts them; ``Balancer`` sends requests to
the live ones as a Kubernetes Service would, trying the next one when a connection is refused or dropped
(what a client sees while a pod goes away), and keeps every answer's status so that a test can tell that
none was a 5xx.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from oscar_manager.operations import Database
from tests.support.components import free_port
from tests.support.minio import MinioServer
from tests.support.server import RunningServer, crash_server, start_server, stop_server

PASSWORD = "replica-pw"


@dataclass
class Replicas:
    root: Path
    env: dict[str, str]
    servers: list[RunningServer] = field(default_factory=list)
    _names: itertools.count[int] = field(default_factory=itertools.count)

    def start(self) -> RunningServer:
        workdir = self.root / f"replica-{next(self._names)}"
        workdir.mkdir(parents=True)
        server = start_server(workdir, free_port(), env=self.env)
        self.servers.append(server)
        return server

    def stop(self, server: RunningServer) -> None:
        """SIGTERM, as Kubernetes stops a pod: it finishes what it answers and hands its claims back."""
        stop_server(server)
        self.servers.remove(server)

    def kill(self, server: RunningServer) -> None:
        crash_server(server)
        self.servers.remove(server)

    def stop_all(self) -> None:
        for server in list(self.servers):
            self.stop(server)

    def info(self, server: RunningServer) -> dict[str, Any]:
        with client(server) as http:
            storage: dict[str, Any] = http.get("/system/info").json()["storage"]
            return storage

    def leaders(self) -> list[RunningServer]:
        return [server for server in self.servers if self.info(server)["leader"]]

    def one_leader(self, within: float = 15) -> RunningServer:
        """The one replica that leads, once there is exactly one."""
        deadline = time.monotonic() + within
        leaders: list[RunningServer] = []
        while time.monotonic() < deadline:
            leaders = self.leaders()
            if len(leaders) == 1:
                return leaders[0]
            time.sleep(0.1)
        raise AssertionError(f"expected one leader among {len(self.servers)} replicas, got {len(leaders)}")


def replica_env(database_url: str, minio: MinioServer | None, **extra: str) -> dict[str, str]:
    """The replicas' shared environment: the database, MinIO (or other storage given in ``extra``)."""
    storage = (
        {
            "MINIO_ENDPOINT": minio.endpoint,
            "MINIO_ACCESS_KEY": minio.access_key,
            "MINIO_SECRET_KEY": minio.secret_key,
        }
        if minio is not None
        else {}
    )
    return {
        "OSCAR_DATABASE_URL": database_url,
        **storage,
        "OSCAR_PASSWORD": PASSWORD,
        # Short, so that a test sees claims lapse and a leader move in seconds.
        "OSCAR_CLAIM_LEASE": "3",
        "OSCAR_LEADER_INTERVAL": "0.5",
        **extra,
    }


def client(server: RunningServer) -> httpx.Client:
    return httpx.Client(base_url=server.url, auth=("oscar", PASSWORD), timeout=30)


class Balancer:
    """Requests to the live replicas in turn; a refused or dropped connection goes to the next one."""

    def __init__(self, replicas: Replicas) -> None:
        self._replicas = replicas
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self.statuses: Counter[int] = Counter()
        self.retries = 0

    def post(self, path: str, *, content: bytes, headers: dict[str, str]) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            servers = list(self._replicas.servers)
            if not servers:
                time.sleep(0.05)
                continue
            server = servers[next(self._turn) % len(servers)]
            try:
                with client(server) as http:
                    status = http.post(path, content=content, headers=headers).status_code
            except httpx.TransportError:
                with self._lock:
                    self.retries += 1
                time.sleep(0.05)
                continue
            with self._lock:
                self.statuses[status] += 1
            return status
        raise AssertionError("no replica answered for a minute")


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


class Stream:
    """``/job`` events (:func:`send_events`) from ``senders`` threads at once (as from several clients),
    each its share of ``names``."""

    def __init__(
        self, balancer: Balancer, service: str, names: list[str], *, every: float, senders: int = 1
    ) -> None:
        self.statuses: list[int] = []
        self._threads = [
            threading.Thread(
                target=lambda share=names[start::senders]: self.statuses.extend(
                    send_events(balancer, service, share, every=every)
                )
            )
            for start in range(senders)
        ]
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float = 120) -> list[int]:
        for thread in self._threads:
            thread.join(timeout=timeout)
        return self.statuses


def kill_holding_claims(
    replicas: Replicas,
    database_url: str,
    among: list[RunningServer],
    within: float = 30,
    when: Callable[[list[str]], bool] = bool,
) -> list[str]:
    """SIGKILL the first of ``among`` seen holding claims (whose jobs pass ``when``); the jobs of the
    events it died holding (read again once it is dead: it may have finished some of those seen)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        held = claims_by_replica(database_url)
        for server in among:
            pid = f"-{server.process.pid}-"  # in the replica's name (``runtime.replica_name``)
            names = {replica for replica in held.values() if replica is not None and pid in replica}
            if names and when([job for job, replica in held.items() if replica in names]):
                replicas.kill(server)
                left = claims_by_replica(database_url)
                return [job for job, replica in left.items() if replica in names]
        time.sleep(0.05)
    raise AssertionError("no replica ever held a claim")


def finished_jobs(replicas: Replicas, service: str, count: int, within: float = 120) -> dict[str, Any]:
    """The service's jobs once ``count`` of them have all finished, read from any live replica."""
    deadline = time.monotonic() + within
    jobs: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with client(replicas.servers[0]) as http:
            jobs = http.get(f"/system/logs/{service}").json()["jobs"]
        if len(jobs) >= count and all(j["status"] in ("Succeeded", "Failed") for j in jobs.values()):
            return jobs
        time.sleep(0.2)
    raise AssertionError(f"expected {count} finished jobs of {service}, got {len(jobs)}: {jobs}")


def registry(database_url: str, work: Any) -> Any:
    """``work(tx)``'s result, read from the shared database as another process would."""

    async def read() -> Any:
        database = Database(database_url)
        try:
            async with database.transaction() as tx:
                return await work(tx)
        finally:
            await database.dispose()

    return asyncio.run(read())


def attempts(database_url: str, service: str, job_ids: list[str]) -> dict[str, int]:
    async def read(tx: Any) -> dict[str, int]:
        found = {job_id: await tx.jobs.get(service, job_id) for job_id in job_ids}
        return {job_id: job.attempts for job_id, job in found.items() if job is not None}

    result: dict[str, int] = registry(database_url, read)
    return result


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
