"""Plain functions that build test inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from oscar_manager.domain.service import MinioDefault, Service, normalise_new, parse_service
from oscar_manager.settings import Settings

ADMIN_PASSWORD = "test-admin-password"


def make_settings(*, database_url: str, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "oscar_database_url": database_url,
        "oscar_data_dir": data_dir,
        "oscar_password": ADMIN_PASSWORD,
        "oscar_git_commit": "0123456789ab",
        # In-process apps bind no S3 face port unless a test asks for one.
        "oscar_s3_port": 0,
        # Scripts run with this machine's tools unless a test runs images (from its loopback registry):
        # no test reaches out to a public registry.
        "oscar_local_images": "host",
    }
    values.update(overrides)
    return Settings(**values)


def service_body(name: str = "cowsay", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "image": "ghcr.io/grycap/cowsay",
        "script": '#!/bin/sh\ncat "$INPUT_FILE_PATH" | /usr/games/cowsay\n',
    }
    body.update(fields)
    return body


# The upstream cowsay example as an FDL document, the way oscar-cli users keep it (note the Go-style
# ``Variables`` key, matched case-insensitively).
COWSAY_FDL = """\
functions:
  oscar:
  - oscar-cluster:
      name: cowsay
      cpu: '1.0'
      memory: 1Gi
      image: ghcr.io/grycap/cowsay
      log_level: CRITICAL
      script: |
        #!/bin/sh
        if [ "$INPUT_TYPE" = "json" ]
        then
            jq '.message' "$INPUT_FILE_PATH" -r | /usr/games/cowsay
        else
            cat "$INPUT_FILE_PATH" | /usr/games/cowsay
        fi
      environment:
        Variables:
          INPUT_TYPE: json
"""


def stored_service(name: str = "grayify", *, namespace: str = "oscar-svc", **fields: Any) -> Service:
    """A service as the manager stores it after a create (normalised, admin-owned, MinIO at minio:9000)."""
    body = {
        "name": name,
        "image": "alpine",
        "script": "echo hi\n",
        "input": [{"path": f"{name}/in"}],
        **fields,
    }
    minio = MinioDefault(endpoint="http://minio:9000", region="us-east-1", verify=True)
    return normalise_new(parse_service(body), owner="cluster_admin", namespace=namespace, minio=minio)
