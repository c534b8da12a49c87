"""What /system/info and /system/config report."""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from oscar_manager import OSCAR_API_VERSION, __version__
from oscar_manager.domain.cluster import ClusterOffers
from oscar_manager.domain.principal import Principal
from oscar_manager.settings import Settings

# Go's names for the machine types clients may compare against.
_GO_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm"}


def git_commit(settings: Settings) -> str:
    """The commit this manager runs: from OSCAR_GIT_COMMIT (set in images), else the checkout's HEAD."""
    if settings.oscar_git_commit:
        return settings.oscar_git_commit
    source = Path(__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else "unknown"


def info(*, commit: str, execution: dict[str, Any], storage: dict[str, Any]) -> dict[str, Any]:
    machine = platform.machine().lower()
    return {
        "version": f"v{OSCAR_API_VERSION}",
        "git_commit": commit,
        "architecture": _GO_ARCH.get(machine, machine),
        "kubernetes_version": "",
        "manager": {"name": "oscar-manager", "version": __version__},
        "execution": execution,
        "storage": storage,
    }


def storage(settings: Settings, *, events: Mapping[str, int], status: Mapping[str, Any]) -> dict[str, Any]:
    """Where ``minio.default`` lives and how new objects reach the manager, with event counts."""
    return {
        "kind": "minio" if settings.uses_minio else "local",
        "endpoint": settings.minio_endpoint,
        **status,
        "events": {name: int(events.get(name, 0)) for name in ("new", "duplicates", "ignored")},
    }


def config(
    settings: Settings,
    *,
    principal: Principal,
    offers: ClusterOffers,
    s3_endpoint: str = "",
    user_keys: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """``offers``: what the backend's nodes offer (``Backend.offers``); ``s3_endpoint``: the manager's own
    S3 face of the local buckets, as this caller reaches it; ``user_keys``: an OIDC user's own MinIO keys
    (``operations.identities``)."""
    # The admin gets the root keys (MinIO's, as upstream; on the S3 face its own user and password), an
    # OIDC user their own MinIO user's, and none where they have no MinIO user (local storage).
    if s3_endpoint:
        endpoint, access_key, secret_key = s3_endpoint, settings.oscar_username, settings.oscar_password
    else:
        endpoint, access_key = settings.minio_endpoint, settings.minio_access_key
        secret_key = settings.minio_secret_key
    if not principal.is_admin:
        access_key, secret_key = user_keys or ("", "")
    return {
        "config": {
            "name": settings.oscar_name,
            "namespace": settings.oscar_namespace,
            "services_namespace": settings.oscar_services_namespace,
            "controller_service_account": settings.oscar_controller_service_account,
            # Every caller gets them, as upstream gives users its one Config too: the dashboard's Hub warns
            # users of a service that needs a GPU the cluster lacks, and its Info page shows both.
            "gpu_available": offers.gpu,
            "interLink_available": offers.interlink,
            "yunikorn_enable": False,
            "kueue_enable": False,
            "volume_enable": False,
            "oidc_groups": list(settings.oidc_groups),
            "minio_quota_enabled": False,
        },
        "minio_provider": {
            "endpoint": endpoint,
            "verify": settings.minio_tls_verify,
            "access_key": access_key,
            "secret_key": secret_key,
            # oscar-python and the dashboard need a region (an empty one disables the dashboard's buckets).
            "region": settings.minio_region or "us-east-1",
        },
        "allowed_image_repositories": [],
    }
