"""Issue 12 item 3: a service's own storage providers must not make the manager connect where the
operator did not allow (loopback, link-local, unspecified, the host's own addresses), whatever a name
resolves to when it is connected, unless ``OSCAR_PROVIDER_ALLOWED_NETWORKS`` says so.

The attacker is a service owner: their service declares ``minio.evil`` with an endpoint of their choosing
and names an object there in a ``/run`` or ``/job`` event (or writes its outputs there). The targets are
the test's real MinIO on 127.0.0.1 (so the attack, when allowed, really reads the operator's data) and a
canary listening on every address of this host, which counts the connections it gets.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import ipaddress
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import ValidationError

from oscar_manager.domain.events import ObjectEvent, notification
from oscar_manager.settings import Settings
from oscar_manager.storage.egress import EgressPolicy, forbidden_reason, host_addresses, plain
from oscar_manager.storage.s3 import S3ObjectStore
from tests.support.app import NO_AUTH, app_client
from tests.support.databases import SqliteDatabases
from tests.support.factories import make_settings
from tests.support.jobs import wait_for_jobs
from tests.support.minio import MinioServer

SECRET = b"the operator's private data"
UNSPECIFIED = "0.0.0.0"  # noqa: S104 (an address the attacker names, not one bound)
# Reads its input and copies it to its output: whatever the manager fetched ends up in the answer.
SCRIPT = 'cat "$INPUT_FILE_PATH"\ncp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"\n'


def own_interface_address() -> str:
    """An address of this host that is neither loopback nor link-local (its eth0's, here)."""
    for address in sorted(host_addresses(), key=str):
        if forbidden_reason(address, ()) is None and address.version == 4:
            return str(address)
    pytest.skip("this host has no routable interface address")


class Canary:
    """A TCP listener on every address of this host (dual stack), counting connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Canary]:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
        self.port = sock.getsockname()[1]

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        server = await asyncio.start_server(accepted, sock=sock)
        try:
            yield self
        finally:
            server.close()
            await server.wait_closed()


@pytest.fixture
async def canary() -> AsyncIterator[Canary]:
    async with Canary().running() as listening:
        yield listening


@pytest.fixture
async def victim(minio_store: S3ObjectStore) -> str:
    """A bucket of the operator's MinIO (on loopback) holding a secret under ``in/``."""
    bucket = f"victim-{uuid.uuid4().hex[:10]}"
    await minio_store.ensure_bucket(bucket)
    await minio_store.put_stream(bucket, "in/secret.txt", _chunks(SECRET))
    return bucket


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_databases: SqliteDatabases) -> str:
    return sqlite_databases.create(tmp_path / "oscar.db", migrated=True)


@pytest.fixture
def make(sqlite_url: str, tmp_path: Path, bwrap: str) -> Any:
    """Settings on the local backend (bubblewrap), SQLite, with the given allow-list; the same database
    and data directory each time, as one manager restarted with another configuration."""

    def settings(allowed: str = "") -> Settings:
        return make_settings(
            database_url=sqlite_url,
            data_dir=tmp_path / "data",
            oscar_provider_allowed_networks=allowed,
            oscar_run_timeout=60,
        )

    return settings


def evil_service(name: str, endpoint: str, minio: MinioServer, bucket: str) -> dict[str, Any]:
    return {
        "name": name,
        "image": "alpine",
        "script": SCRIPT,
        "input": [{"storage_provider": "minio.evil", "path": f"{bucket}/in"}],
        "output": [{"storage_provider": "minio.evil", "path": f"{bucket}/out"}],
        "storage_providers": {
            "minio": {
                "evil": {
                    "endpoint": endpoint,
                    "access_key": minio.access_key,
                    "secret_key": minio.secret_key,
                    "region": "us-east-1",
                    "verify": False,
                }
            }
        },
    }


def secret_event(bucket: str) -> dict[str, Any]:
    return notification(
        ObjectEvent(bucket=bucket, key="in/secret.txt", etag="e", size=len(SECRET), event_time="t")
    )


async def create(http: httpx.AsyncClient, body: dict[str, Any]) -> str:
    response = await http.post("/system/services", json=body)
    assert response.status_code == 201, response.text
    token: str = (await http.get(f"/system/services/{body['name']}")).json()["token"]
    return token


async def run(http: httpx.AsyncClient, name: str, token: str, bucket: str) -> httpx.Response:
    return await http.post(
        f"/run/{name}", json=secret_event(bucket), headers={"Authorization": f"Bearer {token}"}, auth=NO_AUTH
    )


async def job_log(http: httpx.AsyncClient, name: str, token: str, bucket: str) -> tuple[str, str]:
    """Post the event as an async job and wait for it: (its status, its log)."""
    response = await http.post(
        f"/job/{name}", json=secret_event(bucket), headers={"Authorization": f"Bearer {token}"}, auth=NO_AUTH
    )
    assert response.status_code == 201, response.text
    job_id = response.headers["x-oscar-job-ids"]
    jobs = await wait_for_jobs(http, name, count=1, within=60)
    log = (await http.get(f"/system/logs/{name}/{job_id}")).text
    return jobs[job_id]["status"], log


async def outputs(minio_store: S3ObjectStore, bucket: str) -> list[str]:
    return [info.key for info in await minio_store.list_objects(bucket, "out/")]


def reached_secret(response: httpx.Response) -> bool:
    """The sync answer carries the secret: the script's output, or an output file base64-encoded."""
    if SECRET in response.content:
        return True
    with contextlib.suppress(ValueError):
        return SECRET in base64.b64decode(response.content)
    return False


def assert_mentions(text: str, *parts: str) -> None:
    missing = [part for part in parts if part not in text]
    assert not missing, f"{missing} not in {text!r}"


def assert_refused(response: httpx.Response, address: str) -> None:
    assert response.status_code == 403, response.text
    assert_mentions(response.text, "'minio.evil'", address, "does not connect to")
    assert SECRET.decode() not in response.text


# --- the operator's MinIO on 127.0.0.1 -------------------------------------------------------------


async def test_loopback_minio_is_refused_and_reached_only_when_allowed(
    make: Any, minio_server: MinioServer, minio_store: S3ObjectStore, victim: str
) -> None:
    endpoint = f"http://127.0.0.1:{minio_server.port}"
    name = f"evil-{uuid.uuid4().hex[:6]}"
    # Created while the operator allowed loopback (the only way such a service exists, see below) ...
    async with app_client(make("127.0.0.0/8")) as http:
        token = await create(http, evil_service(name, endpoint, minio_server, victim))
        # ... where the attack works: the manager fetches the operator's object for the script.
        allowed = await run(http, name, token, victim)
        assert allowed.status_code == 200, allowed.text
        assert reached_secret(allowed)
    await minio_store.delete_object(victim, "out/secret.txt")

    async with app_client(make()) as http:
        assert_refused(await run(http, name, token, victim), "127.0.0.1")
        status, log = await job_log(http, name, token, victim)
        assert status == "Failed"
        assert_mentions(log, "ProviderRefused", "'minio.evil'", "127.0.0.1")
        assert SECRET.decode() not in log
        # And nothing can be declared there anew.
        again = await http.post(
            "/system/services", json=evil_service(f"{name}-2", endpoint, minio_server, victim)
        )
        assert again.status_code == 400, again.text
        assert "storage_providers.minio.evil.endpoint" in again.text
    assert await outputs(minio_store, victim) == []


async def test_outputs_to_a_loopback_provider_are_not_written(
    make: Any, minio_server: MinioServer, minio_store: S3ObjectStore, victim: str
) -> None:
    """Input on the manager's own storage, outputs on ``minio.evil``: the upload is refused too."""
    name = f"evil-{uuid.uuid4().hex[:6]}"
    body = evil_service(name, f"http://127.0.0.1:{minio_server.port}", minio_server, victim)
    body["input"] = [{"path": f"{name}/in"}]
    async with app_client(make("127.0.0.1")) as http:
        token = await create(http, body)
    async with app_client(make()) as http:
        response = await http.post(
            f"/run/{name}", content=b"aGVsbG8=", headers={"Authorization": f"Bearer {token}"}, auth=NO_AUTH
        )
        assert_refused(response, "127.0.0.1")
    assert await outputs(minio_store, victim) == []


# --- other forms of this host's addresses ------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "shown"),
    [
        ("localhost", "localhost"),
        ("[::1]", "::1"),
        (UNSPECIFIED, UNSPECIFIED),
        ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"),
        ("169.254.169.254", "169.254.169.254"),
        ("own", "own"),
    ],
)
async def test_this_hosts_addresses_are_refused_at_create_and_at_connect(
    make: Any, minio_server: MinioServer, canary: Canary, host: str, shown: str
) -> None:
    if host == "own":
        host = shown = own_interface_address()
    endpoint = f"http://{host}:{canary.port}"
    name = f"evil-{uuid.uuid4().hex[:6]}"
    body = evil_service(name, endpoint, minio_server, "victim")

    async with app_client(make()) as http:
        refused = await http.post("/system/services", json=body)
        assert refused.status_code == 400, refused.text
        assert "storage_providers.minio.evil.endpoint" in refused.text
        assert (await http.get(f"/system/services/{name}")).status_code == 404

    # Allowed, the manager does connect there (to the canary) for the script ...
    everything = "0.0.0.0/0,::/0"
    async with app_client(make(everything)) as http:
        token = await create(http, body)
        if host != "169.254.169.254":  # nothing of this host answers there
            reached = await run(http, name, token, "victim")
            assert reached.status_code != 403, reached.text
            assert canary.connections > 0
    # ... and once the allowance is gone, not any more.
    before = canary.connections
    async with app_client(make()) as http:
        assert_refused(await run(http, name, token, "victim"), shown)
        status, log = await job_log(http, name, token, "victim")
        assert status == "Failed"
        assert_mentions(log, "'minio.evil'", shown)
    assert canary.connections == before


@pytest.mark.parametrize(
    "host", ["2130706433", "127.1", "0x7f.0.0.1", "LOCALHOST.", "db.localhost", "[fe80::1%25eth0]"]
)
async def test_other_spellings_of_loopback_are_refused_at_create(
    make: Any, minio_server: MinioServer, host: str
) -> None:
    body = evil_service(f"evil-{uuid.uuid4().hex[:6]}", f"http://{host}:9000", minio_server, "victim")
    async with app_client(make()) as http:
        refused = await http.post("/system/services", json=body)
    assert refused.status_code == 400, refused.text
    assert "storage_providers.minio.evil.endpoint" in refused.text


# --- names that resolve somewhere else when connected -----------------------------------------------


class Rebinding:
    """``socket.getaddrinfo`` for one name answering a public address first, then 127.0.0.1."""

    def __init__(self, name: str, real: Any) -> None:
        self.name = name
        self.real = real
        self.answers = ["203.0.113.7", "127.0.0.1"]

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != self.name:
            return self.real(host, port, *args, **kwargs)
        address = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return self.real(address, port, *args, **kwargs)


@pytest.fixture
def rebinding(monkeypatch: pytest.MonkeyPatch) -> Rebinding:
    stub = Rebinding("files.rebind.example", socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", stub)
    return stub


async def test_a_name_rebound_to_loopback_is_refused_when_connected(
    make: Any,
    minio_server: MinioServer,
    minio_store: S3ObjectStore,
    victim: str,
    rebinding: Rebinding,
) -> None:
    endpoint = f"http://{rebinding.name}:{minio_server.port}"
    name = f"evil-{uuid.uuid4().hex[:6]}"
    # When the service is created, the name is a public address ...
    assert socket.getaddrinfo(rebinding.name, 80)[0][4][0] == "203.0.113.7"
    async with app_client(make()) as http:
        token = await create(http, evil_service(name, endpoint, minio_server, victim))
        # ... and when the manager connects, the operator's loopback.
        assert_refused(await run(http, name, token, victim), "127.0.0.1")
        status, log = await job_log(http, name, token, victim)
        assert status == "Failed"
        assert_mentions(log, "'minio.evil'", rebinding.name, "127.0.0.1")
    assert await outputs(minio_store, victim) == []

    # Allowed by its name, it is reached.
    async with app_client(make(rebinding.name)) as http:
        allowed = await run(http, name, token, victim)
        assert allowed.status_code == 200, allowed.text
        assert reached_secret(allowed)


# --- the rule and the setting ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "a loopback address"),
        ("127.255.0.9", "a loopback address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("::127.0.0.1", "a loopback address"),
        ("169.254.169.254", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("fe80::1%1", "a link-local address"),
        ("::ffff:169.254.169.254", "a link-local address"),
        (UNSPECIFIED, "an unspecified address"),
        ("0.1.2.3", "an unspecified address"),
        ("::", "an unspecified address"),
        ("::ffff:0.0.0.0", "an unspecified address"),
        ("192.0.2.50", "an address of the manager's own host"),
        ("::ffff:192.0.2.50", "an address of the manager's own host"),
        ("203.0.113.7", None),
        ("10.1.2.3", None),
        ("2001:db8::1", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_address_classification(address: str, reason: str | None) -> None:
    own = {ipaddress.ip_address("192.0.2.50")}
    assert forbidden_reason(ipaddress.ip_address(address), own) == reason


def test_mapped_forms_are_their_ipv4_address() -> None:
    assert plain(ipaddress.ip_address("::ffff:10.0.0.1")) == ipaddress.ip_address("10.0.0.1")
    assert plain(ipaddress.ip_address("::1")) == ipaddress.ip_address("::1")


def test_the_allow_list_takes_networks_and_host_names() -> None:
    configured = EgressPolicy.from_settings(
        ["127.0.0.0/8", "fd00::/8", "MinIO.Internal."], listen_host="198.51.100.4"
    )
    policy = dataclasses.replace(configured, interface_addresses=frozenset)
    assert policy.refusal("127.0.0.1", "127.0.0.1") is None
    assert policy.refusal("x", "::ffff:127.0.0.5") is None
    assert policy.refusal("::1", "::1") == "a loopback address"
    assert policy.refusal("minio.internal", "::1") is None
    assert policy.refusal("MINIO.internal.", "169.254.1.1") is None
    assert policy.refusal("other.internal", "169.254.1.1") == "a link-local address"
    assert policy.refusal("x", "198.51.100.4") == "an address of the manager's own host"
    assert policy.endpoint_refusal("http://localhost:9000") is None  # 127.0.0.1 is allowed
    assert policy.endpoint_refusal("http://[::1]:9000") == "a loopback address"
    assert policy.endpoint_refusal("https://s3.example.org") is None  # names are checked when connected
    mapped = EgressPolicy.from_settings(["::ffff:169.254.0.0/112"], listen_host="")
    assert mapped.refusal("x", "169.254.3.4") is None


def test_the_setting_refuses_what_is_neither_a_network_nor_a_name(tmp_path: Path) -> None:
    settings = Settings(oscar_provider_allowed_networks="10.0.0.0/8, minio.local ,[::1]")
    assert settings.oscar_provider_allowed_networks == ["10.0.0.0/8", "minio.local", "[::1]"]
    with pytest.raises(ValidationError, match="neither a network"):
        Settings(oscar_provider_allowed_networks="10.0.0.0/33")
    with pytest.raises(ValidationError, match="neither a network"):
        Settings(oscar_provider_allowed_networks="http://minio:9000")


# --- the manager's own credentials -------------------------------------------------------------------


async def test_a_provider_without_keys_is_not_sent_the_managers_aws_credentials(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ``s3.<id>`` without keys must not make the manager sign with (or go and fetch, from the
    instance metadata address) its own AWS identity: its requests go unsigned."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "MANAGERS-OWN-KEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "managers-own-secret")
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.Response(status=403, text="<Error><Code>AccessDenied</Code></Error>")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        name = f"keyless-{uuid.uuid4().hex[:6]}"
        body = {
            "name": name,
            "image": "alpine",
            "script": SCRIPT,
            "output": [{"storage_provider": "s3.mine", "path": "bucket/out"}],
            "storage_providers": {"s3": {"mine": {"endpoint": f"http://127.0.0.1:{server.port}"}}},
        }
        async with app_client(make("127.0.0.1")) as http:
            token = await create(http, body)
            response = await http.post(
                f"/run/{name}", content=b"aGk=", headers={"Authorization": f"Bearer {token}"}, auth=NO_AUTH
            )
            assert response.status_code >= 400, response.text
    finally:
        await server.close()
    assert seen, "the provider was never asked"
    assert not any("MANAGERS-OWN-KEY" in header for header in seen), seen
