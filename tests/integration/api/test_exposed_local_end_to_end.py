"""An exposed service end to end on the embedded default: the real local backend runs Python's
http.server in its sandbox, and the manager's proxy reaches it at the service's exposed path; its
deployment status and logs are what the dashboard reads; stopped, it answers 503, started again, it
serves."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable

import httpx

from oscar_manager.settings import Settings
from tests.support.app import NO_AUTH, app_client
from tests.support.factories import service_body

SERVER = "exec python3 -m http.server 8080 --bind 127.0.0.1\n"
# Go's metav1.Time, as the dashboard's Deployment page gives it to ``new Date``.
GO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_an_http_server_answers_at_its_exposed_path(settings: Settings) -> None:
    async with app_client(settings) as http:
        body = service_body("files", script=SERVER, cpu="1", expose={"api_port": 8080})
        created = await http.post("/system/services", json=body)
        assert created.status_code == 201, created.text

        async def ready() -> bool:
            return bool((await http.get("/system/services/files/deployment")).json()["state"] == "ready")

        await eventually(ready)
        answer = await http.get("/system/services/files/exposed/", auth=NO_AUTH)
        assert answer.status_code == 200, answer.text
        assert "Directory listing" in answer.text

        # What the dashboard shows of it: its state, instances and kind, and the server's own log.
        status = (await http.get("/system/services/files/deployment")).json()
        assert (status["active_instances"], status["affected_instances"]) == (1, 0)
        assert (status["service_name"], status["resource_kind"]) == ("files", "exposed_service")
        assert GO_TIME.fullmatch(status["last_transition_time"]), status

        async def logged() -> bool:
            logs = (await http.get("/system/services/files/deployment/logs?timestamps=true")).json()
            return any('"GET / HTTP/1.1" 200' in entry["message"] for entry in logs["entries"])

        await eventually(logged)
        logs = (await http.get("/system/services/files/deployment/logs?timestamps=true")).json()
        assert logs["available"] is True
        assert all(GO_TIME.fullmatch(entry["timestamp"]) for entry in logs["entries"]), logs

        assert (await http.post("/system/services/files/stop")).json()["state"] == "stopped"
        stopped = await http.get("/system/services/files/exposed/", auth=NO_AUTH)
        assert stopped.status_code == 503
        assert "is stopped" in stopped.text

        assert (await http.post("/system/services/files/start")).status_code == 200

        async def serving() -> bool:
            answer: httpx.Response = await http.get("/system/services/files/exposed/", auth=NO_AUTH)
            return answer.status_code == 200

        await eventually(serving)
