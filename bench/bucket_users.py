"""Who uses a bucket, with 10,000 services: what a service's deletion (and an update that drops a bucket, and
the buckets API's delete) asks for each of its buckets, against reading and validating every definition
(what it did before, kept here as the baseline) in the same run.

The registry is seeded in bulk as ``bench.listing_scale`` seeds it (each service its own input and output
buckets); the bucket looked for is one service's input bucket. Timed in turn, in one transaction each.

Usage: ``python -m bench.bucket_users [--services 10000] [--runs 20] [--postgres]``. Prints figures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bench.listing_scale import seed
from oscar_manager.operations import Database, service_buckets
from oscar_manager.registry.migrations import upgrade
from tests.support.components import PostgresServer

BUCKET = "svc-05000"  # one service's input bucket (svc-05000/in)


async def whole_definitions(database: Database) -> list[str]:
    async with database.transaction() as tx:
        services = await tx.services.list()
        return [s.name for s in services if BUCKET in service_buckets.own_buckets(s)]


async def storage_fields(database: Database) -> list[str]:
    async with database.transaction() as tx:
        return await service_buckets.using_bucket(tx, BUCKET)


async def timed(step: object) -> tuple[float, list[str]]:
    started = time.perf_counter()
    found = await step  # type: ignore[misc]
    return (time.perf_counter() - started) * 1000, found


async def run(args: argparse.Namespace, url: str) -> None:
    await asyncio.to_thread(upgrade, url)
    await seed(url, services=args.services, jobs=0)
    database = Database(url)
    try:
        baseline: list[float] = []
        new: list[float] = []
        for _ in range(args.runs):
            took, before = await timed(whole_definitions(database))
            baseline.append(took)
            took, now = await timed(storage_fields(database))
            new.append(took)
            assert before == now == [BUCKET], (before, now)
    finally:
        await database.dispose()
    registry = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
    old_p50, new_p50 = statistics.median(baseline), statistics.median(new)
    print(f"{registry}, {args.services} services, {args.runs} runs each, interleaved")
    print(f"  users of a bucket (fields + text prefilter): p50 {new_p50:.1f} ms, max {max(new):.1f} ms")
    print(f"  every definition validated (before):        p50 {old_p50:.1f} ms, max {max(baseline):.1f} ms")
    print(f"  ratio: {new_p50 / old_p50:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--postgres", action="store_true", help="on a throwaway PostgreSQL server")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="oscar-bench-bucket-users-"))
    server = PostgresServer.start() if args.postgres else None
    try:
        url = server.url if server else f"sqlite+aiosqlite:///{workdir / 'oscar.db'}"
        asyncio.run(run(args, url))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
