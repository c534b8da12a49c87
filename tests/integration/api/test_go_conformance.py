"""Every JSON answer of the manager, decoded with the upstream OSCAR Go types themselves.

oscar-cli decodes services, config, info and job lists into ``github.com/grycap/oscar/v3`` v3.3.0
``pkg/types`` with ``json.NewDecoder(...).Decode`` (no client decodes strictly); v3.7.1 is the newest
generation the Go module proxy serves. ``tests/go/conformance`` is a small Go program built against both
(``scripts/build-goconformance``); this module drives the real app through a realistic scenario and feeds
it every answer. Adding a route is one line in ``ROUTES`` (and one in ``decoders`` of the Go program if it
decodes into a type not listed there yet).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from oscar_manager.settings import Settings
from tests.support.app import app_client, bearer, create_io_service, give_local_backend
from tests.support.components import unavailable
from tests.support.exposer import LoopbackExposer, loopback_server
from tests.support.factories import service_body
from tests.support.jobs import wait_for_jobs

pytestmark = pytest.mark.asyncio

ROOT = Path(__file__).resolve().parents[3]
VERSIONS = ("v3.3.0", "v3.7.1")

# (label, path, the type the Go program decodes the answer into). The deployment routes have no type in
# any v3 (they came with v4), so nothing here can decode them.
ROUTES: list[tuple[str, str, str]] = [
    ("info", "/system/info", "info"),
    ("config as oscar-cli apply reads it", "/system/config", "config"),
    ("config as upstream's handler writes it", "/system/config", "config-for-user"),
    ("config as oscar-cli's file commands read it", "/system/config", "cli-user-config"),
    ("services list", "/system/services", "services"),
    ("service without extras", "/system/services/plain", "service"),
    ("service with expose, secrets, clusters, providers", "/system/services/full", "service"),
    ("service as oscar-cli v1.12.2 applies it", "/system/services/from-cli", "service"),
    # With each service's deployment summary (v4's field: v3 decoders ignore it, the rest must still hold).
    ("services list with deployments", "/system/services?include=deployment", "services"),
    ("service with its deployment", "/system/services/full?include=deployment", "service"),
    ("jobs of a service with jobs", "/system/logs/plain", "jobs"),
    ("jobs of a service with jobs (v3.7 type)", "/system/logs/plain", "jobs-v3.7"),
    ("jobs of a service without jobs", "/system/logs/full", "jobs"),
    ("buckets list", "/system/buckets", "buckets"),
    ("bucket with objects", "/system/buckets/plain", "bucket"),
    ("status", "/system/status", "status"),
]

# An exposed service's ports are lists, as upstream v4 sends them (the dashboard indexes them as arrays);
# v3's ``api_port int`` cannot hold one, against upstream as here. Checked so that it stays a known limit.
EXPOSED_PORTS = ("service with exposed ports", "/system/services/exposed", "service")


@pytest.fixture(scope="session")
def goconformance() -> Path:
    """The two builds of the Go program (built once; minutes the first time, cached in .cache/)."""
    try:
        built = subprocess.run(
            [str(ROOT / "scripts" / "build-goconformance")],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        unavailable(f"cannot build the Go conformance program: {exc}")
    if built.returncode != 0:
        unavailable(f"cannot build the Go conformance program: {built.stderr.strip()[-2000:]}")
    return Path(built.stdout.strip().splitlines()[-1])


def decode(program: Path, documents: list[dict[str, str]]) -> dict[str, str]:
    """Each document's label mapped to the Go decoder's error ("" when it decoded)."""
    ran = subprocess.run(
        [str(program)], input=json.dumps(documents), capture_output=True, text=True, timeout=120, check=True
    )
    return {result["label"]: result["error"] for result in json.loads(ran.stdout)}


# The service as oscar-cli v1.12.2 sends it: the v3.3.0 ``types.Service`` marshalled by Go, with the target
# cluster's credentials merged in by ``apply``.
FROM_CLI: dict[str, Any] = {
    **service_body("from-cli"),
    "cluster_id": "oscar-a",
    "memory": "1Gi",
    "cpu": "1.0",
    "total_memory": "",
    "total_cpu": "",
    "enable_gpu": False,
    "enable_sgx": False,
    "image_prefetch": False,
    "synchronous": {"min_scale": 0, "max_scale": 0},
    "replicas": [{"type": "oscar", "cluster_id": "oscar-b", "service_name": "from-cli", "priority": 1}],
    "delegation": "static",
    "rescheduler_threshold": 0,
    "log_level": "CRITICAL",
    "alpine": False,
    "token": "",
    "file_stage_in": False,
    "input": [{"storage_provider": "minio.default", "path": "from-cli/in"}],
    "output": [{"storage_provider": "minio.default", "path": "from-cli/out", "suffix": [".txt"]}],
    "expose": {
        "min_scale": 0,
        "max_scale": 0,
        "cpu_threshold": 0,
        "rewrite_target": False,
        "nodePort": 0,
        "default_command": False,
        "set_auth": False,
    },
    "environment": {"Variables": {"INPUT_TYPE": "json"}},
    "annotations": None,
    "vo": "",
    "labels": None,
    "storage_providers": {
        "minio": {
            "default": {"endpoint": "", "verify": False, "access_key": "", "secret_key": "", "region": ""}
        }
    },
    "clusters": {
        "oscar-a": {
            "endpoint": "https://oscar.example",
            "auth_user": "oscar",
            "auth_password": "the-admin-password",
            "ssl_verify": True,
        }
    },
    "owner": "",
    "interlink_node_name": "",
    "allowed_users": None,
    "mount": {"storage_provider": "", "path": ""},
}

FULL: dict[str, Any] = service_body(
    "full",
    memory="512Mi",
    cpu=1,
    synchronous={"min_scale": 1, "max_scale": 4},
    expose={"min_scale": 1, "max_scale": 3, "cpu_threshold": 80, "set_auth": True, "health_path": "/health"},
    environment={"variables": {"A": 1, "B": "two"}, "secrets": {"API_KEY": "s3cr3t"}},
    annotations={"note": "x"},
    labels={"team": "a"},
    interlink_node_name="vega-new-vk",  # stored and shown on the local backend, which does not offload
    image_pull_secrets=["registry-creds"],
    input=[{"storage_provider": "minio", "path": "full/in", "prefix": ["a"], "suffix": [".csv"]}],
    output=[
        {"storage_provider": "minio", "path": "full/out"},
        {"storage_provider": "s3.aws", "path": "results/full"},
        {"storage_provider": "webdav.dcache", "path": "/home/me/out"},
    ],
    storage_providers={
        "s3": {"aws": {"access_key": "AKIA", "secret_key": "s3-secret", "region": "eu-west-1"}},
        "webdav": {"dcache": {"hostname": "dcache.example", "login": "me", "password": "dav-secret"}},
        "onedata": {"od": {"oneprovider_host": "op.example", "token": "od-token", "space": "s"}},
    },
    clusters={"oscar-b": {"endpoint": "https://b.example", "auth_user": "oscar", "auth_password": "b"}},
    visibility="restricted",
    allowed_users=["alice"],
    mount={"storage_provider": "minio", "path": "full/mnt", "options": "--read-only"},
    federation={"members": []},
)


@pytest.fixture
async def scenario(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """Services of every kind, a job that ran, objects in a bucket: what a user of a while has."""
    async with app_client(settings) as http:
        token = await create_io_service(http, "plain", 'cat "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/out.txt"')
        for body in (FULL, FROM_CLI):
            created = await http.post("/system/services", json=body)
            assert created.status_code == 201, created.text
        uploaded = await http.put("/system/buckets/plain/objects/in/data.txt", content=b"some data")
        assert uploaded.status_code == 201, uploaded.text
        assert (await http.post("/job/plain", content=b"aGVsbG8=", headers=bearer(token))).status_code == 201
        await wait_for_jobs(http, "plain", count=2)
        yield http


async def answers(client: httpx.AsyncClient, routes: list[tuple[str, str, str]]) -> list[dict[str, str]]:
    documents = []
    for label, path, kind in routes:
        response = await client.get(path)
        assert response.status_code == 200, f"{label}: {response.status_code} {response.text}"
        assert response.headers["content-type"].startswith("application/json")
        documents.append({"label": label, "type": kind, "body": response.text})
    return documents


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_every_answer_decodes_with_the_upstream_go_types(
    scenario: httpx.AsyncClient, goconformance: Path
) -> None:
    documents = await answers(scenario, ROUTES)
    for version in VERSIONS:
        errors = decode(goconformance / version, documents)
        assert set(errors) == {label for label, _, _ in ROUTES}
        failed = {label: error for label, error in errors.items() if error and error != "unknown type"}
        assert failed == {}, f"oscar {version} types cannot decode: {failed}"
    # Types that exist only from v3.7 on; the rest every version has.
    v330 = decode(goconformance / "v3.3.0", documents)
    assert {label for label, error in v330.items() if error == "unknown type"} == {
        "jobs of a service with jobs (v3.7 type)",
        "status",
    }


@pytest.fixture
async def exposing(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Apps started after it run exposed services (through the test's exposer)."""
    async with loopback_server() as server:
        give_local_backend(monkeypatch, LoopbackExposer(server))
        yield


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_exposed_ports_are_v4_lists_that_v3_cannot_read(
    exposing: None, scenario: httpx.AsyncClient, goconformance: Path
) -> None:
    body = service_body("exposed", expose={"max_scale": 2, "api_port": 8080, "nodePort": 30080})
    assert (await scenario.post("/system/services", json=body)).status_code == 201
    documents = await answers(scenario, [EXPOSED_PORTS])
    assert json.loads(documents[0]["body"])["expose"]["api_port"] == [8080]
    for version in VERSIONS:
        error = decode(goconformance / version, documents)[EXPOSED_PORTS[0]]
        assert "cannot unmarshal array" in error
        assert "api_port" in error
