"""The supervisor functions (stage in, script environment, stage out, sync response) on a real local store.

The expected values follow faas-supervisor (see ``tests/integration/test_supervisor_crosscheck.py``,
which runs the real one side by side with ours).
"""

from __future__ import annotations

import base64
import io
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from oscar_manager.domain.events import ObjectEvent, notification
from oscar_manager.domain.providers import ProviderRef
from oscar_manager.domain.service import Service, StorageIOConfig, parse_service
from oscar_manager.errors import BadRequest, Forbidden
from oscar_manager.storage.base import ObjectStore
from oscar_manager.storage.local import LocalObjectStore
from oscar_manager.storage.providers import Stores
from oscar_manager.supervisor.answer import render_response
from oscar_manager.supervisor.cli import container_environment
from oscar_manager.supervisor.log import SupervisorLog
from oscar_manager.supervisor.outputs import output_files
from oscar_manager.supervisor.stage import (
    EVENT_FILE_NAME,
    Invocation,
    matches_filters,
    script_environment,
    stage_in,
    stage_out,
    validate_invocation_body,
)
from oscar_manager.supervisor.workspace import Workspace
from tests.support.factories import service_body

BUCKET = "svc"
EVENT_TIME = "2026-01-02T03:04:05.678Z"

# An invocation without a storage event (a plain /job body).
NO_EVENT = Invocation(body=b"", storage_event=None)


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "buckets")


@pytest.fixture
def stores(store: LocalObjectStore) -> Stores:
    return Stores(store)


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Workspace]:
    made = Workspace.create(tmp_path / "work")
    yield made
    made.cleanup()


@pytest.fixture
def log() -> SupervisorLog:
    return SupervisorLog("DEBUG")


def render(*, invocation: Invocation, workspace: Workspace, script_output: bytes) -> bytes:
    """The whole sync answer, uncapped."""
    answer = render_response(
        invocation=invocation, workspace=workspace, script_output=script_output, limit=None
    )
    try:
        return answer.read()
    finally:
        answer.close()


def make_service(**fields: Any) -> Service:
    return parse_service(service_body("svc", **fields))


def storage_body(bucket: str, encoded_key: str, *, event_time: str = EVENT_TIME) -> bytes:
    """A MinIO notification whose ``s3.object.key`` is exactly ``encoded_key`` (as MinIO sends it)."""
    document = notification(
        ObjectEvent(bucket=bucket, key="placeholder", etag="e", size=1, event_time=event_time)
    )
    document["Records"][0]["s3"]["object"]["key"] = encoded_key
    return json.dumps(document).encode()


async def put(store: LocalObjectStore, bucket: str, key: str, content: bytes) -> None:
    source = store.root.parent / "upload.tmp"
    source.write_bytes(content)
    await store.ensure_bucket(bucket)
    await store.put_file(bucket, key, source)


async def read_object(store: LocalObjectStore, bucket: str, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.read_stream(bucket, key)])


async def bucket_contents(store: LocalObjectStore, bucket: str) -> dict[str, bytes]:
    return {info.key: await read_object(store, bucket, info.key) for info in await store.list_objects(bucket)}


def write_outputs(workspace: Workspace, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        path = workspace.output_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


# --- stage in ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoded_key", "key"),
    [
        # MinIO's encoding (Go's url.QueryEscape): '/' as %2F, space as '+', '+' as %2B.
        ("input%2Fmy+file.txt", "input/my file.txt"),
        ("input%2Fa%2Bb+c.txt", "input/a+b c.txt"),
        ("input%2Fcaf%C3%A9+%E2%9C%93.txt", "input/café ✓.txt"),
        # Our own notifications (urllib's quote): space as %20.
        (quote("input/my file.txt", safe=""), "input/my file.txt"),
        ("input/sub/dir/deep.txt", "input/sub/dir/deep.txt"),
    ],
)
async def test_stage_in_downloads_the_event_object_under_its_decoded_key(
    encoded_key: str,
    key: str,
    store: LocalObjectStore,
    stores: Stores,
    workspace: Workspace,
    log: SupervisorLog,
) -> None:
    await put(store, BUCKET, key, b"object content \xff")
    invocation = Invocation.read(storage_body(BUCKET, encoded_key))
    assert invocation.storage_event is not None
    assert invocation.storage_event.key == key

    service = make_service(input=[{"storage_provider": "minio", "path": f"{BUCKET}/input"}])
    path = await stage_in(invocation=invocation, service=service, stores=stores, workspace=workspace, log=log)

    # Like faas-supervisor: the input file is named after the key's last segment.
    assert path == workspace.input_dir / key.rsplit("/", 1)[-1]
    assert path.read_bytes() == b"object content \xff"


async def test_stage_in_reads_from_the_provider_of_the_matching_input(
    tmp_path: Path, store: LocalObjectStore, workspace: Workspace, log: SupervisorLog
) -> None:
    other = LocalObjectStore(tmp_path / "other")
    await put(store, "shared", "in/x.txt", b"from default")
    await put(other, "shared", "in/x.txt", b"from other")
    service = make_service(input=[{"storage_provider": "minio.other", "path": "shared/in"}])
    by_provider = {"minio.default": store, "minio.other": other}

    def stores(provider: str) -> ObjectStore:
        return by_provider[str(ProviderRef(provider))]

    matching = await stage_in(
        invocation=Invocation.read(storage_body("shared", "in%2Fx.txt")),
        service=service,
        stores=stores,
        workspace=workspace,
        log=log,
    )
    assert matching.read_bytes() == b"from other"

    # An object under none of the inputs is not read from minio.default instead: it is not read at all,
    # unless the caller may read any bucket (the admin's sync runs), and then from minio.default.
    await put(store, "elsewhere", "in/y.txt", b"default")
    outside = Invocation.read(storage_body("elsewhere", "in%2Fy.txt"))
    with pytest.raises(Forbidden):
        await stage_in(invocation=outside, service=service, stores=stores, workspace=workspace, log=log)
    assert not (workspace.input_dir / "y.txt").exists()
    admins = await stage_in(
        invocation=outside, service=service, stores=stores, workspace=workspace, log=log, any_bucket=True
    )
    assert admins.read_bytes() == b"default"


async def test_stage_in_base64_body_is_decoded_into_the_event_file(
    stores: Stores, workspace: Workspace, log: SupervisorLog
) -> None:
    content = bytes(range(256)) * 3
    # Line-wrapped, as the ``base64`` tool prints it.
    encoded = base64.encodebytes(content)
    assert b"\n" in encoded.strip()

    path = await stage_in(
        invocation=Invocation.read(encoded),
        service=make_service(),
        stores=stores,
        workspace=workspace,
        log=log,
    )

    assert path == workspace.input_dir / EVENT_FILE_NAME
    assert path.read_bytes() == content


async def test_stage_in_json_body_is_written_reserialised(
    stores: Stores, workspace: Workspace, log: SupervisorLog
) -> None:
    body = '{"message":"hi",  "n":[1,2],"text":"é"}'.encode()

    path = await stage_in(
        invocation=Invocation.read(body), service=make_service(), stores=stores, workspace=workspace, log=log
    )

    # faas-supervisor parses the body and writes ``json.dumps`` of it (spaces after separators, ASCII).
    assert path.read_bytes() == b'{"message": "hi", "n": [1, 2], "text": "\\u00e9"}'


@pytest.mark.parametrize("body", [b"this is not base64!", b"abc", b"\xff\xfe"])
async def test_stage_in_refuses_a_body_that_is_neither_json_nor_base64(
    body: bytes, stores: Stores, workspace: Workspace, log: SupervisorLog
) -> None:
    with pytest.raises(BadRequest) as raised:
        await stage_in(
            invocation=Invocation.read(body),
            service=make_service(),
            stores=stores,
            workspace=workspace,
            log=log,
        )
    assert raised.value.status_code == 400
    assert list(workspace.input_dir.iterdir()) == []
    with pytest.raises(BadRequest):
        validate_invocation_body(body)


async def test_file_stage_in_skips_the_download(
    store: LocalObjectStore, stores: Stores, workspace: Workspace, log: SupervisorLog
) -> None:
    await put(store, BUCKET, "input/data.txt", b"data")
    service = make_service(file_stage_in=True)

    for body in (storage_body(BUCKET, "input%2Fdata.txt"), base64.b64encode(b"payload")):
        path = await stage_in(
            invocation=Invocation.read(body), service=service, stores=stores, workspace=workspace, log=log
        )
        assert path == workspace.input_dir
        assert list(workspace.input_dir.iterdir()) == []
    # Not even an object that does not exist is an error: nothing is read.
    path = await stage_in(
        invocation=Invocation.read(storage_body(BUCKET, "input%2Fmissing.txt")),
        service=service,
        stores=stores,
        workspace=workspace,
        log=log,
    )
    assert path == workspace.input_dir


# --- script environment --------------------------------------------------------------------------


def _visible(workspace: Workspace) -> Any:
    return lambda path: "/sandbox/" + path.relative_to(workspace.root).as_posix()


def test_script_environment_for_a_storage_event(workspace: Workspace) -> None:
    service = make_service(
        environment={
            "variables": {"INPUT_TYPE": "json", "INPUT_FILE_PATH": "/etc/passwd"},
            "secrets": {"API_TOKEN": "s3cret"},
        }
    )
    body = storage_body(BUCKET, "input%2Fmy+file%C3%A9.txt")
    invocation = Invocation.read(body)
    input_path = workspace.input_dir / "my fileé.txt"

    env = script_environment(
        service=service,
        invocation=invocation,
        input_path=input_path,
        workspace=workspace,
        job_id="svc-1234",
        visible_path=_visible(workspace),
    )

    assert env["INPUT_FILE_PATH"] == "/sandbox/input/my fileé.txt"  # the service cannot override it
    assert env["TMP_INPUT_DIR"] == "/sandbox/input"
    assert env["TMP_OUTPUT_DIR"] == "/sandbox/output"
    assert env["STORAGE_OBJECT_KEY"] == "input/my fileé.txt"
    assert env["EVENT_TIME"] == EVENT_TIME
    assert json.loads(env["EVENT"]) == json.loads(body)
    assert env["JOB_UUID"] == "svc-1234"
    assert env["OSCAR_SERVICE_NAME"] == "svc"
    assert env["INPUT_TYPE"] == "json"
    assert env["API_TOKEN"] == "s3cret"
    assert "/bin" in env["PATH"].split(":")


def test_script_environment_for_a_body_has_no_storage_variables(workspace: Workspace) -> None:
    body = base64.b64encode(b"hello")
    env = script_environment(
        service=make_service(),
        invocation=Invocation.read(body),
        input_path=workspace.input_dir / EVENT_FILE_NAME,
        workspace=workspace,
        job_id="svc-run",
        visible_path=_visible(workspace),
    )
    assert env["INPUT_FILE_PATH"] == f"/sandbox/input/{EVENT_FILE_NAME}"
    assert env["EVENT"] == body.decode()
    assert "STORAGE_OBJECT_KEY" not in env
    assert "EVENT_TIME" not in env


def test_event_never_holds_nul_or_invalid_utf8(workspace: Workspace) -> None:
    invocation = Invocation.read(b"ab\x00cd\xff")
    assert invocation.event_variable == "abcd\ufffd"
    env = script_environment(
        service=make_service(),
        invocation=invocation,
        input_path=workspace.input_dir,
        workspace=workspace,
        job_id="j",
        visible_path=str,
    )
    assert env["EVENT"] == "abcd\ufffd"
    assert all("\x00" not in value for value in env.values())


# --- stage out -----------------------------------------------------------------------------------

OUTPUT_FILES = {
    "result.txt": b"1",
    "result.log": b"2",
    "image.png": b"3",
    "other.txt": b"4",
    "sub/result.txt": b"5",
}


@pytest.mark.parametrize(
    ("prefix", "suffix", "expected"),
    [
        ([], [], sorted(OUTPUT_FILES)),
        (["result"], [], ["result.log", "result.txt"]),
        ([], [".txt"], ["other.txt", "result.txt", "sub/result.txt"]),
        (["result", "image"], [".txt", ".png"], ["image.png", "result.txt"]),
        # Filters apply to the name relative to the output folder.
        (["sub/"], [], ["sub/result.txt"]),
        (["nothing"], [], []),
        ([], [".none"], []),
    ],
)
async def test_stage_out_applies_prefix_then_suffix_filters(
    prefix: list[str],
    suffix: list[str],
    expected: list[str],
    store: LocalObjectStore,
    stores: Stores,
    workspace: Workspace,
    log: SupervisorLog,
) -> None:
    service = make_service(
        output=[{"storage_provider": "minio.default", "path": "svc/out", "prefix": prefix, "suffix": suffix}]
    )
    write_outputs(workspace, OUTPUT_FILES)
    await store.ensure_bucket("svc")

    uploaded = await stage_out(
        service=service, invocation=NO_EVENT, stores=stores, workspace=workspace, log=log
    )

    assert sorted(uploaded) == [f"svc/out/{name}" for name in expected]
    assert await bucket_contents(store, "svc") == {f"out/{name}": OUTPUT_FILES[name] for name in expected}


@pytest.mark.parametrize(
    ("name", "prefix", "suffix", "expected"),
    [
        ("a.txt", [], [], True),
        ("a.txt", ["a"], [], True),
        ("a.txt", ["b", "a"], [".png", ".txt"], True),
        ("a.txt", ["b"], [], False),
        ("a.txt", [], [".png"], False),
        ("a.txt", ["a"], [".png"], False),
        ("dir/a.txt", ["a"], [], False),
    ],
)
def test_matches_filters(name: str, prefix: list[str], suffix: list[str], expected: bool) -> None:
    assert matches_filters(name, StorageIOConfig(path="b/f", prefix=prefix, suffix=suffix)) is expected


async def test_stage_out_nested_and_several_outputs(
    store: LocalObjectStore, stores: Stores, workspace: Workspace, log: SupervisorLog
) -> None:
    # parse_service only: ``normalise_new`` would turn a bare bucket into ``<service>/<bucket>``.
    service = make_service(
        output=[
            {"storage_provider": "minio", "path": "results/deep/folder", "suffix": [".txt"]},
            {"storage_provider": "minio.default", "path": "flat"},
        ]
    )
    write_outputs(workspace, {"a/b/c.txt": b"nested", "top.txt": b"top", "pic.png": b"png"})
    for bucket in ("results", "flat"):
        await store.ensure_bucket(bucket)

    uploaded = await stage_out(
        service=service, invocation=NO_EVENT, stores=stores, workspace=workspace, log=log
    )

    assert sorted(uploaded) == [
        "flat/a/b/c.txt",
        "flat/pic.png",
        "flat/top.txt",
        "results/deep/folder/a/b/c.txt",
        "results/deep/folder/top.txt",
    ]
    assert await bucket_contents(store, "results") == {
        "deep/folder/a/b/c.txt": b"nested",
        "deep/folder/top.txt": b"top",
    }
    # An output path that is only a bucket puts the files at its root.
    assert await bucket_contents(store, "flat") == {
        "a/b/c.txt": b"nested",
        "pic.png": b"png",
        "top.txt": b"top",
    }


async def test_stage_out_skips_outputs_it_cannot_write(
    store: LocalObjectStore, stores: Stores, workspace: Workspace, log: SupervisorLog
) -> None:
    service = make_service(
        output=[
            {"storage_provider": "onedata.space", "path": "somewhere/out"},
            {"storage_provider": "minio", "path": "svc/out"},
        ]
    )
    write_outputs(workspace, {"r.txt": b"r"})
    await store.ensure_bucket("svc")

    uploaded = await stage_out(
        service=service, invocation=NO_EVENT, stores=stores, workspace=workspace, log=log
    )

    assert uploaded == ["svc/out/r.txt"]
    assert "onedata.space" in log.text()
    assert "WARNING" in log.text()


async def test_symlinks_and_special_files_in_the_output_folder_are_never_uploaded(
    tmp_path: Path, store: LocalObjectStore, stores: Stores, workspace: Workspace, log: SupervisorLog
) -> None:
    host_file = tmp_path / "host-secret.txt"
    host_file.write_bytes(b"host secret")
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    (host_dir / "inside.txt").write_bytes(b"host dir secret")
    out = workspace.output_dir
    (out / "real.txt").write_bytes(b"real output")
    (out / "leak.txt").symlink_to(host_file)
    (out / "leak-dir").symlink_to(host_dir)
    (out / "nested").mkdir()
    (out / "nested" / "leak.txt").symlink_to(host_file)
    os.mkfifo(out / "fifo")
    service = make_service(output=[{"storage_provider": "minio", "path": "svc/out"}])
    await store.ensure_bucket("svc")

    assert output_files(workspace) == ["real.txt"]
    uploaded = await stage_out(
        service=service, invocation=NO_EVENT, stores=stores, workspace=workspace, log=log
    )

    assert uploaded == ["svc/out/real.txt"]
    assert await bucket_contents(store, "svc") == {"out/real.txt": b"real output"}
    # The sync response ignores them too: one real file means that file, not a zip.
    response = render(
        invocation=Invocation.read(base64.b64encode(b"x")), workspace=workspace, script_output=b"log"
    )
    assert base64.b64decode(response) == b"real output"


# --- sync response -------------------------------------------------------------------------------

BODY = base64.b64encode(b"input")


def test_response_one_file_is_its_base64(workspace: Workspace) -> None:
    content = bytes(range(256))
    write_outputs(workspace, {"only/file.bin": content})
    response = render(invocation=Invocation.read(BODY), workspace=workspace, script_output=b"log")
    assert response == base64.b64encode(content)


def test_response_several_files_are_a_base64_zip(workspace: Workspace) -> None:
    files = {"a.txt": b"alpha", "b/c.bin": bytes(range(100)), "é ✓.txt": "ünicode ✓".encode()}
    write_outputs(workspace, files)
    response = render(invocation=Invocation.read(BODY), workspace=workspace, script_output=b"log")
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(response, validate=True))) as archive:
        assert sorted(archive.namelist()) == sorted(files)
        assert {name: archive.read(name) for name in archive.namelist()} == files


@pytest.mark.parametrize("body", [BODY, b'{"message": "hi"}'])
def test_response_without_files_is_the_script_output(body: bytes, workspace: Workspace) -> None:
    output = b"line one\nline \xff two\n"
    assert render(invocation=Invocation.read(body), workspace=workspace, script_output=output) == output


def test_response_to_a_storage_event_is_the_script_output(workspace: Workspace) -> None:
    write_outputs(workspace, {"result.txt": b"uploaded, not returned"})
    body = storage_body(BUCKET, quote_plus("input/x.txt", safe=""))
    response = render(invocation=Invocation.read(body), workspace=workspace, script_output=b"done\n")
    assert response == b"done\n"


BOOTLOADER_ENV = {
    "PATH": "/bin",
    "LD_LIBRARY_PATH": "/tmp/_MEI123:/opt/lib",
    "LD_LIBRARY_PATH_ORIG": "/opt/lib",
    "_PYI_ARCHIVE_FILE": "/tmp/staticx-x/supervisor",
    "STATICX_BUNDLE_DIR": "/tmp/staticx-x",
}


def test_frozen_supervisor_gives_the_script_the_containers_library_path() -> None:
    assert container_environment(BOOTLOADER_ENV, frozen=True) == {
        "PATH": "/bin",
        "LD_LIBRARY_PATH": "/opt/lib",
    }
    without_original = {k: v for k, v in BOOTLOADER_ENV.items() if k != "LD_LIBRARY_PATH_ORIG"}
    assert container_environment(without_original, frozen=True) == {"PATH": "/bin"}


def test_python_supervisor_keeps_the_library_path_it_was_given() -> None:
    env = {"PATH": "/bin", "LD_LIBRARY_PATH": "/opt/lib"}
    assert container_environment(env, frozen=False) == env
