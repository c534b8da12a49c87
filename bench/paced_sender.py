"""Events to ``POST /job/{service}`` at a steady rate (open loop), from a process of its own: as event
sources are, outside the manager. Usage: ``python -m bench.paced_sender URL SERVICE TOKEN COUNT RATE``.
Prints one JSON object: job id -> when its event was due (``time.monotonic``, comparable with the API
double's clock on the same machine). Latency counts from when an event was due, not from when it went out,
so that a manager too slow to take events on time is not let off (coordinated omission).
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys

import aiohttp


async def send_paced(url: str, service: str, token: str, count: int, rate: float) -> dict[str, float]:
    sent: dict[str, float] = {}
    headers = {"Authorization": f"Bearer {token}"}
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=0)  # as many connections as events in flight
    async with aiohttp.ClientSession(url, connector=connector) as http:

        async def send(index: int, due: float) -> None:
            payload = base64.b64encode(f"event {index}".encode())
            async with http.post(f"/job/{service}", data=payload, headers=headers) as answer:
                answer.raise_for_status()
                sent[answer.headers["X-Oscar-Job-Ids"]] = due

        start = loop.time()
        sends = []
        for index in range(count):
            due = start + index / rate
            await asyncio.sleep(max(due - loop.time(), 0))
            sends.append(asyncio.create_task(send(index, due)))
        await asyncio.gather(*sends)
    return sent


def main() -> None:
    url, service, token, count, rate = sys.argv[1:6]
    sent = asyncio.run(send_paced(url, service, token, int(count), float(rate)))
    json.dump(sent, sys.stdout)


if __name__ == "__main__":
    main()
