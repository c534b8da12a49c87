"""The self-contained supervisor executable in a root file system holding nothing but a static busybox.

What a Job does in the smallest user image: ``/oscar/bin/supervisor`` with the service's files under
``/oscar/config``, the MinIO credentials mounted as files and the event in ``EVENT``. The same sync cases as
the Python entry point run there too (``test_supervisor_cli.py``); here are the ones that need the root:
the root itself, the pod's file layout and log, S3 through a name in ``/etc/hosts``, the script's
environment.
"""

from __future__ import annotations

import base64
import io
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from oscar_manager.storage.s3 import S3ObjectStore
from oscar_manager.supervisor import response_frame
from tests.support.supervisor import (
    ACCESS_KEY_FILE,
    CONFIG_FILE,
    SCRIPT_FILE,
    SECRET_KEY_FILE,
    UPPER,
    BusyboxRoot,
    b64,
    chunks,
    definition,
    elf_interpreter,
    is_elf,
    s3_definition,
    storage_event,
)

# Names that would mean an interpreter or a C library is in the root after all.
FORBIDDEN_NAMES = ("python", "libc.", "libc-", "ld-linux", "ld-musl", "libpython")


def _install_service(root: BusyboxRoot, script: str, **fields: object) -> None:
    root.write(CONFIG_FILE, yaml.safe_dump(definition(**fields)))
    root.write(SCRIPT_FILE, script)


def test_the_root_holds_no_python_and_no_c_library(busybox_root: BusyboxRoot) -> None:
    entries = list(busybox_root.path.rglob("*"))
    names = {entry.name for entry in entries}
    assert {"supervisor", "busybox", "sh"} <= names
    assert not [entry for entry in entries if entry.name.startswith(FORBIDDEN_NAMES)]
    assert not {"usr", "lib", "lib64", "lib32"} & {entry.name for entry in busybox_root.path.iterdir()}
    programs = [entry for entry in entries if entry.is_file() and not entry.is_symlink() and is_elf(entry)]
    assert sorted(entry.name for entry in programs) == ["busybox", "supervisor"]
    # No program asks for a dynamic loader: there is none in the root to give them.
    assert {entry.name: elf_interpreter(entry) for entry in programs} == {"busybox": None, "supervisor": None}
    # And the sandbox shows nothing else: the host's /usr, /lib and Python are not there.
    inside = busybox_root.execute(
        ["/bin/sh", "-c", "ls /; test ! -e /usr && test ! -e /lib && ! which python3"]
    )
    assert inside.returncode == 0, inside.stderr
    assert sorted(inside.stdout.decode().split()) == ["bin", "dev", "etc", "oscar", "proc", "tmp"]


def test_a_dynamically_linked_program_cannot_start_in_the_root(busybox_root: BusyboxRoot) -> None:
    """The control: what the executable is built to avoid does fail here (no loader, no libc)."""
    host_python = Path(sys.executable).resolve()
    assert elf_interpreter(host_python) is not None
    busybox_root.write("/bin/dynamic", host_python.read_bytes(), mode=0o755)
    done = busybox_root.execute(["/bin/dynamic", "-c", "print('started')"])
    assert done.returncode != 0
    assert b"started" not in done.stdout


def _zip_members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        # One output file: its content, base64-encoded.
        (UPPER, lambda out: base64.b64decode(out) == b"HELLO"),
        # Several: a base64 zip of them.
        (
            'tr a-z A-Z < "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/a.txt"\n'
            'mkdir "$TMP_OUTPUT_DIR/sub"; rev < "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/sub/b.txt"\n',
            lambda out: _zip_members(base64.b64decode(out)) == {"a.txt": b"HELLO", "sub/b.txt": b"olleh"},
        ),
        # None: what the script printed.
        ('tr a-z A-Z < "$INPUT_FILE_PATH"; echo', lambda out: out == b"HELLO\n"),
    ],
    ids=["one-file", "several-files", "no-file"],
)
def test_sync_invocation_in_the_pod_layout(
    busybox_root: BusyboxRoot, script: str, expected: Callable[[bytes], bool]
) -> None:
    _install_service(busybox_root, script)
    # As in the Job: no standard input, the event in EVENT, the service from the mounted files.
    done = busybox_root.run(b"", {"EVENT": b64("hello"), "JOB_UUID": "svc-1"})
    assert done.returncode == 0, done.stderr
    assert expected(done.stdout), done.stdout
    assert b"Running the user script" in done.stderr


def test_sync_job_response_read_back_from_the_merged_pod_log(busybox_root: BusyboxRoot) -> None:
    """A sync Job: the manager has only the pod log (both streams, interleaved) to find the response in."""
    _install_service(busybox_root, 'echo "working on it"\n' + UPPER)
    done = busybox_root.run(b"", {"EVENT": b64("hello"), response_frame.ENV: "1"}, merge_output=True)
    assert done.returncode == 0, done.stdout
    log, response = response_frame.unframe(done.stdout.decode())
    assert response is not None, log
    assert base64.b64decode(response) == b"HELLO"
    assert "working on it" in log


def test_failing_script_in_the_pod_layout(busybox_root: BusyboxRoot) -> None:
    _install_service(busybox_root, 'echo "cannot process $INPUT_FILE_PATH" >&2; exit 3\n')
    done = busybox_root.run(b"", {"EVENT": b64("hello")})
    assert done.returncode == 3
    assert done.stdout == b""
    assert b"cannot process /tmp/" in done.stderr
    assert b"exited with code 3" in done.stderr


@pytest.mark.asyncio
async def test_storage_event_through_s3_with_mounted_credentials(
    busybox_root: BusyboxRoot, s3_store: S3ObjectStore, moto_endpoint: str
) -> None:
    bucket = "exe-bucket"
    await s3_store.ensure_folder(bucket, "in")
    info = await s3_store.put_stream(bucket, "in/my file+é.txt", chunks(b"object content"))
    # The endpoint by a Service's name, resolved by the bundled C library from /etc/hosts (the cluster's DNS
    # in a real pod). moto takes this name for path-style addressing, as MinIO does any name.
    host = "minio.minio.svc.cluster.local"
    port = moto_endpoint.rsplit(":", 1)[1]
    busybox_root.write("/etc/hosts", f"127.0.0.1 localhost\n127.0.0.1 {host}\n")
    # Only the endpoint in the definition: the keys come from the mounted secret, as in a Job.
    busybox_root.write(CONFIG_FILE, yaml.safe_dump(s3_definition(f"http://{host}:{port}", bucket)))
    busybox_root.write(SCRIPT_FILE, UPPER)
    busybox_root.write(ACCESS_KEY_FILE, "testing\n")
    busybox_root.write(SECRET_KEY_FILE, "testing\n")

    done = busybox_root.run(b"", {"EVENT": storage_event(info).decode()})

    assert done.returncode == 0, done.stderr
    assert done.stdout == b"done\n"  # a storage event answers with the script's output
    assert f"Downloading '{bucket}/in/my file+é.txt'".encode() in done.stderr
    result = busybox_root.path.parent / "result"
    await s3_store.get_file(bucket, "out/my file+é.txt", result)
    assert result.read_bytes() == b"OBJECT CONTENT"


@pytest.mark.parametrize("container_library_path", [None, "/opt/lib"])
def test_the_script_gets_the_containers_environment_not_the_bootloaders(
    busybox_root: BusyboxRoot, container_library_path: str | None
) -> None:
    _install_service(busybox_root, "env\n")
    env = {"EVENT": b64("x"), "MODEL_DIR": "/models"}
    if container_library_path is not None:
        env["LD_LIBRARY_PATH"] = container_library_path
    done = busybox_root.run(b"", env)
    assert done.returncode == 0, done.stderr
    seen = dict(line.split("=", 1) for line in done.stdout.decode().splitlines() if "=" in line)
    assert seen["MODEL_DIR"] == "/models"
    # The bundled libraries must not reach the user's programs (they would shadow the image's own).
    assert seen.get("LD_LIBRARY_PATH") == container_library_path
    assert not [name for name in seen if name.startswith(("_PYI_", "STATICX_", "LD_LIBRARY_PATH_"))]
