"""The S3 face of the embedded default, driven by real S3 clients against a real ``oscar-manager serve``:
boto3 as a user would, oscar-python's storage client (a job runs on what it uploads), aws-sdk-go v1 as
oscar-cli's file commands use it, and a browser's CORS preflight as the dashboard's S3 client sends it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import boto3
import httpx
import pytest
from botocore.client import Config
from botocore.exceptions import ClientError
from oscar_python.client import Client

from tests.support.components import free_port, unavailable
from tests.support.server import RunningServer, start_server, stop_server

pytestmark = pytest.mark.server

DASHBOARD = "https://dashboard.example.org"
GO_CLIENT = Path(__file__).resolve().parents[2] / ".cache" / "bin" / "s3client"


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(
        tmp_path_factory.mktemp("s3face"),
        free_port(),
        env={"OSCAR_PASSWORD": "s3-face-password", "OSCAR_CORS_ORIGINS": DASHBOARD},
    )
    try:
        yield running
    finally:
        stop_server(running)


def admin(server: RunningServer) -> httpx.Client:
    return httpx.Client(base_url=server.url, auth=("oscar", server.password()), timeout=30)


def provider(server: RunningServer) -> dict[str, Any]:
    with admin(server) as http:
        config: dict[str, Any] = http.get("/system/config").json()["minio_provider"]
    return config


def s3_client(server: RunningServer, **overrides: Any) -> Any:
    config = {**provider(server), **overrides}
    return boto3.client(
        "s3",
        endpoint_url=config["endpoint"],
        aws_access_key_id=config["access_key"],
        aws_secret_access_key=config["secret_key"],
        region_name=config["region"],
        config=Config(signature_version=overrides.get("signature_version", "s3v4")),
    )


def make_bucket(server: RunningServer, name: str) -> Path:
    with admin(server) as http:
        assert http.post("/system/buckets", json={"bucket_name": name}).status_code == 201
    return server.workdir / "oscar-data" / "buckets" / name


def files_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def test_config_hands_the_admin_the_face_as_the_caller_reaches_it(manager: RunningServer) -> None:
    config = provider(manager)
    assert config == {
        "endpoint": manager.s3_url,
        "verify": True,
        "access_key": "oscar",
        "secret_key": "s3-face-password",
        "region": "us-east-1",
    }
    port = urlsplit(manager.s3_url).port
    by_name = httpx.get(
        manager.url.replace("127.0.0.1", "localhost") + "/system/config/",
        auth=("oscar", manager.password()),
    ).json()["minio_provider"]
    assert by_name["endpoint"] == f"http://localhost:{port}"


def test_boto3_uploads_lists_downloads_and_deletes(manager: RunningServer, tmp_path: Path) -> None:
    folder = make_bucket(manager, "boto-files")
    s3 = s3_client(manager)
    small, large = tmp_path / "notes one.txt", tmp_path / "large.bin"
    small.write_text("hello s3 face")
    large.write_bytes(bytes(range(256)) * (40 * 1024 + 3))  # over boto3's 8 MiB: a multipart upload
    s3.upload_file(str(small), "boto-files", "in/notes one.txt")
    s3.upload_file(str(large), "boto-files", "in/deep/large.bin")
    s3.put_object(Bucket="boto-files", Key="out/", Body=b"")  # the dashboard's "new folder"

    assert files_under(folder) == ["in/deep/large.bin", "in/notes one.txt"]
    assert (folder / "out").is_dir()
    top = s3.list_objects_v2(Bucket="boto-files", Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["in/", "out/"]
    keys, token = [], None
    while True:
        extra: dict[str, str] = {"ContinuationToken": token} if token else {}
        listed = s3.list_objects_v2(Bucket="boto-files", Prefix="in/", MaxKeys=1, **extra)
        keys += [item["Key"] for item in listed.get("Contents", [])]
        if not listed["IsTruncated"]:
            break
        token = listed["NextContinuationToken"]
    # As on MinIO: folders that only hold uploads are no objects; one made by a client's "new folder" is.
    assert keys == ["in/deep/large.bin", "in/notes one.txt"]
    assert [item["Key"] for item in s3.list_objects_v2(Bucket="boto-files", Prefix="out/")["Contents"]] == [
        "out/"
    ]

    s3.download_file("boto-files", "in/deep/large.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == large.read_bytes()
    ranged = s3.get_object(Bucket="boto-files", Key="in/notes one.txt", Range="bytes=6-7")
    assert ranged["Body"].read() == b"s3"
    assert ranged["ContentRange"] == "bytes 6-7/13"

    s3.delete_object(Bucket="boto-files", Key="in/notes one.txt")
    assert files_under(folder) == ["in/deep/large.bin"]
    with pytest.raises(ClientError) as missing:
        s3.head_object(Bucket="boto-files", Key="in/notes one.txt")
    assert missing.value.response["Error"]["Code"] == "404"


@pytest.mark.parametrize("signature_version", ["s3v4", "s3"])
def test_presigned_urls(manager: RunningServer, signature_version: str) -> None:
    folder = make_bucket(manager, f"presigned-{'v4' if signature_version == 's3v4' else 'v2'}")
    bucket = folder.name
    s3 = s3_client(manager, signature_version=signature_version)
    put = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "in/p q.txt"})
    assert httpx.put(put, content=b"sent with no keys").status_code == 200
    get = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "in/p q.txt"})
    assert httpx.get(get).content == b"sent with no keys"
    # The same URL for another object, or a changed method, is refused.
    assert httpx.get(get.replace("p%20q.txt", "other.txt")).status_code == 403
    assert httpx.delete(get).status_code == 403
    assert files_under(folder) == ["in/p q.txt"]


def _error(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/xml")
    code = response.text.split("<Code>")[1].split("</Code>")[0]
    return code


def test_refusals_are_s3_errors_and_write_nothing(manager: RunningServer) -> None:
    folder = make_bucket(manager, "refusals")
    wrong = s3_client(manager, secret_key="not-the-password")
    with pytest.raises(ClientError) as refused:
        wrong.put_object(Bucket="refusals", Key="in/x.txt", Body=b"x")
    assert refused.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    stranger = s3_client(manager, access_key="someone")
    with pytest.raises(ClientError) as refused:
        stranger.put_object(Bucket="refusals", Key="in/x.txt", Body=b"x")
    assert refused.value.response["Error"]["Code"] == "InvalidAccessKeyId"

    s3 = s3_client(manager)
    for key in ("in/../../escape.txt", "../refusals2/x", "in/./x", "in//x", "in/a\\b"):
        with pytest.raises(ClientError) as refused:
            s3.put_object(Bucket="refusals", Key=key, Body=b"x")
        assert refused.value.response["Error"]["Code"] == "InvalidArgument", key
    for bucket in (".staging", "..", "oscar.db"):
        with pytest.raises(ClientError):
            s3.get_object(Bucket=bucket, Key="x")

    anonymous = httpx.get(f"{manager.s3_url}/refusals/in/x.txt")
    assert (anonymous.status_code, _error(anonymous)) == (403, "AccessDenied")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "refusals", "Key": "in/x.txt"})
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query["X-Amz-Date"] = "20200101T000000Z"  # signed long ago: expired before its signature is checked
    expired = httpx.get(urlunsplit(parts._replace(query=urlencode(query))))
    assert (expired.status_code, _error(expired)) == (403, "AccessDenied")
    assert "expired" in expired.text
    assert files_under(folder) == []
    assert not (manager.workdir / "oscar-data" / "buckets" / "escape.txt").exists()


def test_cors_for_the_dashboard(manager: RunningServer) -> None:
    make_bucket(manager, "browser")
    preflight = {"Access-Control-Request-Method": "PUT"}
    headers = "authorization,x-amz-date,x-amz-content-sha256,content-type"
    allowed = httpx.options(
        f"{manager.s3_url}/browser/in/a.txt",
        headers={"Origin": DASHBOARD, **preflight, "Access-Control-Request-Headers": headers},
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == DASHBOARD
    assert "PUT" in allowed.headers["access-control-allow-methods"]
    assert allowed.headers["access-control-allow-headers"] == headers
    # The manager's own pages (same host, the manager's port) may call it too; other sites may not.
    own = httpx.options(f"{manager.s3_url}/browser", headers={"Origin": manager.url, **preflight})
    assert own.headers["access-control-allow-origin"] == manager.url
    elsewhere = httpx.options(
        f"{manager.s3_url}/browser", headers={"Origin": "https://evil.example", **preflight}
    )
    assert elsewhere.status_code == 403
    assert "access-control-allow-origin" not in elsewhere.headers

    s3 = s3_client(manager)
    s3.put_object(Bucket="browser", Key="in/a.txt", Body=b"a")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "browser", "Key": "in/a.txt"})
    answer = httpx.get(url, headers={"Origin": DASHBOARD})
    assert answer.headers["access-control-allow-origin"] == DASHBOARD
    assert "ETag" in answer.headers["access-control-expose-headers"]


UPPERCASE = Path(__file__).resolve().parents[2] / "examples" / "uppercase" / "uppercase.yaml"


def test_oscar_python_storage_client_triggers_the_service(manager: RunningServer, tmp_path: Path) -> None:
    with admin(manager) as http:
        created = http.post("/system/services", content=UPPERCASE.read_bytes())
        assert created.status_code == 201, created.text
    client = Client(
        {
            "cluster_id": "s3face",
            "endpoint": manager.url,
            "user": "oscar",
            "password": manager.password(),
            "ssl": False,
        }
    )
    storage = client.create_storage_client("uppercase")
    source = tmp_path / "words.txt"
    source.write_text("through the s3 face\n")
    storage.upload_file("minio.default", str(source), "uppercase/in")
    deadline = time.monotonic() + 120
    listed: list[str] = []
    while time.monotonic() < deadline:
        found = storage.list_files_from_path("minio.default", "uppercase/out")
        listed = [item["Key"] for item in found.get("Contents", [])]
        if "out/words.txt" in listed:
            break
        time.sleep(0.3)
    assert "out/words.txt" in listed
    target = tmp_path / "back"
    target.mkdir()
    storage.download_file("minio.default", str(target), "uppercase/out/words.txt")
    assert (target / "words.txt").read_text() == "THROUGH THE S3 FACE\n"
    with admin(manager) as http:
        jobs = http.get("/system/logs/uppercase").json()["jobs"]
    assert len(jobs) == 1


def test_aws_sdk_go_as_oscar_cli_uses_it(manager: RunningServer) -> None:
    if not GO_CLIENT.exists():
        unavailable("the aws-sdk-go client is not built (scripts/build-go-s3client)")
    folder = make_bucket(manager, "go-files")
    run = subprocess.run(
        [str(GO_CLIENT), manager.url, "oscar", manager.password(), "go-files", "in"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    large = (folder / "in" / "large.bin").read_bytes()
    assert seen["listed"] == ["in/large.bin", "in/small.txt"]
    assert seen["head_length"] == len("from aws-sdk-go")
    assert seen["small_content"] == "from aws-sdk-go"
    assert (seen["large_size"], seen["large_sha256"]) == (len(large), hashlib.sha256(large).hexdigest())
    assert seen["after_delete"] == ["in/large.bin"]  # oscar-cli's delete-file really deletes
    assert seen["wrong_key_error"].startswith("SignatureDoesNotMatch")
    assert files_under(folder) == ["in/large.bin"]
