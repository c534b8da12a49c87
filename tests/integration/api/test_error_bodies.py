"""Issue 13: error bodies are the message as text, as upstream answers them, on every route and error path;
the JSON form only for a caller that prefers JSON to text (no real client does by default)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from oscar_manager.settings import Settings
from tests.support.app import NO_AUTH, app_client
from tests.support.factories import service_body

pytestmark = pytest.mark.asyncio

AXIOS = "application/json, text/plain, */*"  # what the dashboard sends on every call
JSON_ONLY = "application/json"
ORIGIN = "https://dashboard.example"


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(settings.model_copy(update={"oscar_cors_origins": [ORIGIN]})) as http:
        yield http


def assert_text(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    for fragment in fragments:
        assert fragment in response.text
    assert not response.text.lstrip().startswith(("{", "["))


async def with_service(client: httpx.AsyncClient) -> str:
    body = service_body(input=[{"storage_provider": "minio.default", "path": "cowsay/in"}])
    assert (await client.post("/system/services", json=body)).status_code == 201
    token: str = (await client.get("/system/services/cowsay")).json()["token"]
    return token


class TestEveryRouteFamily:
    """One error of each family, as a client with no Accept preference (Go, requests, curl) gets it."""

    async def test_services(self, client: httpx.AsyncClient) -> None:
        assert_text(await client.get("/system/services/nothing"), 404, "service 'nothing' not found")
        assert_text(await client.delete("/system/services/nothing"), 404, "service 'nothing' not found")
        await with_service(client)
        assert_text(
            await client.post("/system/services", json=service_body()), 409, "'cowsay' already exists"
        )
        assert_text(await client.post("/system/services", content=b'{"name": '), 400)
        assert_text(await client.post("/system/services", json={"name": "x", "script": "s"}), 400, "image")

    async def test_logs(self, client: httpx.AsyncClient) -> None:
        await with_service(client)
        assert_text(
            await client.get("/system/logs/cowsay/gone"), 404, "job 'gone' of service 'cowsay' not found"
        )
        assert_text(await client.get("/system/logs/cowsay?page=%%%"), 400, "page token")

    async def test_buckets(self, client: httpx.AsyncClient) -> None:
        assert_text(await client.get("/system/buckets/missing-bucket"), 404, "'missing-bucket'")
        await with_service(client)
        assert_text(await client.delete("/system/buckets/cowsay"), 409, "used by service(s) cowsay")
        assert_text(await client.get("/system/buckets/cowsay/objects/in/none.txt"), 404, "'in/none.txt'")
        presign = await client.post(
            "/system/buckets/cowsay/presign", json={"object_key": "a", "operation": "x"}
        )
        assert_text(presign, 400, "'x'")
        assert_text(await client.get("/storage/cowsay/a?operation=download&expires=1&signature=x"), 403)

    async def test_invocations(self, client: httpx.AsyncClient) -> None:
        token = await with_service(client)
        bearer = {"Authorization": f"Bearer {token}"}
        assert_text(
            await client.post("/run/cowsay", content=b"%%% not base64", headers=bearer), 400, "base64"
        )
        assert_text(await client.post("/job/cowsay", content=b"eA==", auth=NO_AUTH), 401)
        assert_text(await client.post("/job/nothing", content=b"eA=="), 404, "service 'nothing' not found")

    async def test_events_and_system(self, client: httpx.AsyncClient) -> None:
        assert_text(await client.post("/events/minio", json={}, auth=NO_AUTH), 401, "webhook token")
        assert_text(await client.get("/system/info", auth=("oscar", "wrong")), 401)

    async def test_validation_is_a_400_in_words(self, client: httpx.AsyncClient) -> None:
        await with_service(client)
        answer = await client.post("/system/buckets/cowsay/presign", json={"operation": "download"})
        assert_text(answer, 400, "object_key", "Field required")
        assert_text(await client.delete("/system/services/cowsay?purge=perhaps"), 400, "purge")

    async def test_body_over_the_limit(self, settings: Settings) -> None:
        async with app_client(settings.model_copy(update={"oscar_max_body_bytes": 100})) as client:
            assert_text(await client.post("/system/services", content=b"x" * 101), 413, "limit of 100 bytes")

    async def test_what_starlette_answers_itself(self, client: httpx.AsyncClient) -> None:
        assert_text(await client.get("/no/such/route"), 404, "/no/such/route")
        wrong_method = await client.patch("/system/services")
        assert_text(wrong_method, 405, "PATCH")
        assert wrong_method.headers["allow"]
        assert_text(await client.get("/static/docs/nothing.js"), 404)


class TestNegotiation:
    async def test_axios_and_requests_get_text(self, client: httpx.AsyncClient) -> None:
        for accept in (AXIOS, "*/*", "text/plain", "text/html,application/xhtml+xml,*/*;q=0.8"):
            response = await client.get("/system/services/nothing", headers={"Accept": accept})
            assert_text(response, 404, "service 'nothing' not found")
            assert "Accept" in response.headers["vary"]

    @pytest.mark.parametrize(
        "accept", [JSON_ONLY, "application/json, */*;q=0.5", "application/json, text/*;q=0.9"]
    )
    async def test_json_when_preferred(self, client: httpx.AsyncClient, accept: str) -> None:
        response = await client.get("/system/services/nothing", headers={"Accept": accept})
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"error": "NotFound", "detail": "service 'nothing' not found"}

    async def test_json_form_of_every_kind(self, client: httpx.AsyncClient) -> None:
        json_only = {"Accept": JSON_ONLY}
        await with_service(client)
        duplicate = await client.post("/system/services", json=service_body(), headers=json_only)
        assert duplicate.json()["error"] == "Conflict"
        invalid = await client.post("/system/buckets/cowsay/presign", json={}, headers=json_only)
        assert (invalid.status_code, invalid.json()["error"]) == (400, "BadRequest")
        assert "object_key" in invalid.text
        unknown = await client.get("/no/such/route", headers=json_only)
        assert (unknown.status_code, unknown.json()["error"]) == (404, "NotFound")
        method = await client.patch("/system/services", headers=json_only)
        assert (method.status_code, method.json()["error"]) == (405, "MethodNotAllowed")

    async def test_401_keeps_its_challenge(self, client: httpx.AsyncClient) -> None:
        for accept in (AXIOS, JSON_ONLY):
            response = await client.get("/system/services", auth=NO_AUTH, headers={"Accept": accept})
            assert response.status_code == 401
            assert response.headers["www-authenticate"].startswith("Basic realm=")
        bearer = await client.post("/events/minio", json={}, auth=NO_AUTH)
        assert bearer.headers["www-authenticate"].startswith("Bearer")

    async def test_cors_headers_on_error_answers(self, client: httpx.AsyncClient) -> None:
        origin = {"Origin": ORIGIN, "Accept": AXIOS}
        for response in (
            await client.get("/system/services/nothing", headers=origin),
            await client.get("/system/services", auth=NO_AUTH, headers=origin),
            await client.get("/no/such/route", headers=origin),
            await client.post("/system/buckets/b/presign", json={}, headers=origin),
        ):
            assert response.status_code >= 400
            assert response.headers["access-control-allow-origin"] == ORIGIN
            assert response.headers["content-type"] == "text/plain; charset=utf-8"
