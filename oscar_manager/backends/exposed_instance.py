"""One instance of an exposed service: its script in the sandbox (in the service's image when images are
run), the relay beside it, its output."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from oscar_manager.backends.exposed import ExposedUnavailable
from oscar_manager.backends.exposed_relay import RelayLink
from oscar_manager.backends.images.service_images import Chosen, ServiceImages
from oscar_manager.backends.linelog import LineLog
from oscar_manager.backends.sandbox import Sandbox, ScriptRun, Spawned
from oscar_manager.domain.quantities import quantity_bytes, quantity_cores
from oscar_manager.domain.service import Service, wants_network
from oscar_manager.supervisor.deadline import Deadline
from oscar_manager.supervisor.stage import DEFAULT_PATH

SCRIPT_NAME: Final = "script.sh"
# SIGTERM, then this long before SIGKILL, when an instance is stopped (a server's graceful shutdown).
STOP_GRACE_SECONDS: Final = 5.0
# The relay's first report (a Python start and two setns calls: tens of milliseconds) is awaited this long.
RELAY_START_SECONDS: Final = 10.0


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


def image_command_script(service: Service, chosen: Chosen) -> str:
    """The script of an instance with ``expose.default_command``: the image's Entrypoint and Cmd, exec'd
    by /bin/sh with the image's PATH (as a container runtime runs them)."""
    if chosen.root is None:
        raise ExposedUnavailable(
            f"expose.default_command runs the image's own command, and the image {service.image} is not"
            " used here (see the log): start the server from the service's script instead"
        )
    if not chosen.command:
        raise ExposedUnavailable(
            f"expose.default_command: the image {service.image} has no Entrypoint or Cmd"
        )
    return f"exec {shlex.join(chosen.command)}\n"


@dataclass(slots=True)
class InstancePlaces:
    """Where instances live: their home folders, the relays' sockets (a folder only the manager may open,
    under the system temp dir: a socket path must stay short, and no sandbox sees that dir), and the images
    they run in."""

    work_root: Path
    sockets: Path
    images: ServiceImages
    # The jobs' bounds, which instances get too: processes and threads at once, the size of a file.
    max_pids: int | None = None
    disk_bytes: int | None = None
    # An image pull an instance waits for is bounded by its start-up time (the pull itself goes on).
    pull_seconds: float | None = None
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @classmethod
    def make(
        cls,
        work_root: Path,
        *,
        images: ServiceImages,
        max_pids: int | None,
        disk_bytes: int | None,
        pull_seconds: float | None,
    ) -> InstancePlaces:
        work_root.mkdir(parents=True, exist_ok=True)
        sockets = Path(tempfile.mkdtemp(prefix="oscar-exposed-"))
        return cls(
            work_root=work_root,
            sockets=sockets,
            images=images,
            max_pids=max_pids,
            disk_bytes=disk_bytes,
            pull_seconds=pull_seconds,
        )

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
        self._output: asyncio.ReadTransport | None = None  # the instance's stdout and stderr
        self._image = contextlib.AsyncExitStack()  # holds the image from eviction while the instance runs
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
            link = RelayLink(places.new_socket())
            instance = cls(name, generation=generation, service=service, link=link, home=home)
            try:
                await instance._spawn(sandbox, places)
            except BaseException:
                await instance._image.aclose()
                raise
        except BaseException:
            if link is not None:
                await link.stop()
            shutil.rmtree(home, ignore_errors=True)
            raise
        return instance

    async def _spawn(self, sandbox: Sandbox, places: InstancePlaces) -> None:
        service = self.service
        chosen = await self._image.enter_async_context(
            places.images.chosen(service, log=self.log, deadline=Deadline(places.pull_seconds))
        )
        script = image_command_script(service, chosen) if service.expose.default_command else service.script
        (self.home / SCRIPT_NAME).write_text(script)
        if sandbox.runs_as is not None:
            # The manager's private umask leaves the file its own: the server's user must read it.
            os.chown(self.home / SCRIPT_NAME, *sandbox.runs_as)
        env = instance_env(service, sandbox.job_path(self.home, self.home))
        run = ScriptRun(
            workdir=self.home,
            script=SCRIPT_NAME,
            env=chosen.environment(env, service),
            timeout=None,
            memory_bytes=quantity_bytes(service.memory),
            network=wants_network(service),
            cpu_cores=quantity_cores(service.cpu),
            max_pids=places.max_pids,
            disk_bytes=places.disk_bytes,  # each file's size (RLIMIT_FSIZE); the home is not watched
            image=chosen.root,
        )
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        reader = os.fdopen(read_fd, "rb", buffering=0)
        try:
            spawned = await sandbox.spawn(
                run, stdin=asyncio.subprocess.PIPE, output=write_fd, inside_pid=True, gated=True
            )
        except BaseException:
            reader.close()
            raise
        finally:
            os.close(write_fd)
        self._spawned = spawned
        self._output, _ = await loop.connect_read_pipe(lambda: self.log, reader)
        self._tasks = [
            asyncio.create_task(self._watch(spawned), name=f"exposed-{self.name}"),
            asyncio.create_task(self._follow_relay(), name=f"exposed-{self.name}-relay"),
        ]
        try:
            await self._start_relay(sandbox, spawned)
        except BaseException:
            await sandbox.terminate(spawned, grace=0)
            await self._end_tasks()
            self._output.close()
            raise
        self._tasks.append(asyncio.create_task(self._watch_relay(spawned), name=f"exposed-{self.name}-end"))
        # The relay is in the sandbox's network: the script may start (its sandbox waited on this line).
        assert spawned.process.stdin is not None
        with contextlib.suppress(ConnectionError):  # the sandbox ended meanwhile: _watch says so
            spawned.process.stdin.write(b"start\n")
            await spawned.process.stdin.drain()
        spawned.process.stdin.close()

    async def _start_relay(self, sandbox: Sandbox, spawned: Spawned) -> None:
        """The relay, up (its first report) in the sandbox's network namespace, or why not."""
        if sandbox.sandboxed and spawned.inside_pid is None:
            raise ExposedUnavailable("its sandbox ended before its network could be reached")
        await self.link.start(sandbox, port=self.service.expose.api_port[0], inside_pid=spawned.inside_pid)
        up = asyncio.ensure_future(self.link.up.wait())
        ended = asyncio.ensure_future(self.link.ended())
        await asyncio.wait({up, ended}, timeout=RELAY_START_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        up.cancel()
        if self.link.up.is_set():
            ended.cancel()
            return
        self.link.close()  # the relay too, if it hangs
        said = await ended
        raise ExposedUnavailable(
            f"its relay did not start: {said or f'no word in {RELAY_START_SECONDS:g} s'}"
        )

    async def _end_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

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

    async def _watch_relay(self, spawned: Spawned) -> None:
        """A relay that ends while its instance runs (it could not enter the sandbox's network, or died)
        leaves the instance unreachable: the instance ends too, saying why, and is started again."""
        said = await self.link.ended()
        if self.running and self._stopping is None:
            self.kill_reason = f"lost its relay ({said or 'it ended'})"
            with contextlib.suppress(ProcessLookupError):
                spawned.process.kill()  # bubblewrap's death ends the sandbox (--die-with-parent)

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
            await self._end_tasks()
            if not self.exited.done():
                self.exited.set_result(None)
            await self.link.stop()
            if self._output is not None:
                self._output.close()  # what a process that left the sandbox's group still writes
            await self._image.aclose()
            await asyncio.to_thread(shutil.rmtree, self.home, True)
