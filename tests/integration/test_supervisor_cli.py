"""``oscar-supervisor`` as a program (sync bodies) and in-process against S3 (storage events)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from oscar_manager.domain.events import ObjectEvent, notification
from oscar_manager.storage.s3 import S3ObjectStore
from oscar_manager.supervisor.cli import supervise

UPPER = 'tr a-z A-Z < "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/$(basename "$INPUT_FILE_PATH")"\necho done\n'


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def run_cli(event: bytes, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    base = {k: v for k, v in os.environ.items() if k not in ("EVENT", "FUNCTION_CONFIG", "SCRIPT")}
    return subprocess.run(
        [sys.executable, "-m", "oscar_manager.supervisor"],
        input=event,
        env={**base, **env},
        capture_output=True,
        timeout=60,
        check=False,
    )


def config(**fields: Any) -> str:
    return b64(yaml.safe_dump({"name": "svc", "image": "img", "script": "", "log_level": "INFO", **fields}))


def test_sync_body_gives_the_output_file_base64() -> None:
    done = run_cli(b64("hello").encode(), {"FUNCTION_CONFIG": config(), "SCRIPT": b64(UPPER)})
    assert done.returncode == 0, done.stderr
    assert base64.b64decode(done.stdout) == b"HELLO"
    assert b"done" in done.stderr  # the script's own output goes to the log


def test_event_from_environment_when_stdin_is_empty() -> None:
    env = {"FUNCTION_CONFIG": config(), "SCRIPT": b64('cat "$INPUT_FILE_PATH"'), "EVENT": b64("from env")}
    done = run_cli(b"", env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"from env"


def test_failing_script_exit_code_is_the_programs() -> None:
    done = run_cli(b64("x").encode(), {"FUNCTION_CONFIG": config(), "SCRIPT": b64("echo oops; exit 7")})
    assert done.returncode == 7
    assert done.stdout == b""
    assert b"oops" in done.stderr
    assert b"exited with code 7" in done.stderr


def test_missing_configuration_is_reported() -> None:
    done = run_cli(b64("x").encode(), {"SCRIPT": b64("true")})
    assert done.returncode == 1
    assert b"no service definition" in done.stderr


def test_container_environment_reaches_the_script() -> None:
    env = {"FUNCTION_CONFIG": config(), "SCRIPT": b64('echo "$MODEL_DIR $JOB_UUID"'), "MODEL_DIR": "/models"}
    done = run_cli(b64("x").encode(), {**env, "JOB_UUID": "svc-123"})
    assert done.stdout == b"/models svc-123\n"


@pytest.mark.asyncio
async def test_storage_event_downloads_and_uploads_through_s3(moto_endpoint: str, tmp_path: Path) -> None:
    credentials = tmp_path / "providers" / "minio.default"
    credentials.mkdir(parents=True)
    (credentials / "accessKey").write_text("testing")
    (credentials / "secretKey").write_text("testing")
    async with S3ObjectStore.connect(
        endpoint=moto_endpoint, access_key="testing", secret_key="testing", region="us-east-1", verify=False
    ) as store:
        await store.ensure_folder("cli-bucket", "in")
        info = await store.put_stream("cli-bucket", "in/my file+é.txt", _chunks(b"object content"))
        providers = {
            "minio": {"default": {"endpoint": moto_endpoint, "region": "us-east-1", "verify": False}}
        }
        definition = tmp_path / "function_config.yaml"
        definition.write_text(
            yaml.safe_dump(
                {
                    "name": "svc",
                    "image": "img",
                    "input": [{"storage_provider": "minio.default", "path": "cli-bucket/in"}],
                    "output": [{"storage_provider": "minio.default", "path": "cli-bucket/out"}],
                    "storage_providers": providers,
                }
            )
        )
        event = notification(
            ObjectEvent(bucket="cli-bucket", key=info.key, etag=info.etag, size=info.size, event_time="t")
        )
        code, response, log = await supervise(
            json.dumps(event).encode(),
            env={"SCRIPT": b64(UPPER), "PATH": os.environ["PATH"]},
            config_file=definition,
            credentials_dir=tmp_path / "providers",
        )
        assert code == 0, log
        assert response == b"done\n"  # a storage event answers with the script's output
        uploaded = await store.stat("cli-bucket", "out/my file+é.txt")
        assert uploaded is not None
        target = tmp_path / "result"
        await store.get_file("cli-bucket", "out/my file+é.txt", target)
        assert target.read_bytes() == b"OBJECT CONTENT"


async def _chunks(data: bytes) -> Any:
    yield data
