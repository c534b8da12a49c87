"""OIDC users' storage end to end (issue 16): ``oscar-manager serve`` on a real MinIO, trusting a fake issuer
on loopback, driven by oscar-python as three EGI users would (owner, allowed, outsider). oscar-python's
storage client talks S3 to MinIO directly with the keys ``/system/config`` gives each user, so what they
may do here is what MinIO itself lets their own keys do."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
from oscar_python.client import Client

from tests.acceptance.test_minio import UPPERCASE, finished_jobs, minio_env, wait_listening
from tests.support.components import free_port
from tests.support.minio import MinioServer, boto3_client
from tests.support.oidc import ALLOWED_VO, FakeIssuer, serve_issuer
from tests.support.server import RunningServer, start_server, stop_server

pytestmark = pytest.mark.server

OWNER, ALLOWED, OUTSIDER = "owner@egi.test", "allowed@egi.test", "outsider@egi.test"
FDL = """\
functions:
  oscar:
  - egi:
      name: {name}
      cpu: 0.5
      memory: 256Mi
      image: ghcr.io/grycap/cowsay
      script: script.sh
      vo: {vo}
      visibility: restricted
      allowed_users: ["{allowed}"]
      isolation_level: {isolation}
      input:
      - storage_provider: minio.default
        path: {name}/input
      output:
      - storage_provider: minio.default
        path: {name}/output
"""


@pytest.fixture
def issuer() -> Iterator[FakeIssuer]:
    with serve_issuer() as running:
        for user in (OWNER, ALLOWED, OUTSIDER):
            running.add_user(user, ALLOWED_VO)
        yield running


@pytest.fixture
def manager(tmp_path: Path, issuer: FakeIssuer, minio_server: MinioServer) -> Iterator[RunningServer]:
    env = minio_env(
        minio_server,
        OIDC_ENABLE="true",
        OIDC_ISSUERS=issuer.url,
        OIDC_GROUPS=ALLOWED_VO,
        AUTHLIB_INSECURE_TRANSPORT="1",  # the fake issuer is plain http on loopback
    )
    running = start_server(tmp_path, free_port(), env=env)
    try:
        yield running
    finally:
        stop_server(running)


def client_as(server: RunningServer, issuer: FakeIssuer, user: str) -> Any:
    return Client(
        {"cluster_id": "egi", "endpoint": server.url, "oidc_token": issuer.token(user), "ssl": False}
    )


def own_s3(client: Any) -> Any:
    """An S3 client with the keys ``/system/config`` gives the client's user."""
    provider = client.get_cluster_config().json()["minio_provider"]
    return boto3_client(provider["endpoint"], provider["access_key"], provider["secret_key"])


def create(client: Any, tmp_path: Path, name: str, *, isolation: str = "SERVICE") -> None:
    (tmp_path / "script.sh").write_text(UPPERCASE)
    fdl = tmp_path / f"{name}.yaml"
    fdl.write_text(FDL.format(name=name, vo=ALLOWED_VO, allowed=ALLOWED, isolation=isolation))
    assert client.create_service(str(fdl)).status_code == 201


def upload(client: Any, service: str, tmp_path: Path, text: str, path: str) -> None:
    source = tmp_path / "upload" / f"{uuid.uuid4().hex[:6]}.txt"
    source.parent.mkdir(exist_ok=True)
    source.write_text(text)
    client.create_storage_client(service).upload_file("minio.default", str(source), path)


def download(client: Any, service: str, tmp_path: Path, key: str) -> str:
    target = tmp_path / "download" / uuid.uuid4().hex[:6]
    target.mkdir(parents=True)
    client.create_storage_client(service).download_file("minio.default", str(target), key)
    return (target / Path(key).name).read_text()


def test_owner_and_allowed_user_use_a_restricted_service_with_their_own_keys(
    manager: RunningServer, issuer: FakeIssuer, tmp_path: Path
) -> None:
    name = f"oidc-{uuid.uuid4().hex[:8]}"
    owner, allowed = client_as(manager, issuer, OWNER), client_as(manager, issuer, ALLOWED)
    create(owner, tmp_path, name)
    wait_listening(manager, name)

    upload(owner, name, tmp_path, "from the owner", f"{name}/input")
    upload(allowed, name, tmp_path, "from the allowed user", f"{name}/input")
    jobs = finished_jobs(manager, name, 2)
    assert sorted(job["status"] for job in jobs.values()) == ["Succeeded", "Succeeded"]
    outputs = {
        download(client, name, tmp_path, f"{name}/output/{key['Key'].rsplit('/', 1)[-1]}")
        for client in (owner, allowed)
        for key in own_s3(owner).list_objects_v2(Bucket=name, Prefix="output/")["Contents"]
        if not key["Key"].endswith("/")  # the folder's own marker
    }
    assert outputs == {"FROM THE OWNER", "FROM THE ALLOWED USER"}
    # The allowed user sees the job their own upload started; the owner sees both.
    assert len(allowed.list_jobs(name).json()["jobs"]) == 1
    assert len(owner.list_jobs(name).json()["jobs"]) == 2

    # The outsider's own keys are refused by MinIO itself, reading and writing alike.
    outsider = own_s3(client_as(manager, issuer, OUTSIDER))
    attempts: list[Callable[[], object]] = [
        lambda: outsider.list_objects_v2(Bucket=name),
        lambda: outsider.get_object(Bucket=name, Key="input/"),
        lambda: outsider.put_object(Bucket=name, Key="input/intruder.txt", Body=b"x"),
    ]
    for attempt in attempts:
        with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
            attempt()


def test_user_isolation_keeps_each_users_bucket_theirs(
    manager: RunningServer, issuer: FakeIssuer, minio_server: MinioServer, tmp_path: Path
) -> None:
    name = f"iso-{uuid.uuid4().hex[:8]}"
    owner, allowed = client_as(manager, issuer, OWNER), client_as(manager, issuer, ALLOWED)
    create(owner, tmp_path, name, isolation="USER")
    mine = f"{name}-allowed-eg"  # "allowed@egi.test"[:10], cleaned
    assert owner.get_service(name).json()["bucket_list"] == [mine, f"{name}-owner-egi"]
    wait_listening(manager, mine)

    upload(allowed, name, tmp_path, "private input", f"{mine}/input")
    jobs = finished_jobs(manager, name, 1)
    assert [job["status"] for job in jobs.values()] == ["Succeeded"]
    listed = own_s3(allowed).list_objects_v2(Bucket=mine, Prefix="output/")["Contents"]
    (key,) = [o["Key"] for o in listed if not o["Key"].endswith("/")]
    assert download(allowed, name, tmp_path, f"{mine}/{key}") == "PRIVATE INPUT"
    # Not even the service's owner reads another user's private bucket.
    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
        own_s3(owner).list_objects_v2(Bucket=mine)
    root = boto3_client(minio_server.endpoint, minio_server.access_key, minio_server.secret_key)
    shared = root.list_objects_v2(Bucket=name, Prefix="output/").get("Contents", [])
    assert [o["Key"] for o in shared] == ["output/"]  # the folder alone: nothing went to the shared output
