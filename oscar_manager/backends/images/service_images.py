"""Which root a service's script runs in on the local executor: its image, or this machine's tools.

``OSCAR_LOCAL_IMAGES``: ``pull`` always runs the image (a job fails when it cannot be had); ``host`` never
pulls (the old behaviour, scripts see this machine's tools); ``auto`` (the default) runs the image when its
registry answers and falls back to this machine's tools, said in the job's log, when nothing answers at
the registry's address (an offline laptop, a machine that reaches no public registry). A registry that
answers with an error (no such image, 401) fails the job in ``auto`` too: that answer is about the image.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from oscar_manager.backends.images.errors import ImageRefused, RegistryUnreachable
from oscar_manager.backends.images.store import Image, ImageStore, Obtained
from oscar_manager.backends.images.users import resolve_user
from oscar_manager.backends.script import ImageRoot
from oscar_manager.domain.service import Service
from oscar_manager.errors import OscarError
from oscar_manager.supervisor.deadline import Deadline

log = logging.getLogger(__name__)

# What the manager's default script environment sets that an image's Env takes over, unless the service
# sets it itself (as a container runtime gives the image's PATH unless the pod's env overrides it).
IMAGE_DEFAULTS: Final = ("PATH", "LANG")


class ImageMode(enum.StrEnum):
    PULL = "pull"
    HOST = "host"
    AUTO = "auto"


class PullLog(Protocol):
    """Where a run says what became of its image (a job's log, an exposed service's)."""

    def info(self, message: str) -> None: ...

    def warning(self, message: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Chosen:
    root: ImageRoot | None  # None: this machine's tools
    env: Mapping[str, str]  # the image's Env (empty for host tools)
    command: tuple[str, ...] = ()  # the image's Entrypoint then Cmd (empty for host tools)

    def environment(self, script_env: Mapping[str, str], service: Service) -> dict[str, str]:
        """The script's environment in this root: the image's Env under it (``merged_env``), or as it is
        with this machine's tools."""
        return dict(script_env) if self.root is None else merged_env(self.env, script_env, service)


HOST_TOOLS: Final = Chosen(None, {})


class ServiceImages:
    def __init__(self, store: ImageStore | None, *, mode: ImageMode, sandboxed: bool) -> None:
        self._store = store if mode is not ImageMode.HOST else None
        self._mode = mode
        self._sandboxed = sandboxed

    @property
    def store(self) -> ImageStore | None:
        return self._store

    @property
    def runs_images(self) -> bool:
        """Do scripts run in their images here (when their registry answers)?"""
        return self._store is not None and self._sandboxed

    async def obtain(self, service: Service, *, log: PullLog, deadline: Deadline) -> Obtained | None:
        """``service``'s image, pulled now if it is not cached (said in ``log``); None: this machine's
        tools are used instead (said in ``log`` too)."""
        if self._store is None:
            return None
        if not self._sandboxed:
            if self._mode is ImageMode.PULL:
                raise ImageRefused("service images run only under bubblewrap, which does not work here")
            log.warning(
                f"Image {service.image} not used: no bubblewrap here, the script runs with this machine's"
                " tools"
            )
            return None
        try:
            obtained = await deadline.run(
                f"pulling image {service.image}",
                self._store.obtain(service.image, pull_secrets=service.image_pull_secrets),
            )
        except RegistryUnreachable as exc:
            if self._mode is ImageMode.PULL:
                raise
            log.warning(f"{exc.message}: the script runs with this machine's tools (OSCAR_LOCAL_IMAGES=auto)")
            return None
        image = obtained.image
        if obtained.stale is not None:
            log.warning(
                f"{obtained.stale}: running the image {image.reference} named before ({image.digest})"
            )
        if obtained.pulled_seconds is not None:
            log.info(
                f"Pulled image {image.reference} ({image.digest}, {image.size} bytes) in"
                f" {obtained.pulled_seconds:.2f} s"
            )
        return obtained

    @contextlib.asynccontextmanager
    async def chosen(self, service: Service, *, log: PullLog, deadline: Deadline) -> AsyncIterator[Chosen]:
        """The root for one run of ``service`` (kept from eviction until the run ends)."""
        obtained = await self.obtain(service, log=log, deadline=deadline)
        if obtained is None or self._store is None:
            yield HOST_TOOLS
            return
        image = obtained.image
        uid, gid = await asyncio.to_thread(resolve_user, image.root, image.config.user, image=image.reference)
        root = ImageRoot(root=image.root, working_dir=image.config.working_dir, uid=uid, gid=gid)
        with self._store.in_use(image):
            yield Chosen(root, dict(image.config.env), image.config.command)

    def refresh(self, service: Service) -> None:
        """The service was created or updated: its image is resolved again at its next job."""
        if self._store is not None:
            self._store.refresh(service.image)

    async def prepull(self, services: Iterable[Service]) -> int:
        """Pull the images of ``services`` (one at a time, jobs meanwhile join the pull of their own);
        returns how many could not be had, each logged."""
        if self._store is None or not self._sandboxed:
            return 0
        failed = 0
        for image, secrets in {(s.image, tuple(s.image_pull_secrets)) for s in services}:
            try:
                obtained = await self._store.obtain(image, pull_secrets=secrets)
            except OscarError as exc:
                failed += 1
                log.warning("pre-pulling image %s: %s", image, exc.message)
                continue
            if obtained.pulled_seconds is not None:
                log.info("pre-pulled image %s in %.2f s", image, obtained.pulled_seconds)
        return failed

    def describe(self) -> dict[str, Any]:
        if self._store is None:
            return {
                "mode": "host",
                "note": "service images are not pulled: scripts run with this machine's tools",
            }
        return {
            "mode": self._mode.value,
            "note": (
                "scripts run inside their service's image"
                if self._mode is ImageMode.PULL
                else "scripts run inside their service's image; with this machine's tools when its registry"
                " cannot be reached"
            )
            if self._sandboxed
            else "no bubblewrap: images cannot run here",
            "cache_bytes": self._store.used_bytes(),
            "cache_max_bytes": self._store.max_bytes,
            "cached": self._store.cached(),
        }


def merged_env(
    image_env: Mapping[str, str], script_env: Mapping[str, str], service: Service
) -> dict[str, str]:
    """The image's Env under the script's; the manager's defaults yield to the image's own values."""
    env = {**image_env, **script_env}
    for key in IMAGE_DEFAULTS:
        if key in image_env and key not in service.environment.variables:
            env[key] = image_env[key]
    return env


__all__ = ["Image", "ImageMode", "ServiceImages", "merged_env"]
