"""``oscar-supervisor``: the supervisor as a program, for job containers.

It reads what faas-supervisor reads, where faas-supervisor reads it, so OSCAR's pod layout works as is:

- the event on standard input; when that is empty, from the parts the manager mounted at ``/oscar/event``
  (a body too large for the environment: ``supervisor/body_parts.py``), else from ``EVENT`` (base64 when
  ``OSCAR_EVENT_ENCODING`` says so: ``supervisor/event_env.py``);
- the service definition from ``/oscar/config/function_config.yaml``, else ``FUNCTION_CONFIG`` (base64 YAML);
- the script from ``SCRIPT`` (base64) if set, else ``/oscar/config/script.sh``;
- ``minio.default`` credentials from ``/var/run/secrets/providers/minio.default/{accessKey,secretKey}``, other
  providers' credentials (``webdav.<id>`` outputs' among them) from the definition's ``storage_providers``.

It stages the input in, runs ``/bin/sh script.sh`` with the container's environment plus the OSCAR
variables, stages the outputs out when the script succeeds, prints the sync response on standard output and
its own log and the script's output on standard error, and exits with the script's exit code. With
``OSCAR_RESPONSE_FRAME`` set (sync Jobs on Kubernetes) the response is framed, to be found in the pod log.

``oscar-supervisor serve`` is a warm pod's server instead: one sync run per HTTP request
(``supervisor.serve``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from oscar_manager.domain.providers import DEFAULT_PROVIDER_ID, ProviderRef
from oscar_manager.domain.service import Service, parse_service
from oscar_manager.errors import OscarError
from oscar_manager.storage.base import ObjectSink, ObjectStore
from oscar_manager.storage.providers import (
    S3_PROVIDER_TYPES,
    SINK_PROVIDER_TYPES,
    WEBDAV,
    ServiceProviders,
    s3_settings,
    webdav_settings,
)
from oscar_manager.storage.s3 import S3ObjectStore
from oscar_manager.storage.webdav import WebDavSink
from oscar_manager.supervisor import body_parts, event_env, response_frame
from oscar_manager.supervisor import deadline as deadlines
from oscar_manager.supervisor.answer import ResponseTooLarge, SyncAnswer, encoded_size, render_response
from oscar_manager.supervisor.log import SupervisorLog
from oscar_manager.supervisor.reads import READ_ANY_BUCKET_ENV
from oscar_manager.supervisor.stage import Invocation, script_environment, stage_in, stage_out
from oscar_manager.supervisor.workspace import Workspace

CONFIG_FILE = Path("/oscar/config/function_config.yaml")
SCRIPT_FILE = Path("/oscar/config/script.sh")
CREDENTIALS_DIR = Path("/var/run/secrets/providers")
BODY_DIR = Path(body_parts.BODY_DIR)
SHELL = "/bin/sh"
# What the container's environment says of the event, not for the script: EVENT is the supervisor's to set
# (only when the body fits), and its encoding and the parts' description are the manager's message to the
# supervisor.
_EVENT_CARRIERS = ("EVENT", event_env.ENCODING_ENV, body_parts.PARTS_ENV, body_parts.DIGEST_ENV)


class ConfigurationError(OscarError):
    status_code = 500


def read_event(stdin: bytes, env: Mapping[str, str], body_dir: Path = BODY_DIR) -> bytes:
    """The invocation body: standard input, else the mounted parts (when the environment describes
    some), else ``EVENT`` (decoded as ``OSCAR_EVENT_ENCODING`` says)."""
    if stdin.strip():
        return stdin
    if body_parts.PARTS_ENV in env:
        return body_parts.read(body_dir, env)
    return event_env.decoded(env)


def read_definition(env: Mapping[str, str], config_file: Path = CONFIG_FILE) -> Service:
    if config_file.is_file():
        text = config_file.read_text()
    elif env.get("FUNCTION_CONFIG"):
        text = _b64_text(env["FUNCTION_CONFIG"], "FUNCTION_CONFIG")
    else:
        raise ConfigurationError(f"no service definition: neither {config_file} nor FUNCTION_CONFIG exists")
    document = yaml.safe_load(text) or {}
    if not isinstance(document, dict):
        raise ConfigurationError("the service definition is not a mapping")
    # The stored definition has its script blanked; the script comes on its own (SCRIPT or script.sh).
    document.setdefault("name", env.get("OSCAR_SERVICE_NAME", "service"))
    document.setdefault("image", "")
    document["script"] = document.get("script") or ""
    return parse_service(document)


def read_script(env: Mapping[str, str], script_file: Path = SCRIPT_FILE) -> str:
    if env.get("SCRIPT"):
        return _b64_text(env["SCRIPT"], "SCRIPT")
    if script_file.is_file():
        return script_file.read_text()
    raise ConfigurationError(f"no script: neither SCRIPT nor {script_file} exists")


def _b64_text(value: str, name: str) -> str:
    try:
        return base64.b64decode(value, validate=False).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{name} is not base64-encoded UTF-8 text: {exc}") from None


def _response_limit(env: Mapping[str, str]) -> int | None:
    """The manager's cap on sync answers, when it passed one (sync Jobs); else none."""
    value = env.get(response_frame.MAX_ENV, "")
    return int(value) if value.isdigit() else None


def provider_settings(service: Service, reference: ProviderRef, credentials_dir: Path) -> dict[str, Any]:
    """Endpoint and keys of a provider: the definition's entry, with mounted credentials for minio.default."""
    entry = dict(service.storage_providers.get(reference.type, {}).get(reference.id) or {})
    mounted = credentials_dir / str(reference)
    if reference.type == "minio" and reference.id == DEFAULT_PROVIDER_ID and mounted.is_dir():
        for key, filename in (("access_key", "accessKey"), ("secret_key", "secretKey")):
            if (mounted / filename).is_file():
                entry[key] = (mounted / filename).read_text().strip()
    return entry


async def open_stores(
    service: Service, stack: contextlib.AsyncExitStack, credentials_dir: Path
) -> ServiceProviders:
    """One store per provider the service's inputs and outputs use (MinIO and S3 speak the same API), and
    one sink per WebDAV provider its outputs use.

    Unlike the manager's (``Stores.for_service``), these clients are not held to the egress rule of
    ``storage.egress``: here the supervisor runs in the job's pod, beside the script, with the pod's network
    and credentials, which the script has as well; its loopback is the pod's own, not the manager's. What a
    job may reach on Kubernetes is the cluster's network policy's to decide.
    """
    stores: dict[str, ObjectStore] = {}
    sinks: dict[str, ObjectSink] = {}
    used = [(io, S3_PROVIDER_TYPES) for io in service.input]
    used += [(io, SINK_PROVIDER_TYPES) for io in service.output]
    for io_config, types in used:
        reference = ProviderRef(io_config.storage_provider or "minio")
        name = str(reference)
        if name in stores or name in sinks or reference.type not in types:
            continue
        entry = provider_settings(service, reference, credentials_dir)
        if reference.type == WEBDAV:
            sinks[name] = await stack.enter_async_context(WebDavSink.connect(name, webdav_settings(entry)))
        else:
            stores[name] = await stack.enter_async_context(
                S3ObjectStore.connect(**s3_settings(reference, entry))
            )
    return ServiceProviders(stores, sinks)


async def run_script(
    script: Path, env: Mapping[str, str], cwd: Path, *, live: BinaryIO | None = None
) -> tuple[int, bytes]:
    """Run the script with stdout and stderr merged; return its exit code and output, echoing the output to
    ``live`` as it comes. Cancelled, the script and everything it started are killed (its own process
    group: a background child would otherwise keep the output pipe, and the wait, open)."""
    process = await asyncio.create_subprocess_exec(
        SHELL,
        str(script),
        cwd=cwd,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert process.stdout is not None
    output = bytearray()
    try:
        while chunk := await process.stdout.read(65536):
            output += chunk
            if live is not None:
                live.write(chunk)
                live.flush()
        await process.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        raise
    return process.returncode if process.returncode is not None else 1, bytes(output)


async def supervise(
    event: bytes,
    *,
    env: Mapping[str, str],
    config_file: Path = CONFIG_FILE,
    script_file: Path = SCRIPT_FILE,
    credentials_dir: Path = CREDENTIALS_DIR,
    live: BinaryIO | None = None,
) -> tuple[int, SyncAnswer, str]:
    """Run one invocation; return (exit code, sync response, log); the caller closes the response. With
    ``live``, the log and the script's output are also written there as they happen."""
    service = read_definition(env, config_file)
    service = service.model_copy(update={"script": read_script(env, script_file)})

    def sink(line: str) -> None:
        assert live is not None
        live.write(line.encode())
        live.flush()

    log = SupervisorLog(
        env.get("LOG_LEVEL") or service.log_level or "INFO", sink=sink if live is not None else None
    )
    workspace = Workspace.create(Path(env["TMPDIR"]) if env.get("TMPDIR") else None, prefix="oscar-")
    try:
        async with contextlib.AsyncExitStack() as stack:
            stores = await open_stores(service, stack, credentials_dir)
            invocation = Invocation.read(event)
            deadline = deadlines.from_environment(env)
            input_path = await stage_in(
                invocation=invocation,
                service=service,
                stores=stores,
                workspace=workspace,
                log=log,
                any_bucket=env.get(READ_ANY_BUCKET_ENV) == "true",
                deadline=deadline,
            )
            script_env = {
                **{name: value for name, value in env.items() if name not in _EVENT_CARRIERS},
                **script_environment(
                    service=service,
                    invocation=invocation,
                    input_path=input_path,
                    workspace=workspace,
                    job_id=env.get("JOB_UUID", ""),
                    visible_path=str,
                ),
            }
            # The container's own PATH wins over the default one.
            if env.get("PATH"):
                script_env["PATH"] = env["PATH"]
            workspace.write_script(service.script)
            log.info("Running the user script")
            try:
                async with asyncio.timeout(deadline.remaining()):
                    code, output = await run_script(workspace.script, script_env, workspace.root, live=live)
            except TimeoutError:
                log.error(f"The script was killed after the {deadline.seconds:g} s timeout")
                return 1, SyncAnswer.of_bytes(b""), log.text()
            log.output(output.decode("utf-8", errors="replace"))
            if code != 0:
                log.error(f"The script exited with code {code}")
                return code, SyncAnswer.of_bytes(output), log.text()
            await stage_out(
                service=service,
                invocation=invocation,
                stores=stores.sink,
                workspace=workspace,
                log=log,
                deadline=deadline,
            )
            answer = render_response(
                invocation=invocation,
                workspace=workspace,
                script_output=output,
                limit=_response_limit(env),
                log=log,
            )
            return 0, answer, log.text()
    finally:
        workspace.cleanup()


async def run(
    event: bytes,
    *,
    env: Mapping[str, str],
    stdout: BinaryIO,
    stderr: BinaryIO,
    config_file: Path = CONFIG_FILE,
    script_file: Path = SCRIPT_FILE,
    credentials_dir: Path = CREDENTIALS_DIR,
) -> int:
    """The container's life: supervise with the log and the script's output going to standard error as
    they happen, then the sync response on standard output (framed when the manager reads it back from
    the pod log); return the exit code."""
    try:
        code, response, _log = await supervise(
            event,
            env=env,
            config_file=config_file,
            script_file=script_file,
            credentials_dir=credentials_dir,
            live=stderr,
        )
    except OscarError as exc:
        stderr.write(f"supervisor: {type(exc).__name__}: {exc.message}\n".encode())
        stderr.flush()
        if isinstance(exc, ResponseTooLarge) and env.get(response_frame.ENV):
            # Declared, not sent: the manager refuses it by its size alone.
            stdout.write(response_frame.oversize_frame(encoded_size(exc.size)))
            stdout.flush()
        return 1
    try:
        if code == 0:
            if env.get(response_frame.ENV):
                response_frame.write_frame(stdout, response)
            else:
                for chunk in response.chunks():
                    stdout.write(chunk)
            stdout.flush()
    finally:
        response.close()
    return code


# What the bootloaders of the self-contained executable (scripts/build-supervisor: PyInstaller, staticx) add
# to the environment. PyInstaller puts its bundled libraries first in LD_LIBRARY_PATH and keeps the
# original in LD_LIBRARY_PATH_ORIG; left in place, the user's programs would load the supervisor's libssl,
# libstdc++ ... instead of their image's own (glibc-built ones, even on a musl image), and a frozen program
# the script starts would take itself for a part of the supervisor.
_BOOTLOADER_PREFIXES = ("_PYI_", "STATICX_")


def container_environment(env: Mapping[str, str], *, frozen: bool) -> dict[str, str]:
    """The container's environment as it was before the executable's bootloaders changed it."""
    clean = {
        name: value
        for name, value in env.items()
        if not name.startswith(_BOOTLOADER_PREFIXES) and name != "LD_LIBRARY_PATH_ORIG"
    }
    if frozen:
        original = env.get("LD_LIBRARY_PATH_ORIG")
        if original is None:
            clean.pop("LD_LIBRARY_PATH", None)
        else:
            clean["LD_LIBRARY_PATH"] = original
    return clean


def main() -> None:
    env = container_environment(os.environ, frozen=bool(getattr(sys, "frozen", False)))
    if sys.argv[1:] == ["serve"]:  # a warm pod's server (``supervisor.serve``), not one run
        from oscar_manager.supervisor import serve

        server = serve.WarmServer(env=env, live=sys.stderr.buffer)
        asyncio.run(serve.serve(server, port=serve.port_of(env)))
        return
    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    try:
        event = read_event(stdin, env)
    except OscarError as exc:
        sys.stderr.write(f"supervisor: {type(exc).__name__}: {exc.message}\n")
        sys.exit(1)
    sys.exit(asyncio.run(run(event, env=env, stdout=sys.stdout.buffer, stderr=sys.stderr.buffer)))
