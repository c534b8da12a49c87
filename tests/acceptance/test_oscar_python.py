"""oscar-python 2.x from PyPI driving a running manager, exactly as a user's script would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
from oscar_python.client import Client

from tests.support.server import RunningServer

pytestmark = pytest.mark.server

FDL = """\
functions:
  oscar:
  - acceptance:
      name: acc-cowsay
      cpu: 0.5
      memory: 256Mi
      image: ghcr.io/grycap/cowsay
      script: script.sh
      log_level: CRITICAL
      input:
      - storage_provider: minio.default
        path: acc-cowsay/input
      output:
      - storage_provider: minio.default
        path: acc-cowsay/output
"""


def client_for(server: RunningServer) -> Any:
    return Client(
        {
            "cluster_id": "acceptance",
            "endpoint": server.url,
            "user": "oscar",
            "password": server.password(),
            "ssl": False,
        }
    )


def write_fdl(directory: Path, fdl: str = FDL, script: str = '#!/bin/sh\ncat "$INPUT_FILE_PATH"\n') -> Path:
    (directory / "script.sh").write_text(script)
    path = directory / "acc.yaml"
    path.write_text(fdl)
    return path


def test_cluster_info_and_config(server: RunningServer) -> None:
    client = client_for(server)
    assert client.health_check().status_code == 200
    info = client.get_cluster_info().json()
    assert info["version"].startswith("v")
    config = client.get_cluster_config().json()
    assert isinstance(config["config"]["oidc_groups"], list)


def test_service_lifecycle(server: RunningServer, tmp_path: Path) -> None:
    client = client_for(server)
    fdl = write_fdl(tmp_path)

    created = client.create_service(str(fdl))
    assert created.status_code == 201

    service = client.get_service("acc-cowsay").json()
    assert service["cpu"] == "0.5"
    assert service["script"] == '#!/bin/sh\ncat "$INPUT_FILE_PATH"\n'
    assert len(service["token"]) == 64
    assert [s["name"] for s in client.list_services().json()] == ["acc-cowsay"]

    # The client refuses to create what exists (it checks with a GET first).
    with pytest.raises(ValueError, match="already"):
        client.create_service(str(fdl))

    write_fdl(tmp_path, FDL.replace("memory: 256Mi", "memory: 1Gi"), script="#!/bin/sh\necho updated\n")
    updated = client.update_service("acc-cowsay", str(fdl))
    assert updated.status_code == 204
    after = client.get_service("acc-cowsay").json()
    assert after["memory"] == "1Gi"
    assert after["script"] == "#!/bin/sh\necho updated\n"
    assert after["token"] == service["token"]

    # Its storage client reads storage_providers from the service and minio_provider from /system/config/.
    storage = client.create_storage_client("acc-cowsay")
    assert storage is not None

    assert client.remove_service("acc-cowsay").status_code == 204
    for gone in (client.remove_service, client.get_service):
        with pytest.raises(requests.HTTPError) as caught:
            gone("acc-cowsay")
        assert caught.value.response.status_code == 404
        # The body is the message as text, as upstream answers (requests sends ``Accept: */*``).
        assert caught.value.response.headers["content-type"] == "text/plain; charset=utf-8"
        assert caught.value.response.text == "service 'acc-cowsay' not found"


def test_wrong_password_is_an_http_error(server: RunningServer) -> None:
    client = Client(
        {"cluster_id": "x", "endpoint": server.url, "user": "oscar", "password": "wrong", "ssl": False}
    )
    with pytest.raises(requests.HTTPError):
        client.list_services().raise_for_status()
