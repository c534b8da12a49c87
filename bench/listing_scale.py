"""The list endpoints at scale: ``GET /system/services`` with 10,000 services, and pages of
``GET /system/logs/{service}`` with 1,000,000 jobs of that service, against ``GET /health`` on the same
server in the same run.

The registry is seeded straight through SQL in bulk (not through the API, which would take hours for a
million jobs): services as the API stores them (one normalised definition, varied in name, owner,
visibility and paths), and jobs the way the dispatcher makes them (eight of a batch share one
``created_at``, so pages must break ties by id); PostgreSQL is then vacuumed and analysed, as autovacuum
would after so many inserts. ``oscar-manager serve`` runs as a process of its own, as in production, and
this process times requests to it one at a time as the admin, the figures of a group taken in turn so
that the machine's drifting load weighs on each alike:
- services: the whole list (about 13 MB) again, and after one service was updated through the API (the
  list then reads every version and renders the service that moved); against ``/health`` and against the
  same bytes served by a bare ASGI app in its own process (``bench.bare_body``): the transfer itself,
  most of it this process's HTTP client reading 13 MB. Also the first list after the start, once (every
  service rendered);
- jobs: the first page, the one after it, a page in the middle and the last page (each page's token as
  the API hands it out: the middle and last from the job before them).

Usage: ``python -m bench.listing_scale [--services 10000] [--jobs 1000000] [--runs 30] [--postgres]``.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import asyncpg
import httpx
from sqlalchemy import Table, insert, select
from sqlalchemy.ext.asyncio import create_async_engine

from oscar_manager.domain.jobs import JobStatus
from oscar_manager.domain.service import MinioDefault, new_token, normalise_new, parse_service
from oscar_manager.operations.jobs import page_token
from oscar_manager.registry.migrations import upgrade
from oscar_manager.registry.tables import JobRow, ServiceRow
from tests.support.components import PostgresServer, free_port
from tests.support.factories import ADMIN_PASSWORD, service_body
from tests.support.server import RunningServer, start_server, stop_server

SERVICE = "busy"  # the service with all the jobs
OWNERS = ("cluster_admin", "alice@egi.eu", "bob@egi.eu", "carol@egi.eu")
VISIBILITIES = ("private", "public", "restricted")
JOBS_PER_BATCH = 8  # jobs that share a created_at, as those of one dispatch batch do
ROWS_PER_INSERT = 20_000
SERVICES_TABLE = cast("Table", ServiceRow.__table__)
JOBS_TABLE = cast("Table", JobRow.__table__)


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]


def _template() -> dict[str, Any]:
    """A service as the API stores it (normalised, secrets apart), with an input, an output, variables."""
    service = normalise_new(
        parse_service(
            service_body(
                "template",
                input=[{"storage_provider": "minio", "path": "template/in"}],
                output=[{"storage_provider": "minio", "path": "template/out", "suffix": [".txt"]}],
                environment={"variables": {"MODEL": "small", "THRESHOLD": "0.5"}},
            )
        ),
        owner="cluster_admin",
        namespace="oscar-svc",
        minio=MinioDefault(endpoint="http://127.0.0.1:9000", region="us-east-1", verify=True),
    )
    definition = service.model_dump(mode="json", by_alias=True)
    definition["environment"]["secrets"] = {}
    return definition


def _service_row(template: dict[str, Any], index: int, now: datetime) -> dict[str, Any]:
    name = SERVICE if index == 0 else f"svc-{index:05d}"
    owner = OWNERS[index % len(OWNERS)]
    visibility = VISIBILITIES[index % len(VISIBILITIES)]
    token = new_token()
    definition = {
        **template,
        "name": name,
        "owner": owner,
        "visibility": visibility,
        "token": token,
        "allowed_users": [OWNERS[(index + 1) % len(OWNERS)]] if visibility == "restricted" else [],
        "input": [{**template["input"][0], "path": f"{name}/in"}],
        "output": [{**template["output"][0], "path": f"{name}/out"}],
    }
    return {
        "name": name,
        "owner": owner,
        "visibility": visibility,
        "token": token,
        "definition": definition,
        "secrets": {},
        "created_at": now,
        "updated_at": now,
    }


JOB_COLUMNS = (
    "id",
    "service",
    "status",
    "attempts",
    "created_at",
    "started_at",
    "finished_at",
    "exit_code",
    "log",
)

SQLITE_INSERT_JOB = (
    f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)}) VALUES ({', '.join('?' * len(JOB_COLUMNS))})"  # noqa: S608
)


def _job_rows(start: int, stop: int, origin: datetime) -> list[tuple[Any, ...]]:
    """Finished jobs, newest last, as tuples in the order of ``JOB_COLUMNS``."""
    rows = []
    for index in range(start, stop):
        created = origin + timedelta(milliseconds=index // JOBS_PER_BATCH)
        started, finished = created + timedelta(seconds=1), created + timedelta(seconds=2)
        rows.append(
            (
                f"{SERVICE}-{index:08d}",
                SERVICE,
                JobStatus.SUCCEEDED.value,
                1,
                created,
                started,
                finished,
                0,
                "done\n",
            )
        )
    return rows


def _sqlite_time(value: datetime) -> str:
    # As SQLAlchemy stores a DateTime in SQLite (UTC, naive, always with microseconds).
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


async def _insert_jobs(url: str, jobs: int, origin: datetime) -> None:
    """A million rows through the drivers' bulk paths (executemany, COPY): SQLAlchemy's insert of dicts
    would take minutes."""
    if url.startswith("sqlite"):
        connection = sqlite3.connect(url.split("///", 1)[1])
        try:
            with connection:
                for chunk in range(0, jobs, ROWS_PER_INSERT):
                    rows = _job_rows(chunk, min(chunk + ROWS_PER_INSERT, jobs), origin)
                    connection.executemany(
                        SQLITE_INSERT_JOB,
                        [(*row[:4], *map(_sqlite_time, row[4:7]), *row[7:]) for row in rows],
                    )
        finally:
            connection.close()
        return
    database = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        for chunk in range(0, jobs, ROWS_PER_INSERT):
            rows = _job_rows(chunk, min(chunk + ROWS_PER_INSERT, jobs), origin)
            await database.copy_records_to_table("jobs", records=rows, columns=JOB_COLUMNS)
        await database.execute("VACUUM ANALYZE")  # as autovacuum would, after so many inserts
    finally:
        await database.close()


async def seed(url: str, *, services: int, jobs: int) -> dict[str, float]:
    """Bulk inserts on a migrated, empty registry; how long each part took."""
    took: dict[str, float] = {}
    template = _template()
    now = datetime.now(UTC)
    started = time.perf_counter()
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            rows = [_service_row(template, index, now) for index in range(services)]
            await connection.execute(insert(SERVICES_TABLE), rows)
    finally:
        await engine.dispose()
    took["services"] = time.perf_counter() - started
    started = time.perf_counter()
    await _insert_jobs(url, jobs, now - timedelta(days=30))
    took["jobs"] = time.perf_counter() - started
    return took


async def middle_token(url: str, position: int) -> str:
    """The token of the page that starts after the job at ``position`` (newest first)."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            row = (
                await connection.execute(
                    select(JOBS_TABLE.c.created_at, JOBS_TABLE.c.id)
                    .where(JOBS_TABLE.c.service == SERVICE)
                    .order_by(JOBS_TABLE.c.created_at.desc(), JOBS_TABLE.c.id.desc())
                    .offset(position)
                    .limit(1)
                )
            ).one()
    finally:
        await engine.dispose()
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
    return page_token(created, row.id)


Action = Callable[[], Awaitable[object]]


@dataclass
class Timed:
    """A request to time; ``before`` runs ahead of each one, untimed."""

    name: str
    action: Action
    before: Action | None = None
    note: str = ""
    samples: list[float] = field(default_factory=list)


async def interleaved(measured: list[Timed], runs: int) -> list[Timed]:
    """Each of ``measured`` ``runs`` times, one of each in turn (after a warm-up), so that the machine's
    load, which drifts, weighs on all of them alike. Times in ms."""
    for entry in measured:
        for _ in range(3):
            await entry.action()
    for _ in range(runs):
        for entry in measured:
            if entry.before is not None:
                await entry.before()
            start = time.perf_counter()
            await entry.action()
            entry.samples.append((time.perf_counter() - start) * 1000)
    return measured


@contextlib.asynccontextmanager
async def bare_server(body: bytes, workdir: Path) -> AsyncIterator[str]:
    """``bench.bare_body`` serving ``body``; yields its URL."""
    (workdir / "body.json").write_bytes(body)
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.bare_body", str(workdir / "body.json"), str(port)
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(100):
                with contextlib.suppress(httpx.TransportError):
                    await http.get(url)
                    break
                await asyncio.sleep(0.1)
        yield url
    finally:
        process.terminate()
        await process.wait()


async def measure(
    server: RunningServer, args: argparse.Namespace, jobs_url: str, workdir: Path
) -> tuple[list[Timed], list[Timed]]:
    auth = ("oscar", ADMIN_PASSWORD)
    async with httpx.AsyncClient(base_url=server.url, auth=auth, timeout=120) as http:

        async def get(path: str, params: dict[str, str] | None = None) -> httpx.Response:
            answer = await http.get(path, params=params)
            answer.raise_for_status()
            return answer

        changes = itertools.count()

        async def change_a_service() -> None:
            body = service_body("svc-00001", environment={"variables": {"CHANGE": str(next(changes))}})
            (await http.put("/system/services", json=body)).raise_for_status()

        health = functools.partial(get, "/health")
        started = time.perf_counter()
        listed = await get("/system/services")
        first = Timed("services: first list", health, note="after start: every service rendered")
        first.samples.append((time.perf_counter() - started) * 1000)
        note = f"{len(listed.json())} services, {len(listed.content) / 1e6:.1f} MB"
        async with bare_server(listed.content, workdir) as bare_url:
            services = await interleaved(
                [
                    Timed("GET /health (baseline)", health),
                    Timed("the same body, bare server", functools.partial(get, bare_url), note="(baseline)"),
                    Timed("services: listed again", functools.partial(get, "/system/services"), note=note),
                    Timed(
                        "services: after a change",
                        functools.partial(get, "/system/services"),
                        before=change_a_service,
                        note="one service updated before each",
                    ),
                ],
                args.runs,
            )

        logs = f"/system/logs/{SERVICE}"
        first_page = (await get(logs)).json()
        pages = {
            "jobs: first page": "",
            "jobs: second page": first_page["next_page"],
            "jobs: a page in the middle": await middle_token(jobs_url, args.jobs // 2),
            "jobs: the last page": await middle_token(jobs_url, args.jobs - 11),
        }
        measured = [Timed("GET /health (baseline)", health)]
        for name, token in pages.items():
            params = {"page": token} if token else None
            note = _page((await get(logs, params)).json())
            measured.append(Timed(name, functools.partial(get, logs, params), note=note))
        jobs = await interleaved(measured, args.runs * 4)
    return [*services, first], jobs


def _page(body: dict[str, Any]) -> str:
    remaining = body.get("remaining_jobs", "absent")
    return f"{len(body['jobs'])} jobs, remaining_jobs {remaining}"


def report(registry: str, took: dict[str, float], services: list[Timed], jobs: list[Timed]) -> None:
    print(f"registry {registry}; seeded in {took['services']:.1f} s (services) + {took['jobs']:.1f} s (jobs)")
    for measured in (services, jobs):
        health = statistics.median(measured[0].samples)
        bare = statistics.median(measured[1].samples)
        for figure in measured:
            p50 = statistics.median(figure.samples)
            against = f"x{p50 / health:6.1f} /health"
            if figure.name.startswith("services"):
                against += f", x{p50 / bare:4.2f} bare body"
            print(
                f"  {figure.name:<28} p50 {p50:8.2f} ms  p99 {percentile(figure.samples, 0.99):8.2f} ms"
                f"  {against:<30} {figure.note}"
            )


async def run(args: argparse.Namespace, url: str, workdir: Path) -> None:
    await asyncio.to_thread(upgrade, url)
    took = await seed(url, services=args.services, jobs=args.jobs)
    server = await asyncio.to_thread(
        start_server,
        workdir,
        free_port(),
        env={"OSCAR_DATABASE_URL": url, "OSCAR_PASSWORD": ADMIN_PASSWORD},
    )
    try:
        services, jobs = await measure(server, args, url, workdir)
    finally:
        stop_server(server)
    report("PostgreSQL" if url.startswith("postgresql") else "SQLite", took, services, jobs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--postgres", action="store_true", help="on a throwaway PostgreSQL server")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="oscar-bench-listing-"))
    server = PostgresServer.start() if args.postgres else None
    try:
        url = server.url if server else f"sqlite+aiosqlite:///{workdir / 'oscar.db'}"
        asyncio.run(run(args, url, workdir))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
