"""A bucket's services, with 10,000 services, against what it cost before (kept here as the baselines),
in the same run:
- who uses a bucket: what a service's deletion (and an update that drops a bucket, and the buckets API's
  delete) asks for each of its buckets; before, every definition read and validated;
- the input routes of a bucket's objects: what the intake reads for each batch of storage events; before,
  every service's inputs.

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


async def every_route(database: Database) -> list[str]:
    async with database.transaction() as tx:
        routes = await tx.services.input_routes()
    return sorted({route.service for route in routes if route.bucket == BUCKET})


async def routes_of_bucket(database: Database) -> list[str]:
    async with database.transaction() as tx:
        routes = await tx.services.input_routes(buckets={BUCKET})
    return sorted({route.service for route in routes if route.bucket == BUCKET})


async def timed(step: object) -> tuple[float, list[str]]:
    started = time.perf_counter()
    found = await step  # type: ignore[misc]
    return (time.perf_counter() - started) * 1000, found


async def run(args: argparse.Namespace, url: str) -> None:
    await asyncio.to_thread(upgrade, url)
    await seed(url, services=args.services, jobs=0)
    database = Database(url)
    try:
        pairs = {
            "users of a bucket": (storage_fields, whole_definitions),
            "routes of a bucket's objects": (routes_of_bucket, every_route),
        }
        times: dict[str, tuple[list[float], list[float]]] = {what: ([], []) for what in pairs}
        for _ in range(args.runs):
            for what, (new, old) in pairs.items():
                took, now = await timed(new(database))
                times[what][0].append(took)
                took, before = await timed(old(database))
                times[what][1].append(took)
                assert before == now == [BUCKET], (what, before, now)
    finally:
        await database.dispose()
    registry = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
    print(f"{registry}, {args.services} services, {args.runs} runs each, interleaved")
    for what, (new_times, old_times) in times.items():
        new_p50, old_p50 = statistics.median(new_times), statistics.median(old_times)
        print(
            f"  {what}: p50 {new_p50:.1f} ms (max {max(new_times):.1f}); before p50 {old_p50:.1f} ms"
            f" (max {max(old_times):.1f}); ratio {new_p50 / old_p50:.3f}x"
        )


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
