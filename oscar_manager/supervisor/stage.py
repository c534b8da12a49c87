"""Stage in, script environment and stage out, as library functions (the sync answer: ``answer.py``)."""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from oscar_manager.domain.events import ObjectEvent, decode_payload, object_events, parse_json
from oscar_manager.domain.isolation import output_bucket
from oscar_manager.domain.providers import ProviderRef
from oscar_manager.domain.service import Service, StorageIOConfig
from oscar_manager.storage.base import InvalidKey
from oscar_manager.storage.blocking import run_blocking
from oscar_manager.storage.keys import validate_key
from oscar_manager.storage.providers import DEFAULT_PROVIDER, SINK_PROVIDER_TYPES, SinkResolver, StoreResolver
from oscar_manager.supervisor.deadline import NO_DEADLINE, Deadline
from oscar_manager.supervisor.log import SupervisorLog
from oscar_manager.supervisor.outputs import OpenFile, file_chunks, open_output, output_files, write_input
from oscar_manager.supervisor.reads import storage_reads
from oscar_manager.supervisor.workspace import Workspace

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EVENT_FILE_NAME = "event-file"
# Linux refuses an execve with an environment string over MAX_ARG_STRLEN (32 pages: 128 KiB, "EVENT=" and
# the NUL included), or with arguments and environment together over a quarter of the stack limit. A
# body larger than this is not in EVENT (which is then unset): the script reads the payload at
# INPUT_FILE_PATH, as it does anyway. Half the per-string limit leaves room for the service's variables.
EVENT_ENV_MAX_BYTES: Final = 64 * 1024


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
    def event_variable(self) -> str | None:
        """``EVENT``: the body as text, or None (unset) when that is over ``EVENT_ENV_MAX_BYTES``."""
        return event_variable(self.body)


def event_variable(body: bytes) -> str | None:
    """``EVENT`` for ``body``: its text, or None (unset) when that is over ``EVENT_ENV_MAX_BYTES``."""
    if len(body) > EVENT_ENV_MAX_BYTES:  # over, whatever its text: no need to decode megabytes
        return None
    # Environment values cannot hold NUL; invalid UTF-8 is kept as replacement characters.
    text = body.decode("utf-8", errors="replace").replace("\x00", "")
    return text if len(text.encode()) <= EVENT_ENV_MAX_BYTES else None


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
        what = f"downloading '{event.bucket}/{event.key}' from '{provider}'"
        log.info(what[:1].upper() + what[1:])
        chunks = stores(provider).read_stream(event.bucket, event.key)
        await deadline.run(what, write_input(workspace, name, chunks))
        return workspace.input_dir / name
    content = decode_payload(invocation.body)
    await write_input(workspace, EVENT_FILE_NAME, _once(content))
    log.info(f"Received a {len(content)}-byte invocation body")
    return workspace.input_dir / EVENT_FILE_NAME


def _close(opened: OpenFile | None) -> None:
    if opened is not None:
        os.close(opened.fd)


async def _once(content: bytes) -> AsyncIterator[bytes]:
    yield content


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
            "INPUT_FILE_PATH": visible_path(input_path),
            "TMP_INPUT_DIR": visible_path(workspace.input_dir),
            "TMP_OUTPUT_DIR": visible_path(workspace.output_dir),
        }
    )
    event = invocation.event_variable
    if event is None:
        env.pop("EVENT", None)  # unset means unset, even if the service defines a variable of that name
    else:
        env["EVENT"] = event
    if invocation.storage_event is not None:
        env["STORAGE_OBJECT_KEY"] = invocation.storage_event.key
        env["EVENT_TIME"] = invocation.storage_event.event_time
    return env


def matches_filters(name: str, output: StorageIOConfig) -> bool:
    """faas-supervisor's rule: any prefix (or none given), then any suffix (or none given)."""
    prefix_ok = not output.prefix or any(name.startswith(prefix) for prefix in output.prefix)
    return prefix_ok and (not output.suffix or any(name.endswith(suffix) for suffix in output.suffix))


async def stage_out(
    *,
    service: Service,
    invocation: Invocation,
    stores: SinkResolver,
    workspace: Workspace,
    log: SupervisorLog,
    deadline: Deadline = NO_DEADLINE,
) -> list[str]:
    """Upload every output file that passes an output's filters; return ``bucket/key`` of each upload
    (for a WebDAV output: the path under the server's base URL). A job started by an upload to a user's
    private bucket (USER isolation) writes its ``minio.default`` outputs back into that bucket
    (``domain.isolation``)."""
    event = invocation.storage_event
    files = await run_blocking(functools.partial(output_files, workspace, log))
    uploaded: list[str] = []
    for output in service.output:
        ref = ProviderRef(output.storage_provider)
        if ref.type not in SINK_PROVIDER_TYPES:
            log.warning(f"Output provider '{ref}' is not supported here: skipping {output.path!r}")
            continue
        bucket, folder = split_path(output.path)
        if str(ref) == DEFAULT_PROVIDER:
            bucket = output_bucket(service, configured=bucket, event_bucket=event.bucket if event else None)
        for name in files:
            if not matches_filters(name, output):
                continue
            key = f"{folder}/{name}" if folder else name
            try:
                validate_key(key)
            except InvalidKey as exc:
                log.warning(f"Not uploading {name!r}: {exc.message}")
                continue
            opened = await run_blocking(functools.partial(open_output, workspace, name), discard=_close)
            if opened is None:
                log.warning(f"Not uploading {name!r}: it is no longer a regular file")
                continue
            what = f"uploading '{name}' to '{bucket}/{key}' on '{ref}'"
            log.info(what[:1].upper() + what[1:])
            try:
                # From the descriptor, never by path: the script may have swapped a folder for a link.
                await deadline.run(what, stores(str(ref)).put_stream(bucket, key, file_chunks(opened)))
            finally:
                os.close(opened.fd)
            uploaded.append(f"{bucket}/{key}")
    return uploaded


def validate_invocation_body(body: bytes) -> Invocation:
    """Parse and check a body before anything runs: a storage event, JSON, or base64 (else a 400)."""
    invocation = Invocation.read(body)
    if invocation.storage_event is None:
        decode_payload(body)
    return invocation
