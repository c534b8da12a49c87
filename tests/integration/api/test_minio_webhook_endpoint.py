"""``POST /events/minio``: bucket notifications from MinIO's webhook target, routed to services' inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest

from oscar_manager.settings import Settings
from tests.support.app import NO_AUTH, app_client
from tests.support.jobs import all_jobs, settle, wait_for_jobs

TOKEN = "w" * 40
SCRIPT = 'cat "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/copy-$(basename "$INPUT_FILE_PATH")"\n'


@pytest.fixture
async def hooked(settings: Settings) -> Any:
    async with app_client(settings.model_copy(update={"oscar_minio_webhook_token": TOKEN})) as http:
        yield http


def record(bucket: str, key: str, etag: str = "0123abcd", sequencer: str | None = None) -> dict[str, Any]:
    """A record as MinIO sends it; ``sequencer``: the object's modification time in ns, in hex."""
    item = {
        # As MinIO sends it: Go's url.QueryEscape of the key.
        "key": quote_plus(key, safe=""),
        "size": 5,
        "eTag": etag,
        **({"sequencer": sequencer} if sequencer else {}),
    }
    return {
        "eventVersion": "2.0",
        "eventSource": "minio:s3",
        "eventName": "s3:ObjectCreated:Put",
        "eventTime": "2026-11-22T06:00:00.000Z",
        "userIdentity": {"principalId": "minio"},
        "s3": {"bucket": {"name": bucket}, "object": item},
    }


def notification(*records: dict[str, Any]) -> bytes:
    return json.dumps({"EventName": "s3:ObjectCreated:Put", "Records": list(records)}).encode()


async def post(http: httpx.AsyncClient, body: bytes, token: str = TOKEN) -> httpx.Response:
    return await http.post(
        "/events/minio", content=body, headers={"Authorization": f"Bearer {token}"}, auth=NO_AUTH
    )


async def create(http: httpx.AsyncClient, name: str, inputs: list[str]) -> None:
    body = {
        "name": name,
        "image": "img",
        "script": SCRIPT,
        "input": [{"path": path} for path in inputs],
        "output": [{"path": f"{name}/out"}],
    }
    assert (await http.post("/system/services", json=body)).status_code == 201


async def counters(http: httpx.AsyncClient) -> dict[str, int]:
    events: dict[str, int] = (await http.get("/system/info")).json()["storage"]["events"]
    return events


async def test_a_notification_runs_every_service_whose_input_holds_the_object(
    hooked: httpx.AsyncClient, settings: Settings
) -> None:
    await create(hooked, "first", ["shared/in"])
    await create(hooked, "second", ["shared/in/sub dir"])
    await create(hooked, "other", ["shared/elsewhere"])
    key = "in/sub dir/a+b%2F ünï.txt"
    upload = await hooked.put(f"/system/buckets/shared/objects/{quote(key)}", content=b"hello")
    assert upload.status_code == 201

    # The same upload (ETag, and the write's time as MinIO's sequencer) as the folder watcher reports:
    # whichever comes second is a duplicate.
    written = (settings.buckets_dir / "shared" / key).stat().st_mtime_ns
    same = record("shared", key, etag=upload.json()["etag"], sequencer=f"{written:X}")
    answer = await post(hooked, notification(same))
    assert answer.status_code == 200, answer.text
    assert answer.json()["new"] + answer.json()["duplicates"] == 2

    for name in ("first", "second"):
        jobs = await wait_for_jobs(hooked, name, count=1)
        assert [job["status"] for job in jobs.values()] == ["Succeeded"]
        copy = await hooked.get(f"/system/buckets/{name}/objects/out/{quote('copy-a+b%2F ünï.txt')}")
        assert copy.content == b"hello"
    assert await all_jobs(hooked, "other") == {}


async def test_a_redelivered_notification_is_one_job(hooked: httpx.AsyncClient) -> None:
    await create(hooked, "once", ["once/in"])
    await hooked.put("/system/buckets/once/objects/in/x.txt", content=b"x")
    await wait_for_jobs(hooked, "once", count=1)
    written = 1_790_000_000_123_456_789  # ns: a MinIO sequencer is the object's modification time
    body = notification(record("once", "in/x.txt", etag="feed", sequencer=f"{written:X}"))
    first = (await post(hooked, body)).json()
    again = (await post(hooked, body)).json()
    assert again == {"new": 0, "duplicates": 1, "ignored": 0}
    assert first["new"] == 1  # another upload than the watcher's: recorded once, then never again
    # The same content put again (MinIO: the same ETag, a new sequencer) is a new upload.
    again_put = record("once", "in/x.txt", etag="feed", sequencer=f"{written + 1_000_000:X}")
    later = (await post(hooked, notification(again_put))).json()
    assert later == {"new": 1, "duplicates": 0, "ignored": 0}
    await wait_for_jobs(hooked, "once", count=3)
    await settle()
    assert len(await all_jobs(hooked, "once")) == 3


async def test_objects_under_no_input_are_ignored_and_counted(hooked: httpx.AsyncClient) -> None:
    await create(hooked, "known", ["known/in"])
    before = await counters(hooked)
    body = notification(record("unknown-bucket", "in/x"), record("known", "out/x"), record("known", "in/"))
    answer = await post(hooked, body)
    assert answer.json() == {"new": 0, "duplicates": 0, "ignored": 3}
    after = await counters(hooked)
    assert after["ignored"] == before["ignored"] + 3
    assert after["new"] == before["new"]


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"Records": "nope"}',
        b'{"Records": [{"eventSource": "minio:s3", "s3": {"bucket": {"name": "known"}}}]}',
        b'{"Records": [{"eventSource": "minio:s3", "s3": {"bucket": {}, "object": {"key": "in%2Fx"}}}]}',
        b'["Records"]',
    ],
)
async def test_a_malformed_notification_is_400_and_records_nothing(
    hooked: httpx.AsyncClient, body: bytes
) -> None:
    await create(hooked, "known", ["known/in"])
    # One good record next to the bad one: all or nothing.
    document = json.loads(body) if body.startswith(b'{"Records": [') else None
    if document is not None:
        document["Records"].insert(0, record("known", "in/good.txt"))
        body = json.dumps(document).encode()
    answer = await post(hooked, body)
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == "text/plain; charset=utf-8"
    await settle(0.2)
    assert await all_jobs(hooked, "known") == {}
    assert (await counters(hooked))["new"] == 0


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x"])
async def test_a_missing_or_wrong_webhook_token_is_401(
    hooked: httpx.AsyncClient, authorization: str | None
) -> None:
    await create(hooked, "guarded", ["guarded/in"])
    headers = {"Authorization": authorization} if authorization else {}
    body = notification(record("guarded", "in/x.txt"))
    answer = await hooked.post("/events/minio", content=body, headers=headers, auth=NO_AUTH)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert (await counters(hooked))["new"] == 0


async def test_the_generated_webhook_token_is_kept_across_restarts(
    settings: Settings, tmp_path: Path
) -> None:
    assert not settings.oscar_minio_webhook_token
    async with app_client(settings):
        pass
    token = settings.webhook_token_file.read_text().strip()
    assert len(token) == 64
    async with app_client(settings) as http:
        answer = await post(http, notification(record("none", "x")), token=token)
        assert answer.status_code == 200
