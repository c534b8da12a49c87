"""One instance of an exposed service: its script in the sandbox, the relay beside it, its output."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from oscar_manager.backends.exposed_relay import PRELUDE, RelayLink, prelude_args, relay_python
from oscar_manager.backends.linelog import LineLog
from oscar_manager.backends.sandbox import Sandbox, ScriptRun, Spawned
from oscar_manager.domain.quantities import quantity_bytes, quantity_cores
from oscar_manager.domain.service import Service, wants_network
from oscar_manager.supervisor.stage import DEFAULT_PATH

SCRIPT_NAME: Final = "script.sh"
# SIGTERM, then this long before SIGKILL, when an instance is stopped (a server's graceful shutdown).
STOP_GRACE_SECONDS: Final = 5.0


def base_path(service: Service) -> str:
    return f"/system/services/{service.name}/exposed"


def instance_env(service: Service, home: str) -> dict[str, str]:
    """The server's environment, as a job's: its variables and secrets, then the OSCAR variables."""
    env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}
    env.update(service.environment.variables)
    env.update(service.environment.secrets)
    env.update(
        {
            "HOME": home,
            "OSCAR_SERVICE_NAME": service.name,
            "OSCAR_SERVICE_TOKEN": service.token,
            "OSCAR_SERVICE_BASE_PATH": base_path(service),
        }
    )
    return env


@dataclass(slots=True)
class InstancePlaces:
    """Where instances live: their home folders, and the relays' sockets (a folder only the manager may
    open, under the system temp dir: a socket path must stay short, and no sandbox sees that dir)."""

    work_root: Path
    sockets: Path
    # The jobs' bounds, which instances get too: processes and threads at once, the size of a file.
    max_pids: int | None = None
    disk_bytes: int | None = None
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @classmethod
    def make(cls, work_root: Path, *, max_pids: int | None, disk_bytes: int | None) -> InstancePlaces:
        work_root.mkdir(parents=True, exist_ok=True)
        sockets = Path(tempfile.mkdtemp(prefix="oscar-exposed-"))
        return cls(work_root=work_root, sockets=sockets, max_pids=max_pids, disk_bytes=disk_bytes)

    def new_socket(self) -> Path:
        return self.sockets / f"{next(self._numbers)}.sock"

    def remove(self) -> None:
        shutil.rmtree(self.sockets, ignore_errors=True)


class Instance:
    """Made by :meth:`start`; ``exited`` resolves when the script (or the whole sandbox) ends."""

    def __init__(self, name: str, *, generation: int, service: Service, link: RelayLink, home: Path) -> None:
        self.name = name
        self.generation = generation  # the deployment's generation it was started for (restarts, updates)
        self.service = service
        self.link = link
        self.home = home
        self.log = LineLog()
        self.started = time.monotonic()
        self.ready = False
        self.was_ready = False
        self.failed_probes = 0
        self.exit_code: int | None = None
        self._spawned: Spawned | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping: asyncio.Future[None] | None = None
        self.kill_reason = ""  # why the manager ended it, if it did
        self.exited: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def running(self) -> bool:
        return not self.exited.done()

    @classmethod
    async def start(
        cls, service: Service, *, name: str, generation: int, sandbox: Sandbox, places: InstancePlaces
    ) -> Instance:
        home = Path(tempfile.mkdtemp(prefix=f"exposed-{name}-", dir=places.work_root))
        link = None
        try:
            owner = sandbox.runs_as
            if owner is not None:
                os.chown(home, *owner)
            (home / SCRIPT_NAME).write_text(service.script)
            link = RelayLink(places.new_socket())
            instance = cls(name, generation=generation, service=service, link=link, home=home)
            await instance._spawn(sandbox, places)
        except BaseException:
            if link is not None:
                link.close()
            shutil.rmtree(home, ignore_errors=True)
            raise
        return instance

    async def _spawn(self, sandbox: Sandbox, places: InstancePlaces) -> None:
        service = self.service
        run = ScriptRun(
            workdir=self.home,
            script=SCRIPT_NAME,
            env=instance_env(service, sandbox.job_path(self.home, self.home)),
            timeout=None,
            memory_bytes=quantity_bytes(service.memory),
            network=wants_network(service),
            cpu_cores=quantity_cores(service.cpu),
            max_pids=places.max_pids,
            disk_bytes=places.disk_bytes,  # each file's size (RLIMIT_FSIZE); the home is not watched
        )
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        reader = os.fdopen(read_fd, "rb", buffering=0)
        try:
            self._spawned = await sandbox.spawn(
                run,
                stdin=self.link.relay_end(),
                output=write_fd,
                prelude=PRELUDE,
                prelude_args=prelude_args(relay_python(), service.expose.api_port[0]),
            )
        except BaseException:
            reader.close()
            raise
        finally:
            os.close(write_fd)
        self.link.handed_over()
        await loop.connect_read_pipe(lambda: self.log, reader)
        self._tasks = [
            asyncio.create_task(self._watch(self._spawned), name=f"exposed-{self.name}"),
            asyncio.create_task(self._follow_relay(), name=f"exposed-{self.name}-relay"),
        ]

    async def _watch(self, spawned: Spawned) -> None:
        code = await spawned.process.wait()
        self.exit_code = 128 - code if code < 0 else code
        # The pipe ends with the last process holding it: a moment for the last lines.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.log.closed), 1.0)
        self.ready = False
        if not self.exited.done():
            self.exited.set_result(None)

    async def _follow_relay(self) -> None:
        with contextlib.suppress(OSError):
            await self.link.follow()

    @property
    def open_connections(self) -> int:
        return self.link.open_connections if self.running else 0

    async def stop(self, sandbox: Sandbox, *, grace: float = STOP_GRACE_SECONDS) -> None:
        """End it (SIGTERM, ``grace``, SIGKILL), and remove its socket and home folder; callers share one
        stop, however many ask."""
        if self._stopping is None:
            self.ready = False
            self._stopping = asyncio.ensure_future(self._stop(sandbox, grace))
        await asyncio.shield(self._stopping)

    async def _stop(self, sandbox: Sandbox, grace: float) -> None:
        try:
            if self._spawned is not None:
                await sandbox.terminate(self._spawned, grace=grace)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self.exited), 2.0)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if not self.exited.done():
                self.exited.set_result(None)
            self.link.close()
            await asyncio.to_thread(shutil.rmtree, self.home, True)
