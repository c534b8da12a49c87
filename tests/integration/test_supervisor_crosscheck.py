"""Our supervisor functions side by side with the real faas-supervisor 1.5.8 (PyPI).

For each case the same service definition, script and event go to both:

- faas-supervisor runs as a subprocess (``python -m faassupervisor.supervisor``), the event on stdin, the
  service's FDL in ``FUNCTION_CONFIG`` (base64 YAML) and the script in ``SCRIPT`` (base64), the way the
  OpenFaaS watchdog (sync) and the job pod (async) start it. Its storage is moto's S3 server, with the
  ``minio.default`` credentials in the FDL (1.5.8 reads them there; 2.0.1 reads a secret mount instead).
- ours runs the steps of ``LocalBackend``: ``stage_in``, ``script_environment``, the script in a
  (plain-process) ``Sandbox``, ``stage_out``, ``render_response``, with a ``LocalObjectStore`` as
  ``minio.default``.

Then what a user sees is compared: the sync response, what the script saw, the uploaded objects. Where the
two legitimately differ a comment says so, and the comparison goes around it. The supervisors' own log
lines (faas-supervisor's stderr, our ``SupervisorLog``) differ in wording and are not compared.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.metadata
import importlib.util
import io
import json
import os
import subprocess
import sys
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import yaml

from oscar_manager.backends.sandbox import Sandbox, ScriptRun
from oscar_manager.domain.events import ObjectEvent, notification
from oscar_manager.domain.service import Service, parse_service
from oscar_manager.storage.local import LocalObjectStore
from oscar_manager.storage.providers import Stores
from oscar_manager.supervisor.answer import render_response
from oscar_manager.supervisor.log import SupervisorLog
from oscar_manager.supervisor.stage import (
    Invocation,
    script_environment,
    stage_in,
    stage_out,
)
from oscar_manager.supervisor.workspace import SCRIPT_NAME, Workspace
from tests.support.components import unavailable
from tests.support.factories import service_body

FAAS_SUPERVISOR_VERSION = "1.5.8"
# faas-supervisor's runtime imports (installed separately: its PyPI metadata cannot be resolved).
FAAS_SUPERVISOR_IMPORTS = ("faassupervisor", "boto3", "yaml", "requests", "webdav3", "distutils")
ACCESS_KEY = "crosscheck-access"
SECRET_KEY = "crosscheck-secret"
JOB_UUID = "crosscheck-0000"
EVENT_TIME = "2026-01-02T03:04:05.678Z"


# --- the two sides -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faas_supervisor() -> None:
    """Skip (or fail under OSCAR_TEST_STRICT=1) unless faas-supervisor 1.5.8 can run here."""
    try:
        version = importlib.metadata.version("faas-supervisor")
    except importlib.metadata.PackageNotFoundError:
        unavailable("faas-supervisor is not installed (uv pip install --no-deps faas-supervisor==1.5.8)")
    if version != FAAS_SUPERVISOR_VERSION:
        unavailable(f"faas-supervisor {FAAS_SUPERVISOR_VERSION} is needed, {version} is installed")
    missing = [name for name in FAAS_SUPERVISOR_IMPORTS if importlib.util.find_spec(name) is None]
    if missing:
        unavailable(f"faas-supervisor cannot run: missing modules {', '.join(missing)}")
    # It prefers this file to FUNCTION_CONFIG: on such a machine we could not give it our service.
    if Path("/oscar/config/function_config.yaml").exists():
        unavailable("/oscar/config/function_config.yaml exists and would override FUNCTION_CONFIG")


@pytest.fixture
def s3(moto_endpoint: str) -> Any:
    try:
        import boto3
    except ImportError as exc:
        unavailable(f"boto3 is not installed: {exc}")
    return boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "ours-buckets")


def new_bucket() -> str:
    # Unique: the moto server is shared by the module's tests.
    return f"xc-{uuid.uuid4().hex[:16]}"


@dataclass(frozen=True)
class Sides:
    """The two storages, with the same buckets and input objects."""

    s3: Any
    store: LocalObjectStore

    async def create_bucket(self, bucket: str) -> None:
        await asyncio.to_thread(self.s3.create_bucket, Bucket=bucket)
        await self.store.ensure_bucket(bucket)

    async def put(self, bucket: str, key: str, content: bytes, scratch: Path) -> None:
        await asyncio.to_thread(self.s3.put_object, Bucket=bucket, Key=key, Body=content)
        await asyncio.to_thread(scratch.write_bytes, content)
        await self.store.put_file(bucket, key, scratch)

    async def faas_objects(self, bucket: str) -> dict[str, bytes]:
        def read() -> dict[str, bytes]:
            listing = self.s3.list_objects_v2(Bucket=bucket).get("Contents", [])
            return {
                item["Key"]: self.s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                for item in listing
            }

        return await asyncio.to_thread(read)

    async def our_objects(self, bucket: str) -> dict[str, bytes]:
        found = {}
        for info in await self.store.list_objects(bucket):
            found[info.key] = b"".join([chunk async for chunk in self.store.read_stream(bucket, info.key)])
        return found


@pytest.fixture
def sides(faas_supervisor: None, s3: Any, store: LocalObjectStore) -> Sides:
    return Sides(s3=s3, store=store)


def make_service(script: str, **fields: Any) -> Service:
    # parse_service only (no normalise_new), so that an output path can be a bare bucket.
    return parse_service(service_body("crosscheck", script=script, **fields))


def function_config(service: Service, endpoint: str) -> dict[str, Any]:
    """The FDL faas-supervisor reads: the service as OSCAR writes its config map (script blanked), with
    the ``minio.default`` credentials where 1.5.8 looks for them."""
    config = service.model_dump(mode="json")
    config["script"] = ""
    config["storage_providers"] = {
        "minio": {
            "default": {
                "endpoint": endpoint,
                "access_key": ACCESS_KEY,
                "secret_key": SECRET_KEY,
                "region": "us-east-1",
                "verify": False,
            }
        }
    }
    return config


def run_faas_supervisor(service: Service, body: bytes, *, endpoint: str, tmp_path: Path) -> bytes:
    """faas-supervisor's stdout (the sync response) for ``body``."""
    scratch = tmp_path / "faas-tmp"
    scratch.mkdir()
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "LANG": "C.UTF-8",
        "HOME": str(scratch),
        "TMPDIR": str(scratch),
        "SCRIPT": base64.b64encode(service.script.encode()).decode(),
        "FUNCTION_CONFIG": base64.b64encode(
            yaml.safe_dump(function_config(service, endpoint)).encode()
        ).decode(),
        "JOB_UUID": JOB_UUID,
        # boto3 must use the FDL's credentials and nothing from this machine.
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    done = subprocess.run(
        [sys.executable, "-m", "faassupervisor.supervisor"],
        input=body,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    logs = done.stderr.decode(errors="replace")
    assert done.returncode == 0, f"faas-supervisor exited with {done.returncode}:\n{logs}"
    # It ends with ``print(response)``: the watchdog returns stdout, so callers get one extra newline.
    assert done.stdout.endswith(b"\n"), done.stdout
    return done.stdout[:-1]


@dataclass(frozen=True)
class Ours:
    response: bytes
    script_output: bytes
    uploaded: list[str]


async def run_ours(service: Service, body: bytes, *, store: LocalObjectStore, tmp_path: Path) -> Ours:
    """What ``LocalBackend`` does for a sync run (and, minus the response, for a job)."""
    stores = Stores(store)
    sandbox = Sandbox(bwrap=None, allow_unsandboxed=True)
    workspace = Workspace.create(tmp_path / "ours-work")
    slog = SupervisorLog("DEBUG")
    invocation = Invocation.read(body)
    input_path = await stage_in(
        invocation=invocation, service=service, stores=stores, workspace=workspace, log=slog
    )
    env = script_environment(
        service=service,
        invocation=invocation,
        input_path=input_path,
        workspace=workspace,
        job_id=JOB_UUID,
        visible_path=lambda path: sandbox.job_path(workspace.root, path),
    )
    workspace.write_script(service.script)
    result = await sandbox.run(
        ScriptRun(workdir=workspace.root, script=SCRIPT_NAME, env=env, timeout=30, memory_bytes=None)
    )
    assert result.exit_code == 0, result.output.decode(errors="replace")
    uploaded = await stage_out(
        service=service, invocation=invocation, stores=stores, workspace=workspace, log=slog
    )
    answer = render_response(
        invocation=invocation, workspace=workspace, script_output=result.output, limit=None
    )
    response = answer.read()
    answer.close()
    return Ours(response=response, script_output=result.output, uploaded=uploaded)


async def run_both(
    service: Service, body: bytes, *, sides: Sides, moto_endpoint: str, tmp_path: Path
) -> tuple[bytes, Ours]:
    faas_dir = tmp_path / "faas"
    faas_dir.mkdir()
    faas = await asyncio.to_thread(
        run_faas_supervisor, service, body, endpoint=moto_endpoint, tmp_path=faas_dir
    )
    ours = await run_ours(service, body, store=sides.store, tmp_path=tmp_path)
    return faas, ours


def unzip(response: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(response, validate=True))) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def minio_event(bucket: str, encoded_key: str) -> bytes:
    """A storage notification as MinIO posts it: compact JSON, the key URL-encoded by the caller."""
    document = notification(ObjectEvent(bucket=bucket, key="x", etag="e", size=1, event_time=EVENT_TIME))
    document["Records"][0]["s3"]["object"]["key"] = encoded_key
    return json.dumps(document, separators=(",", ":")).encode()


# --- sync (non-storage) invocations --------------------------------------------------------------

# faas-supervisor names the input ``event-file-<uuid>``, ours ``event-file``: scripts see either.
SHOW_INPUT_NAME = """\
case "$(basename "$INPUT_FILE_PATH")" in
  event-file*) echo "input file: event-file*" ;;
  *) echo "input file: unexpected $INPUT_FILE_PATH" ;;
esac
[ "$(dirname "$INPUT_FILE_PATH")" = "$TMP_INPUT_DIR" ] && echo "input file is in TMP_INPUT_DIR"
"""


async def test_sync_one_output_file_is_returned_base64(
    sides: Sides, moto_endpoint: str, tmp_path: Path
) -> None:
    script = (
        SHOW_INPUT_NAME
        + """LC_ALL=C tr a-z A-Z < "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/upper.bin"
echo "a log line, not the response"
"""
    )
    content = b"hello oscar \x00\xff\xfe binary\n"
    body = base64.encodebytes(content)  # line-wrapped, as `base64` prints it

    faas, ours = await run_both(
        make_service(script), body, sides=sides, moto_endpoint=moto_endpoint, tmp_path=tmp_path
    )

    assert base64.b64decode(ours.response, validate=True) == b"HELLO OSCAR \x00\xff\xfe BINARY\n"
    assert ours.response == faas
    assert ours.script_output == (
        b"input file: event-file*\ninput file is in TMP_INPUT_DIR\na log line, not the response\n"
    )


async def test_sync_several_output_files_are_a_zip_and_are_uploaded_too(
    sides: Sides, moto_endpoint: str, tmp_path: Path
) -> None:
    bucket = new_bucket()
    await sides.create_bucket(bucket)
    script = """\
mkdir -p "$TMP_OUTPUT_DIR/nested/deeper"
cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/copy.bin"
echo one > "$TMP_OUTPUT_DIR/one.txt"
echo deep > "$TMP_OUTPUT_DIR/nested/deeper/two.txt"
echo unicode > "$TMP_OUTPUT_DIR/é ✓.txt"
echo done
"""
    # Both upload a sync run's outputs as well (faas-supervisor's ``upload_output`` always runs).
    service = make_service(
        script, output=[{"storage_provider": "minio", "path": f"{bucket}/sync-out", "suffix": [".txt"]}]
    )
    content = bytes(range(256))

    faas, ours = await run_both(
        service, base64.b64encode(content), sides=sides, moto_endpoint=moto_endpoint, tmp_path=tmp_path
    )

    expected_files = {
        "copy.bin": content,
        "one.txt": b"one\n",
        "nested/deeper/two.txt": b"deep\n",
        "é ✓.txt": b"unicode\n",
    }
    # The zip bytes differ (member order, compression, timestamps): compare names and contents.
    assert unzip(ours.response) == expected_files
    assert unzip(faas) == unzip(ours.response)

    expected_uploads = {
        "sync-out/one.txt": b"one\n",
        "sync-out/nested/deeper/two.txt": b"deep\n",
        "sync-out/é ✓.txt": b"unicode\n",
    }
    assert await sides.our_objects(bucket) == expected_uploads
    assert await sides.faas_objects(bucket) == expected_uploads
    assert sorted(ours.uploaded) == sorted(f"{bucket}/{key}" for key in expected_uploads)


@pytest.mark.parametrize(
    ("body", "input_content"),
    [
        pytest.param(base64.b64encode(b"plain text"), "plain text", id="base64"),
        # JSON bodies are written re-serialised (``json.dumps``) by both.
        pytest.param(b'{"message":"hi","n":[1,2]}', '{"message": "hi", "n": [1, 2]}', id="json"),
    ],
)
async def test_sync_without_output_files_returns_the_script_output(
    body: bytes, input_content: str, sides: Sides, moto_endpoint: str, tmp_path: Path
) -> None:
    script = SHOW_INPUT_NAME + 'printf "content: %s\\n" "$(cat "$INPUT_FILE_PATH")"\n'

    faas, ours = await run_both(
        make_service(script), body, sides=sides, moto_endpoint=moto_endpoint, tmp_path=tmp_path
    )

    expected = (
        f"input file: event-file*\ninput file is in TMP_INPUT_DIR\ncontent: {input_content}\n"
    ).encode()
    assert ours.response == expected
    assert faas == ours.response


# --- storage events ------------------------------------------------------------------------------

SHOW_STORAGE_ENVIRONMENT = """\
echo "key=$STORAGE_OBJECT_KEY"
echo "time=$EVENT_TIME"
echo "job=$JOB_UUID"
echo "name=$(basename "$INPUT_FILE_PATH")"
[ "$(dirname "$INPUT_FILE_PATH")" = "$TMP_INPUT_DIR" ] && echo "input file is in TMP_INPUT_DIR"
echo "content=$(cat "$INPUT_FILE_PATH")"
printf 'EVENT=%s\\n' "$EVENT"
"""


def split_event_line(output: bytes) -> tuple[list[str], Any]:
    """The output's lines without the ``EVENT=`` line, and that line's JSON."""
    lines = output.decode().splitlines()
    (event_line,) = [line for line in lines if line.startswith("EVENT=")]
    return [line for line in lines if line != event_line], json.loads(event_line.removeprefix("EVENT="))


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(lambda key: quote_plus(key, safe=""), id="minio-encoding"),
        pytest.param(lambda key: quote(key, safe=""), id="percent-20-encoding"),
    ],
)
async def test_storage_event_object_key_and_upload(
    encode: Any, sides: Sides, moto_endpoint: str, tmp_path: Path
) -> None:
    bucket = new_bucket()
    await sides.create_bucket(bucket)
    key = "input/my file+ü ✓.txt"
    await sides.put(bucket, key, b"hello storage\n", tmp_path / "upload")
    script = SHOW_STORAGE_ENVIRONMENT + (
        'name="$(basename "$INPUT_FILE_PATH")"\n'
        'LC_ALL=C tr a-z A-Z < "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/$name.upper"\n'
    )
    service = make_service(
        script,
        input=[{"storage_provider": "minio", "path": f"{bucket}/input"}],
        output=[{"storage_provider": "minio.default", "path": f"{bucket}/output"}],
    )
    body = minio_event(bucket, encode(key))

    faas, ours = await run_both(service, body, sides=sides, moto_endpoint=moto_endpoint, tmp_path=tmp_path)

    # For storage events the response is the script's output on both sides.
    assert ours.response == ours.script_output
    our_lines, our_event = split_event_line(ours.response)
    faas_lines, faas_event = split_event_line(faas)
    assert our_lines == [
        f"key={key}",
        f"time={EVENT_TIME}",
        f"job={JOB_UUID}",
        "name=my file+ü ✓.txt",
        "input file is in TMP_INPUT_DIR",
        "content=hello storage",
    ]
    assert faas_lines == our_lines
    # $EVENT: ours is the body as received; faas-supervisor re-serialises it (``json.dumps``), so the text
    # differs (spaces, \\u escapes) but not the JSON.
    assert our_event == json.loads(body)
    assert faas_event == our_event

    expected = {key: b"hello storage\n", "output/my file+ü ✓.txt.upper": b"HELLO STORAGE\n"}
    assert await sides.our_objects(bucket) == expected
    assert await sides.faas_objects(bucket) == expected
    assert ours.uploaded == [f"{bucket}/output/my file+ü ✓.txt.upper"]


async def test_storage_event_output_filters_nested_files_and_several_outputs(
    sides: Sides, moto_endpoint: str, tmp_path: Path
) -> None:
    bucket, logs_bucket = new_bucket(), new_bucket()
    await sides.create_bucket(bucket)
    await sides.create_bucket(logs_bucket)
    await sides.put(bucket, "input/data.txt", b"data", tmp_path / "upload")
    script = """\
cd "$TMP_OUTPUT_DIR"
mkdir -p img sub deep/x
for f in result.txt result.log img/a.png img/b.jpg other.txt sub/result.txt deep/x/y.log; do
  printf '%s' "$f" > "$f"
done
ln -s "$INPUT_FILE_PATH" result-link.txt
echo done
"""
    service = make_service(
        script,
        input=[{"storage_provider": "minio", "path": f"{bucket}/input"}],
        output=[
            {
                "storage_provider": "minio",
                "path": f"{bucket}/filtered",
                "prefix": ["result", "img/"],
                "suffix": [".txt", ".png"],
            },
            # A bare bucket: files go to its root.
            {"storage_provider": "minio", "path": logs_bucket, "suffix": [".log"]},
        ],
    )

    faas, ours = await run_both(
        service,
        minio_event(bucket, "input%2Fdata.txt"),
        sides=sides,
        moto_endpoint=moto_endpoint,
        tmp_path=tmp_path,
    )

    assert ours.response == faas == b"done\n"
    expected = {
        "input/data.txt": b"data",
        "filtered/result.txt": b"result.txt",
        "filtered/img/a.png": b"img/a.png",
    }
    expected_logs = {"result.log": b"result.log", "deep/x/y.log": b"deep/x/y.log"}
    faas_objects = await sides.faas_objects(bucket)
    # Deliberate difference: faas-supervisor uploads what a symlink in the output folder points to (here
    # the input file; it could be any file the pod can read). We never upload symlinks: our uploads use
    # the manager's credentials and the link could point at the host's files.
    assert faas_objects.pop("filtered/result-link.txt") == b"data"
    assert await sides.our_objects(bucket) == expected
    assert faas_objects == expected
    assert await sides.our_objects(logs_bucket) == expected_logs
    assert await sides.faas_objects(logs_bucket) == expected_logs
