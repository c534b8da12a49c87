"""The local backend as the settings make it: the sandbox, who scripts run as, where their job folders and
their images' roots live (the Kubernetes backend is built by ``connections``)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import pwd
import sys
import tempfile
from pathlib import Path

from oscar_manager.backends.images.credentials import Credentials
from oscar_manager.backends.images.service_images import ImageMode, ServiceImages
from oscar_manager.backends.images.store import ImageStore
from oscar_manager.backends.local import LocalBackend
from oscar_manager.backends.sandbox import Sandbox
from oscar_manager.settings import Settings
from oscar_manager.storage.providers import Stores

log = logging.getLogger(__name__)


def unprivileged_user() -> tuple[int, int]:
    """Who scripts run as when the manager runs as root: ``nobody``."""
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return 65534, 65534
    return entry.pw_uid, entry.pw_gid


def shared_work_root(settings: Settings) -> Path:
    """Job folders for scripts run as another user: under the system temp dir, which that user can reach
    (the data directory may sit under a private home or temp folder)."""
    digest = hashlib.sha256(str(settings.oscar_data_dir.resolve()).encode()).hexdigest()[:12]
    top = Path(tempfile.gettempdir()) / "oscar-manager"
    root = top / digest
    for folder in (top, root):
        folder.mkdir(exist_ok=True)
        os.chmod(folder, 0o711)  # noqa: S103 - traversable, not listable, by the script user
    return root


def fast_child_watcher() -> None:
    """Python 3.11 waits for each subprocess with a new thread (about 2 ms a job); a pidfd needs none.
    Python 3.12 and later use pidfds by themselves."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.get_event_loop_policy().set_child_watcher(watcher)


def local_backend(settings: Settings, stores: Stores) -> LocalBackend:
    run_as = unprivileged_user() if os.geteuid() == 0 else None
    # The data directory (database, admin password, presign key, every bucket) is invisible to scripts.
    sandbox = Sandbox(
        require=settings.oscar_require_sandbox,
        hidden_paths=[settings.oscar_data_dir],
        run_as=run_as,
        allow_unsandboxed=settings.oscar_allow_unsandboxed,
    )
    if sandbox.refusal is not None:
        log.error("Local jobs will fail: %s", sandbox.refusal)
    images = service_images(settings, sandboxed=sandbox.sandboxed, dropped=sandbox.runs_as is not None)
    return LocalBackend(
        stores=stores,
        sandbox=sandbox,
        work_root=settings.work_dir if sandbox.runs_as is None else shared_work_root(settings),
        concurrency=settings.oscar_local_concurrency,
        job_timeout=settings.oscar_job_timeout,
        max_pids=settings.oscar_job_max_pids,
        disk_bytes=settings.oscar_job_disk_bytes,
        images=images,
    )


def image_dir(settings: Settings, *, dropped: bool) -> Path:
    """The image cache's folder. Scripts run as another user reach their image's root by path (bubblewrap
    binds it as that user): then not under the private data directory but in a folder of its own, one per
    data directory, its parents traversable (not listable) by that user."""
    if settings.oscar_image_dir is not None:
        return settings.oscar_image_dir
    if not dropped:
        return settings.oscar_data_dir / "images"
    digest = hashlib.sha256(str(settings.oscar_data_dir.resolve()).encode()).hexdigest()[:12]
    top = Path("/var/cache/oscar-manager")
    top.mkdir(parents=True, exist_ok=True)
    os.chmod(top, 0o711)  # noqa: S103 - traversable, not listable, by the script user
    return top / digest


def service_images(settings: Settings, *, sandboxed: bool, dropped: bool) -> ServiceImages:
    mode = ImageMode(settings.oscar_local_images)
    if mode is ImageMode.HOST:
        return ServiceImages(None, mode=mode, sandboxed=sandboxed)
    store = ImageStore(
        image_dir(settings, dropped=dropped),
        max_bytes=settings.oscar_image_cache_bytes,
        credentials=Credentials(
            auth_file=settings.oscar_registry_auth_file, secrets_dir=settings.oscar_image_pull_secrets_dir
        ),
        insecure_registries=settings.oscar_insecure_registries,
        timeout=settings.oscar_image_pull_timeout,
    )
    store.open()
    if not sandboxed:
        log.warning("Service images cannot run without bubblewrap: scripts run with this machine's tools")
    return ServiceImages(store, mode=mode, sandboxed=sandboxed)
