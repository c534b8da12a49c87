"""Stage in, script environment, stage out and the sync response, as library functions."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import stat
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from oscar_manager.domain.events import ObjectEvent, decode_payload, object_events, parse_json
from oscar_manager.domain.service import BUCKET_PROVIDER_TYPES, ProviderRef, Service, StorageIOConfig
from oscar_manager.storage.base import InvalidKey
from oscar_manager.storage.keys import validate_key
from oscar_manager.storage.providers import StoreResolver
from oscar_manager.supervisor.deadline import NO_DEADLINE, Deadline
from oscar_manager.supervisor.log import SupervisorLog
from oscar_manager.supervisor.reads import storage_reads
from oscar_manager.supervisor.workspace import Workspace

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EVENT_FILE_NAME = "event-file"


@dataclass(frozen=True, slots=True)
class Invocation:
    """What a job was started with: the raw body and, when it is one, the storage event in it."""

    body: bytes
    storage_event: ObjectEvent | None

    @classmethod
    def read(cls, body: bytes) -> Invocation:
        events = object_events(parse_json(body))
        return cls(body=body, storage_event=events[0] if events else None)

    @property
    def event_text(self) -> str:
        # Environment values cannot hold NUL; invalid UTF-8 is kept as replacement characters.
        return self.body.decode("utf-8", errors="replace").replace("\x00", "")


def split_path(path: str) -> tuple[str, str]:
    """``bucket/folder/sub`` -> (``bucket``, ``folder/sub``)."""
    bucket, _, folder = path.strip("/").partition("/")
    return bucket, folder


async def stage_in(
    *,
    invocation: Invocation,
    service: Service,
    stores: StoreResolver,
    workspace: Workspace,
    log: SupervisorLog,
    any_bucket: bool = False,
    deadline: Deadline = NO_DEADLINE,
) -> Path:
    """Put the job's input in the workspace and return ``INPUT_FILE_PATH``. A storage event is read from
    the provider of the service input holding its object; outside them only with ``any_bucket``."""
    event = invocation.storage_event
    if service.file_stage_in:
        log.info("file_stage_in is set: skipping the input download")
        return workspace.input_dir
    if event is not None:
        (read,) = storage_reads(service, [event], any_bucket=any_bucket)
        provider = read.provider
        name = event.key.rsplit("/", 1)[-1]
        target = workspace.input_dir / name
        what = f"downloading '{event.bucket}/{event.key}' from '{provider}'"
        log.info(what[:1].upper() + what[1:])
        await deadline.run(what, stores(provider).get_file(event.bucket, event.key, target))
        return target
    target = workspace.input_dir / EVENT_FILE_NAME
    content = decode_payload(invocation.body)
    await asyncio.to_thread(target.write_bytes, content)
    log.info(f"Received a {len(content)}-byte invocation body")
    return target


def script_environment(
    *,
    service: Service,
    invocation: Invocation,
    input_path: Path,
    workspace: Workspace,
    job_id: str,
    visible_path: Callable[[Path], str],
) -> dict[str, str]:
    """The script's whole environment. ``visible_path`` maps host paths to what the script sees."""
    env: dict[str, str] = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}
    env.update(service.environment.variables)
    env.update(service.environment.secrets)
    env.update(
        {
            "HOME": visible_path(workspace.root),
            "OSCAR_SERVICE_NAME": service.name,
            "OSCAR_SERVICE_TOKEN": service.token,
            "OSCAR_SERVICE_BASE_PATH": "",
            "JOB_UUID": job_id,
            "EVENT": invocation.event_text,
            "INPUT_FILE_PATH": visible_path(input_path),
            "TMP_INPUT_DIR": visible_path(workspace.input_dir),
            "TMP_OUTPUT_DIR": visible_path(workspace.output_dir),
        }
    )
    if invocation.storage_event is not None:
        env["STORAGE_OBJECT_KEY"] = invocation.storage_event.key
        env["EVENT_TIME"] = invocation.storage_event.event_time
    return env


def output_files(workspace: Workspace) -> list[str]:
    """Regular files under the output folder, relative, sorted. Symlinks are never followed or returned:
    the manager uploads with its own credentials, so a link to a host file must not leak it."""
    found: list[str] = []
    for directory, subdirs, files in os.walk(workspace.output_dir, followlinks=False):
        subdirs.sort()
        for name in files:
            path = Path(directory) / name
            if stat.S_ISREG(path.lstat().st_mode):
                found.append(path.relative_to(workspace.output_dir).as_posix())
    return sorted(found)


def matches_filters(name: str, output: StorageIOConfig) -> bool:
    """faas-supervisor's rule: any prefix (or none given), then any suffix (or none given)."""
    prefix_ok = not output.prefix or any(name.startswith(prefix) for prefix in output.prefix)
    return prefix_ok and (not output.suffix or any(name.endswith(suffix) for suffix in output.suffix))


async def stage_out(
    *,
    service: Service,
    stores: StoreResolver,
    workspace: Workspace,
    log: SupervisorLog,
    deadline: Deadline = NO_DEADLINE,
) -> list[str]:
    """Upload every output file that passes an output's filters; return ``bucket/key`` of each upload."""
    files = await asyncio.to_thread(output_files, workspace)
    uploaded: list[str] = []
    for output in service.output:
        ref = ProviderRef(output.storage_provider)
        if ref.type not in BUCKET_PROVIDER_TYPES:
            log.warning(f"Output provider '{ref}' is not supported here: skipping {output.path!r}")
            continue
        bucket, folder = split_path(output.path)
        for name in files:
            if not matches_filters(name, output):
                continue
            key = f"{folder}/{name}" if folder else name
            try:
                validate_key(key)
            except InvalidKey as exc:
                log.warning(f"Not uploading {name!r}: {exc.message}")
                continue
            what = f"uploading '{name}' to '{bucket}/{key}' on '{ref}'"
            log.info(what[:1].upper() + what[1:])
            await deadline.run(what, stores(str(ref)).put_file(bucket, key, workspace.output_dir / name))
            uploaded.append(f"{bucket}/{key}")
    return uploaded


def render_response(*, invocation: Invocation, workspace: Workspace, script_output: bytes) -> bytes:
    """What a sync caller gets back (faas-supervisor's ``create_response``)."""
    if invocation.storage_event is not None:
        return script_output
    files = output_files(workspace)
    if not files:
        return script_output
    if len(files) == 1:
        return base64.b64encode((workspace.output_dir / files[0]).read_bytes())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in files:
            archive.write(workspace.output_dir / name, arcname=name)
    return base64.b64encode(buffer.getvalue())


def validate_invocation_body(body: bytes) -> Invocation:
    """Parse and check a body before anything runs: a storage event, JSON, or base64 (else a 400)."""
    invocation = Invocation.read(body)
    if invocation.storage_event is None:
        decode_payload(body)
    return invocation
