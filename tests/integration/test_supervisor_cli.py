"""``oscar-supervisor`` as a program (sync bodies) and in-process against S3 (storage events).

The program cases run twice: the Python entry point on this machine, and the self-contained executable
(``scripts/build-supervisor``) in a root holding nothing but a static busybox, as a Job runs it in a
minimal user image (``tests/integration/test_supervisor_executable.py`` has the cases only it can run).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
import yaml

from oscar_manager.storage.s3 import S3ObjectStore
from oscar_manager.supervisor.cli import supervise
from tests.support.supervisor import (
    UPPER,
    BusyboxRoot,
    Runner,
    b64,
    chunks,
    config,
    run_python,
    s3_definition,
    storage_event,
)


@pytest.fixture(params=["python", "executable-in-busybox"])
def run_cli(request: pytest.FixtureRequest) -> Runner:
    if request.param == "python":
        return run_python
    root: BusyboxRoot = request.getfixturevalue("busybox_root")
    return root.run


def test_sync_body_gives_the_output_file_base64(run_cli: Runner) -> None:
    done = run_cli(b64("hello").encode(), {"FUNCTION_CONFIG": config(), "SCRIPT": b64(UPPER)})
    assert done.returncode == 0, done.stderr
    assert base64.b64decode(done.stdout) == b"HELLO"
    assert b"done" in done.stderr  # the script's own output goes to the log


def test_event_from_environment_when_stdin_is_empty(run_cli: Runner) -> None:
    env = {"FUNCTION_CONFIG": config(), "SCRIPT": b64('cat "$INPUT_FILE_PATH"'), "EVENT": b64("from env")}
    done = run_cli(b"", env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"from env"


def test_event_base64_encoded_in_the_environment_reaches_the_script_as_its_text(run_cli: Runner) -> None:
    """As the manager sends it to a Job offloaded through interLink (``supervisor.event_env``)."""
    body = '{"note": "it\'s \\"quoted\\" in $HOME",\n "n": 1}'
    script = 'printf "%s|" "$EVENT" "${OSCAR_EVENT_ENCODING:-unset}"; cat "$INPUT_FILE_PATH"'
    env = {
        "FUNCTION_CONFIG": config(),
        "SCRIPT": b64(script),
        "EVENT": b64(body),
        "OSCAR_EVENT_ENCODING": "base64",
    }
    done = run_cli(b"", env)
    assert done.returncode == 0, done.stderr
    event, encoding, input_file = done.stdout.decode().split("|")
    assert (event, encoding) == (body, "unset")
    assert yaml.safe_load(input_file) == {"note": 'it\'s "quoted" in $HOME', "n": 1}


def test_failing_script_exit_code_is_the_programs(run_cli: Runner) -> None:
    done = run_cli(b64("x").encode(), {"FUNCTION_CONFIG": config(), "SCRIPT": b64("echo oops; exit 7")})
    assert done.returncode == 7
    assert done.stdout == b""
    assert b"oops" in done.stderr
    assert b"exited with code 7" in done.stderr


def test_missing_configuration_is_reported(run_cli: Runner) -> None:
    done = run_cli(b64("x").encode(), {"SCRIPT": b64("true")})
    assert done.returncode == 1
    assert b"no service definition" in done.stderr


def test_container_environment_reaches_the_script(run_cli: Runner) -> None:
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
        info = await store.put_stream("cli-bucket", "in/my file+é.txt", chunks(b"object content"))
        definition = tmp_path / "function_config.yaml"
        definition.write_text(yaml.safe_dump(s3_definition(moto_endpoint, "cli-bucket")))
        code, response, log = await supervise(
            storage_event(info),
            env={"SCRIPT": b64(UPPER), "PATH": os.environ["PATH"]},
            config_file=definition,
            credentials_dir=tmp_path / "providers",
        )
        assert code == 0, log
        assert response.read() == b"done\n"  # a storage event answers with the script's output
        uploaded = await store.stat("cli-bucket", "out/my file+é.txt")
        assert uploaded is not None
        target = tmp_path / "result"
        await store.get_file("cli-bucket", "out/my file+é.txt", target)
        assert target.read_bytes() == b"OBJECT CONTENT"
