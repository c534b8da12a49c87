"""Waiting for jobs through the API, as a client would."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

FINISHED = ("Succeeded", "Failed")


async def wait_for_jobs(
    client: httpx.AsyncClient, service: str, *, count: int, within: float = 30.0
) -> dict[str, dict[str, Any]]:
    """Poll ``/system/logs/{service}`` until ``count`` jobs have finished; return them."""
    deadline = time.monotonic() + within
    jobs: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        jobs = await all_jobs(client, service)
        if len(jobs) >= count and all(job["status"] in FINISHED for job in jobs.values()):
            return jobs
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} finished job(s) of {service}, got {jobs}")


async def all_jobs(client: httpx.AsyncClient, service: str) -> dict[str, dict[str, Any]]:
    """Every job of the service, following ``next_page``."""
    jobs: dict[str, dict[str, Any]] = {}
    page = ""
    while True:
        response = await client.get(f"/system/logs/{service}", params={"page": page})
        assert response.status_code == 200, response.text
        body = response.json()
        jobs.update(body["jobs"])
        page = body.get("next_page", "")
        if not page:
            return jobs


async def settle(seconds: float = 0.5) -> None:
    """Give background work a chance to (wrongly) do something before asserting it did not."""
    await asyncio.sleep(seconds)


async def processed(client: httpx.AsyncClient, service: str) -> list[str]:
    """The input file of each job of ``service``, from the ``processing <name>`` line its script logs."""
    names: list[str] = []
    for job_id in await all_jobs(client, service):
        log = (await client.get(f"/system/logs/{service}/{job_id}")).text
        names.extend(line.split()[-1] for line in log.splitlines() if line.startswith("processing "))
    return sorted(names)
