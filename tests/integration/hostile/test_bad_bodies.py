"""Issue 12 item 8: bodies built to break the parsers get a precise 4xx, write nothing, and never hold the
event loop; strangers cannot tell which services exist; anything unexpected is a 500 in the error format.

Every body is what an attacker with a service token (or the admin's, or a user's, credentials) can send.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import httpx
import pytest
import yaml

from oscar_manager.app import create_app
from oscar_manager.domain.events import ObjectEvent
from oscar_manager.events.minio_listen import MinioListener
from oscar_manager.operations import Database
from oscar_manager.settings import Settings
from tests.support.app import NO_AUTH, app_client
from tests.support.factories import ADMIN_PASSWORD, service_body
from tests.support.oidc import FakeIssuer, egi_issuer, with_egi

pytestmark = pytest.mark.asyncio

WEBHOOK_TOKEN = "w" * 40
DEEP = 100_000
LONG_INTEGER = "7" * 5000

DEEP_JSON = ('{"name": "deep", "image": "i", "script": "s", "x": ' + "[" * DEEP + "]" * DEEP + "}").encode()
LONG_INTEGER_JSON = f'{{"name": "long", "image": "i", "script": "s", "n": {LONG_INTEGER}}}'.encode()
DEEP_YAML = ("name: deep\nimage: i\nscript: s\nx: " + "[" * DEEP + "]" * DEEP + "\n").encode()
DEEP_BLOCK_YAML = (
    "name: deep\nimage: i\nscript: s\n" + "".join(f"{'  ' * i}k{i}:\n" for i in range(300))
).encode()
LONG_INTEGER_YAML = f"name: long\nimage: i\nscript: s\nn: {LONG_INTEGER}\n".encode()
HEX_INTEGER_YAML = f"name: long\nimage: i\nscript: s\nn: 0x{'f' * 5000}\n".encode()
INFINITE_JSON = b'{"name": "inf", "image": "i", "script": "s", "n": 1e999}'
DATE_YAML = b"name: dated\nimage: i\nscript: s\nsince: 2024-05-01\n"

DEFINITIONS = [
    pytest.param(DEEP_JSON, "nested too deeply", id="deep-json"),
    pytest.param(LONG_INTEGER_JSON, "integer too long", id="long-integer-json"),
    pytest.param(DEEP_YAML, "nested too deeply", id="deep-flow-yaml"),
    pytest.param(DEEP_BLOCK_YAML, "nested too deeply", id="deep-block-yaml"),
    pytest.param(LONG_INTEGER_YAML, "integer too long", id="long-integer-yaml"),
    pytest.param(HEX_INTEGER_YAML, "integer too long", id="hex-integer-yaml"),
    pytest.param(INFINITE_JSON, "not a finite number", id="infinite-json"),
]

# Invocation bodies (/job, /run, /events/minio): JSON objects, since that is what those routes parse.
DEEP_EVENT = ('{"Records": [], "x": ' + "[" * DEEP + "]" * DEEP + "}").encode()
LONG_INTEGER_EVENT = f'{{"Records": [{{"eventSource": "minio:s3", "s3": {{"n": {LONG_INTEGER}}}}}]}}'.encode()
INVOCATIONS = [
    pytest.param(DEEP_EVENT, "nested too deeply", id="deep-json"),
    pytest.param(LONG_INTEGER_EVENT, "integer too long", id="long-integer-json"),
]


@pytest.fixture
def hostile_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"oscar_minio_webhook_token": WEBHOOK_TOKEN})


@pytest.fixture
async def client(hostile_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(hostile_settings) as http:
        yield http


async def services(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await client.get("/system/services")
    assert response.status_code == 200
    listed: list[dict[str, Any]] = response.json()
    return listed


async def event_counts(settings: Settings) -> dict[str, int]:
    database = Database(settings.oscar_database_url)
    try:
        async with database.transaction() as tx:
            return await tx.events.counts()
    finally:
        await database.dispose()


def assert_refused(response: httpx.Response, fragment: str) -> None:
    assert response.status_code == 400, response.text
    assert fragment in response.text


async def make_victim(client: httpx.AsyncClient) -> str:
    # Its input is victim/in, so that well-formed storage events under it are the service's to read.
    body = service_body("victim", input=[{"storage_provider": "minio", "path": "victim/in"}])
    assert (await client.post("/system/services", json=body)).status_code == 201
    token: str = (await client.get("/system/services/victim")).json()["token"]
    return token


class TestDefinitions:
    @pytest.mark.parametrize(("body", "fragment"), DEFINITIONS)
    async def test_create_refused(self, client: httpx.AsyncClient, body: bytes, fragment: str) -> None:
        assert_refused(await client.post("/system/services", content=body), fragment)
        assert await services(client) == []

    @pytest.mark.parametrize(("body", "fragment"), DEFINITIONS)
    async def test_update_refused(self, client: httpx.AsyncClient, body: bytes, fragment: str) -> None:
        await make_victim(client)
        before = await services(client)
        assert_refused(
            await client.put("/system/services", content=body.replace(b"deep", b"victim")), fragment
        )
        assert await services(client) == before

    async def test_fdl_wrapping_a_deep_service(self, client: httpx.AsyncClient) -> None:
        fdl = "functions:\n  oscar:\n  - c:\n      name: x\n      image: i\n      script: s\n      x: "
        body = (fdl + "[" * 200 + "]" * 200 + "\n").encode()
        assert_refused(await client.post("/system/services", content=body), "nested too deeply")
        assert await services(client) == []

    async def test_yaml_dates_stay_strings(self, client: httpx.AsyncClient) -> None:
        # A date is not a JSON value: stored as written, not a 500 when the definition is saved.
        assert (await client.post("/system/services", content=DATE_YAML)).status_code == 201
        assert (await client.get("/system/services/dated")).json()["since"] == "2024-05-01"

    async def test_non_string_keys(self, client: httpx.AsyncClient) -> None:
        body = b"name: keys\nimage: i\nscript: s\nannotations:\n  1: one\n"
        assert_refused(await client.post("/system/services", content=body), "keys must be strings")
        assert await services(client) == []


class TestInvocations:
    @pytest.mark.parametrize(("body", "fragment"), INVOCATIONS)
    @pytest.mark.parametrize("route", ["job", "run"])
    async def test_refused(
        self, client: httpx.AsyncClient, hostile_settings: Settings, route: str, body: bytes, fragment: str
    ) -> None:
        token = await make_victim(client)
        response = await client.post(
            f"/{route}/victim", content=body, headers={"Authorization": f"Bearer {token}"}, auth=NO_AUTH
        )
        assert_refused(response, fragment)
        assert await event_counts(hostile_settings) == {}
        assert (await client.get("/system/logs/victim")).json()["jobs"] == {}

    @pytest.mark.parametrize(("body", "fragment"), INVOCATIONS)
    async def test_webhook_refused(
        self, client: httpx.AsyncClient, hostile_settings: Settings, body: bytes, fragment: str
    ) -> None:
        await make_victim(client)
        response = await client.post(
            "/events/minio", content=body, headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"}, auth=NO_AUTH
        )
        assert_refused(response, fragment)
        assert await event_counts(hostile_settings) == {}

    async def test_long_digits_are_still_base64(
        self, client: httpx.AsyncClient, hostile_settings: Settings
    ) -> None:
        # 5000 digits are valid base64 too: a plain invocation's file, not a JSON integer.
        token = await make_victim(client)
        response = await client.post(
            "/job/victim", content=LONG_INTEGER.encode()[:4000], headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 201, response.text

    async def test_records_of_any_type(self, client: httpx.AsyncClient) -> None:
        """An eventSource that is a list, and records mixing storage and other events."""
        token = await make_victim(client)
        storage = {"eventSource": "minio:s3", "s3": {"bucket": {"name": "victim"}, "object": {"key": "in/a"}}}
        other = {"eventSource": "aws:sqs", "s3": {}}
        for records in ([{"eventSource": ["minio:s3"], "s3": {}}], [storage, {**storage, "x": 1}, other]):
            response = await client.post(
                "/job/victim",
                json={"Records": records},
                headers={"Authorization": f"Bearer {token}"},
                auth=NO_AUTH,
            )
            assert response.status_code == 201, response.text
        webhook = await client.post(
            "/events/minio",
            json={"Records": [{"eventSource": {"a": 1}, "s3": {}}]},
            headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"},
            auth=NO_AUTH,
        )
        assert_refused(webhook, "not a bucket notification")


def _big_definition() -> dict[str, Any]:
    variables = {f"K{i:07d}": "v" * 30 for i in range(210_000)}
    return service_body("big", environment={"variables": variables})


class TestTheLoopKeepsAnswering:
    """While a big definition is parsed, /health still answers: checked while the request is in flight
    (the parse is known to have started), with no timing threshold."""

    @pytest.mark.parametrize("kind", ["yaml", "json"])
    async def test_health_during_a_big_definition(
        self, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, kind: str
    ) -> None:
        document = _big_definition()
        body = (yaml.safe_dump(document) if kind == "yaml" else json.dumps(document)).encode()
        assert 9_000_000 < len(body) < 10 * 1024 * 1024
        parsing = threading.Event()
        if kind == "yaml":
            compose = yaml.composer.Composer.compose_document

            def composing(loader: Any) -> Any:
                parsing.set()
                return compose(loader)

            monkeypatch.setattr(yaml.composer.Composer, "compose_document", composing)
        else:
            loads = json.loads

            def loading(text: Any, **options: Any) -> Any:
                if len(text) > 1_000_000:
                    parsing.set()
                return loads(text, **options)

            monkeypatch.setattr(json, "loads", loading)

        post = asyncio.create_task(client.post("/system/services", content=body))
        try:
            # Bounded wait in a thread: the loop may be busy, this coroutine resumes when it is free.
            assert await asyncio.to_thread(parsing.wait, 120), "the definition was never parsed"
            health = await asyncio.wait_for(client.get("/health"), 120)
            assert health.status_code == 200
            assert not post.done(), "/health answered only once the definition was parsed"
        finally:
            response = await post
        assert response.status_code == 201, response.text[:500]


class TestServiceNameOracle:
    """Without valid credentials the answer is the same whether or not the service exists."""

    @pytest.mark.parametrize("route", ["job", "run"])
    async def test_wrong_token(self, client: httpx.AsyncClient, route: str) -> None:
        await make_victim(client)
        answers = []
        for name in ("victim", "no-such-service"):
            for token in ("f" * 64, "short", "x" * 200):
                response = await client.post(
                    f"/{route}/{name}",
                    content=b"eA==",
                    headers={"Authorization": f"Bearer {token}"},
                    auth=NO_AUTH,
                )
                answers.append((name, token, response.status_code, response.text))
            response = await client.post(f"/{route}/{name}", content=b"eA==", auth=("oscar", "wrong"))
            answers.append((name, "basic", response.status_code, response.text))
        assert {status for _name, _token, status, _body in answers} == {401}
        known = [(token, body) for name, token, _status, body in answers if name == "victim"]
        unknown = [(token, body) for name, token, _status, body in answers if name != "victim"]
        assert known == unknown

    @pytest.mark.parametrize("route", ["job", "run"])
    async def test_the_admin_learns_it_does_not_exist(self, client: httpx.AsyncClient, route: str) -> None:
        response = await client.post(f"/{route}/no-such-service", content=b"eA==")
        assert response.status_code == 404
        assert response.text == "service 'no-such-service' not found"


@pytest.fixture
def egi() -> Iterator[FakeIssuer]:
    with egi_issuer("alice") as issuer:
        yield issuer


@pytest.fixture
async def oidc_client(hostile_settings: Settings, egi: FakeIssuer) -> AsyncIterator[httpx.AsyncClient]:
    oidc = with_egi(hostile_settings)
    async with app_client(oidc, auth=False) as http:
        yield http


class TestServiceNameOracleWithOidc:
    async def test_invalid_tokens(self, oidc_client: httpx.AsyncClient, egi: FakeIssuer) -> None:
        admin = httpx.BasicAuth("oscar", ADMIN_PASSWORD)
        assert (
            await oidc_client.post("/system/services", json=service_body("victim"), auth=admin)
        ).status_code == 201
        forged = egi.token("alice")[:-4] + "AAAA"  # a JWT whose signature does not verify
        for route in ("job", "run"):
            answers = {}
            for name in ("victim", "no-such-service"):
                for token in ("f" * 64, forged, "not-a-jwt"):
                    response = await oidc_client.post(
                        f"/{route}/{name}", content=b"eA==", headers={"Authorization": f"Bearer {token}"}
                    )
                    answers[name, token] = (response.status_code, response.text)
            assert {status for status, _body in answers.values()} == {401}
            for token in ("f" * 64, forged, "not-a-jwt"):
                assert answers["victim", token] == answers["no-such-service", token]

    async def test_an_admitted_user_learns_it_does_not_exist(
        self, oidc_client: httpx.AsyncClient, egi: FakeIssuer
    ) -> None:
        response = await oidc_client.post(
            "/job/no-such-service", content=b"eA==", headers={"Authorization": f"Bearer {egi.token('alice')}"}
        )
        assert response.status_code == 404


class TestCatchAll:
    async def test_unexpected_error_is_a_500_in_both_forms(
        self, hostile_settings: Settings, caplog: pytest.LogCaptureFixture
    ) -> None:
        origin = "https://dashboard.example"
        app = create_app(hostile_settings.model_copy(update={"oscar_cors_origins": [origin]}))

        async def broken() -> None:
            raise RuntimeError("secret internals: /var/lib/oscar/oscar.db")

        app.add_api_route("/broken", broken)
        transport = httpx.ASGITransport(app=app)
        with caplog.at_level(logging.ERROR, logger="oscar_manager"):
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(transport=transport, base_url="http://oscar.test") as http,
            ):
                # As the dashboard asks (axios' Accept), and as a caller that prefers JSON.
                axios = {"Origin": origin, "Accept": "application/json, text/plain, */*"}
                response = await http.get("/broken", headers=axios)
                structured = await http.get("/broken", headers={"Accept": "application/json"})
                assert (await http.get("/health")).status_code == 200
        assert response.status_code == 500
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert response.text.startswith("unexpected error (incident ")
        assert "secret" not in response.text
        assert response.headers["access-control-allow-origin"] == origin
        assert structured.status_code == 500
        assert structured.json()["error"] == "InternalError"
        assert "secret" not in structured.json()["detail"]
        logged = [record for record in caplog.records if record.exc_info]
        assert logged
        exc_info = logged[0].exc_info
        assert exc_info is not None
        assert "secret internals" in str(exc_info[1])
        assert logged[0].getMessage().split("incident ")[1].split(")")[0] in response.text


class TestMinioListener:
    async def test_hostile_records_are_skipped(self) -> None:
        delivered: list[str] = []

        async def deliver(events: list[ObjectEvent]) -> None:
            delivered.extend(event.key for event in events)

        async def nothing(*_args: Any) -> Any:
            return []

        listener = MinioListener(
            cast(Any, None), cast(Any, None), routes=nothing, enqueue=nothing, deliver=deliver
        )
        good = {"eventSource": "minio:s3", "s3": {"bucket": {"name": "b"}, "object": {"key": "in/a"}}}
        for record in ({"eventSource": ["minio:s3"]}, {"eventSource": {"x": 1}}, {**good, "s3": []}, good):
            await listener._record("b", record)
        assert delivered == ["in/a"]
