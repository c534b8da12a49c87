from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.components import unavailable
from tests.support.oci_registry import Registry, busybox_layer
from tests.support.supervisor import static_busybox

CREDENTIALS = ("puller", "s3cret-pass")


def _start(folder: Path, **kwargs: object) -> Registry:
    try:
        return Registry.start(folder, **kwargs)  # type: ignore[arg-type]
    except RuntimeError as exc:
        unavailable(str(exc))


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """An anonymous registry on loopback, shared by the session (each test pushes its own repository)."""
    server = _start(tmp_path_factory.mktemp("registry"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def private_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    server = _start(tmp_path_factory.mktemp("private-registry"), auth=CREDENTIALS)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def busybox_base() -> bytes:
    try:
        return busybox_layer(static_busybox())
    except RuntimeError as exc:
        unavailable(str(exc))


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder the scripts' user can traverse (pytest's own temp folders are closed to others)."""
    folder = Path(tempfile.mkdtemp(prefix="oscar-images-test-"))
    os.chmod(folder, 0o711)  # noqa: S103 - traversable by the script user, as the manager's own
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
