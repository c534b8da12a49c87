"""Paging a service's jobs over many rows, on SQLite and PostgreSQL: every job once, newest first, with
many jobs sharing one ``created_at`` (those of one dispatch batch do), and ``remaining_jobs`` exact while
it is at most ``REMAINING_COUNTED``, left out past it.

A hundred thousand rows rather than the benchmark's million (``bench.listing_scale``): what is checked
does not depend on the size, and the test stays a few seconds long on each database.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from sqlalchemy import Table, insert

from oscar_manager.domain.jobs import JobStatus
from oscar_manager.domain.principal import Principal
from oscar_manager.domain.service import MinioDefault, normalise_new, parse_service
from oscar_manager.operations import Database, jobs
from oscar_manager.registry.tables import JobRow
from tests.support.factories import service_body

pytestmark = pytest.mark.asyncio

ADMIN = Principal(uid="oscar", is_admin=True)
JOBS = 100_000
# Jobs per created_at, in turn: alone, a dispatch batch, and groups longer than a page (so that a page
# ends, and the next one starts, in the middle of jobs of one instant).
TIES = (1, 8, 250, 3, 997, 2, 40)
PAGE = 997


def _rows(origin: datetime) -> list[dict[str, Any]]:
    chance = random.Random(17)  # noqa: S311 - shuffled test data, the same every run
    rows: list[dict[str, Any]] = []
    instant = 0
    while len(rows) < JOBS:
        created = origin + timedelta(microseconds=instant * 1500)
        size = min(TIES[instant % len(TIES)], JOBS - len(rows))
        rows += [
            {
                "id": f"svc-{chance.getrandbits(64):016x}",  # ids in no order of their own
                "service": "svc",
                "status": JobStatus.SUCCEEDED.value,
                "attempts": 1,
                "created_at": created,
                "log": "",
            }
            for _ in range(size)
        ]
        instant += 1
    chance.shuffle(rows)  # inserted in no order either
    return rows


@pytest.fixture
async def many_jobs(database: Database) -> list[tuple[datetime, str]]:
    """The jobs of ``svc``, as (created_at, id), newest first."""
    service = normalise_new(
        parse_service(service_body("svc")),
        owner="cluster_admin",
        namespace="ns",
        minio=MinioDefault(endpoint="", region="us-east-1", verify=True),
    )
    async with database.transaction() as tx:
        await tx.services.add(service)
    rows = _rows(datetime(2026, 1, 1, tzinfo=UTC))
    async with database.engine.begin() as connection:
        for start in range(0, len(rows), 10_000):
            await connection.execute(insert(cast("Table", JobRow.__table__)), rows[start : start + 10_000])
    return sorted(((row["created_at"], row["id"]) for row in rows), reverse=True)


async def test_pages_list_every_job_once_newest_first(
    database: Database, many_jobs: list[tuple[datetime, str]]
) -> None:
    listed: list[tuple[datetime, str]] = []
    remaining: list[int | None] = []
    token = ""
    while True:
        async with database.reading() as tx:
            page = await jobs.page(tx, principal=ADMIN, service="svc", page=token, limit=PAGE)
        assert len(page.jobs) == PAGE or page.next_page is None
        listed += [(job.created_at, job.id) for job in page.jobs]
        remaining.append(page.remaining)
        if page.next_page is None:
            break
        token = page.next_page
    assert listed == many_jobs
    # Exact once at most REMAINING_COUNTED remain; left out before that, and on the last page.
    after_each = [JOBS - PAGE * (n + 1) for n in range(len(remaining))]
    expected = [left if 0 < left <= jobs.REMAINING_COUNTED else None for left in after_each]
    assert remaining == expected
    assert any(value is not None for value in remaining)
    assert remaining[0] is None


async def test_a_page_from_the_middle_of_an_instant(
    database: Database, many_jobs: list[tuple[datetime, str]]
) -> None:
    """The token of any job continues right after it, even among jobs of its own instant."""
    for position in (0, 9, 260, 50_000, JOBS - 2):
        created, job_id = many_jobs[position]
        async with database.reading() as tx:
            page = await jobs.page(
                tx, principal=ADMIN, service="svc", page=jobs.page_token(created, job_id), limit=5
            )
        assert [(job.created_at, job.id) for job in page.jobs] == many_jobs[position + 1 : position + 6]
