"""One exposed service on this machine: its instances kept up, probed, restarted and scaled by one task.

Each round (every ``probe_interval``, or at once when an instance exits or an operation asks) the
controller reaps instances that ended (a crash before the first healthy probe counts towards ``failed``
and delays the next start by an exponential backoff), probes the others through their relays, decides
the number of instances from the load (``exposed_policy``), then starts or stops instances to match.
An update or :meth:`restart` bumps the generation: instances of the old one are replaced one at a time,
each stopped only once a new one is healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from datetime import UTC, datetime
from typing import Final

from oscar_manager.backends.exposed import (
    DeploymentState,
    DeploymentStateName,
    Endpoint,
    ExposedUnavailable,
)
from oscar_manager.backends.exposed_instance import Instance, InstancePlaces, base_path
from oscar_manager.backends.exposed_policy import ExposeTimings, Scaler, backoff, scale_bounds
from oscar_manager.backends.exposed_relay import probe
from oscar_manager.backends.linelog import LineLog
from oscar_manager.backends.sandbox import Sandbox
from oscar_manager.domain.service import Service, wants_network
from oscar_manager.errors import OscarError
from oscar_manager.supervisor.deadline import Deadline

log = logging.getLogger(__name__)

PAST_LOGS: Final = 4  # the logs of this many instances that are gone stay readable


class Deployment:
    def __init__(
        self, service: Service, *, sandbox: Sandbox, places: InstancePlaces, timings: ExposeTimings
    ) -> None:
        self.service = service
        self.stopped = False
        self.instances: list[Instance] = []
        self._sandbox = sandbox
        self._places = places
        self._timings = timings
        self._generation = 1
        self._names = itertools.count(1)
        self._target = self.bounds()[0]
        self._scaler = Scaler(timings)
        self._crashes = 0  # in a row, none healthy in between
        self._failure = ""  # the last failure, said for people
        self._next_start = 0.0
        self._past_logs: deque[list[tuple[str, str]]] = deque(maxlen=PAST_LOGS)
        self._notes = LineLog(max_lines=100)  # what the manager said of the service, not of one instance
        self._wake = asyncio.Event()
        # Held by a control round, and by stop and close: no round starts an instance while they run.
        self._lock = asyncio.Lock()
        self._readiness = asyncio.Condition()
        self._picks = itertools.count()
        self._state: DeploymentStateName | None = None
        self._transition: datetime | None = None
        self._task = asyncio.create_task(self._control(), name=f"exposed-{service.name}")

    # --- what the exposer asks ---------------------------------------------------------------------

    def bounds(self) -> tuple[int, int]:
        isolated = self._sandbox.sandboxed and not wants_network(self.service)
        return scale_bounds(self.service, isolated=isolated)

    def update(self, service: Service) -> None:
        """A new definition: its instances replace the running ones."""
        self.service = service
        self._target = min(max(self._target, self.bounds()[0]), self.bounds()[1])
        self.restart()

    def restart(self) -> None:
        self._generation += 1
        self._crashes, self._next_start = 0, 0.0
        self._wake.set()

    def start(self) -> None:
        if self.stopped:
            self.stopped = False
            self._crashes, self._next_start, self._failure = 0, 0.0, ""
            self._target = self.bounds()[0]
            self._scaler.reset()
            self._wake.set()

    async def stop(self) -> None:
        """No instance runs once this returns (until :meth:`start`)."""
        self.stopped = True
        async with self._lock:
            await self._retire_all("the service was stopped")
        self._wake.set()

    async def close(self) -> None:
        """Every instance ended and the controller gone."""
        self.stopped = True
        self._task.cancel()  # first: a round may be waiting for an image, which need not finish now
        await asyncio.gather(self._task, return_exceptions=True)
        async with self._lock:
            await self._retire_all("the service was removed")

    async def endpoint(self) -> Endpoint:
        if self.stopped:
            raise ExposedUnavailable(f"the exposed service {self.service.name} is stopped: start it first")
        deadline = time.monotonic() + self._timings.ready_wait
        async with self._readiness:
            while not (ready := [i for i in self.instances if i.ready]) and self._worth_waiting(deadline):
                # In slices: the readiness of an instance wakes us, its crash does not.
                slice_ = min(deadline - time.monotonic(), max(self._timings.probe_interval, 0.25))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._readiness.wait(), slice_)
        if ready:
            # The least busy, taking turns among equals.
            turn = next(self._picks)
            chosen = min(ready, key=lambda i: (i.open_connections, (ready.index(i) - turn) % len(ready)))
            return self._endpoint_of(chosen)
        starting = [i for i in self.instances if i.running and i.link.up.is_set()]
        if starting:
            # None healthy yet, but one runs: the caller finds out whether its port answers (else 502).
            return self._endpoint_of(starting[0])
        reason = self._failure or "no instance is up yet"
        raise ExposedUnavailable(f"the exposed service {self.service.name} has no instance up: {reason}")

    def _worth_waiting(self, deadline: float) -> bool:
        """Could an instance be healthy before ``deadline``: one is starting, or a start is due by then?"""
        now = time.monotonic()
        if now >= deadline or self.stopped:
            return False
        if any(i.running for i in self.instances):
            return True
        return self._crashes < self._timings.crash_threshold and self._next_start < deadline

    def _endpoint_of(self, instance: Instance) -> Endpoint:
        port = self.service.expose.api_port[0]
        return Endpoint(url=f"http://127.0.0.1:{port}", unix_socket=str(instance.link.path))

    def state(self) -> DeploymentState:
        ready = sum(1 for i in self.instances if i.ready)
        wanted = max(self._target, len([i for i in self.instances if i.generation == self._generation]))
        affected = max(wanted, len(self.instances)) - ready
        name: DeploymentStateName
        if self.stopped:
            name, reason, affected = "stopped", "Deployment is stopped.", 0
        elif ready >= self._target:
            name, reason = "ready", "Deployment is ready."
        elif ready > 0:
            name = "degraded"
            reason = f"{self._target - ready} of {self._target} instances are affected."
            reason += f" {self._failure}" if self._failure else ""
        elif self._crashes >= self._timings.crash_threshold:
            name, reason = "failed", self._failure
        else:
            name = "pending"
            reason = self._failure or f"Starting {self._target} instance(s)."
        if name != self._state:
            self._state, self._transition = name, datetime.now(UTC)
        return DeploymentState(
            state=name,
            reason=reason,
            active_instances=ready,
            affected_instances=affected,
            last_transition_time=self._transition,
        )

    def logs(self, tail_lines: int) -> list[tuple[str, str]]:
        lines = [*self._notes.lines, *(line for past in self._past_logs for line in past)]
        lines += [line for instance in self.instances for line in instance.log.lines]
        lines.sort(key=lambda line: line[0])  # RFC 3339 stamps of one width sort as text
        return lines[-tail_lines:] if tail_lines > 0 else []

    # --- the controller ----------------------------------------------------------------------------

    async def _control(self) -> None:
        while True:
            try:
                await self._pull_image()
                async with self._lock:
                    if not self.stopped:
                        await self._round()
                    else:  # what ended while stopped
                        for instance in [i for i in self.instances if not i.running]:
                            await self._reap(instance)
            except Exception:
                log.exception("exposed service %s: a control round failed", self.service.name)
            self.state()  # keeps the time of the last transition
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._timings.probe_interval)

    async def _pull_image(self) -> None:
        """The image of instances due to start, pulled before the round (which holds the lock that stop
        and close wait for); what fails is said again by the start that meets it."""
        missing = self._target > len([i for i in self.instances if i.generation == self._generation])
        if self.stopped or not missing or time.monotonic() < self._next_start:
            return
        with contextlib.suppress(OscarError):
            await self._places.images.obtain(
                self.service, log=self._notes, deadline=Deadline(self._places.pull_seconds)
            )

    async def _round(self) -> None:
        for instance in [i for i in self.instances if not i.running]:
            await self._reap(instance)
        # Sampled before this round's probes: their own connections are not load.
        load = sum(i.open_connections for i in self.instances)
        await asyncio.gather(*(self._check(instance) for instance in self.instances if instance.running))
        now = time.monotonic()
        self._target = self._scaler.decide(now=now, current=self._target, load=load, bounds=self.bounds())
        current = [i for i in self.instances if i.generation == self._generation]
        old = [i for i in self.instances if i.generation != self._generation]
        for instance in [i for i in old if not i.ready]:
            await self._retire(instance, "replaced by a new instance")
        old = [i for i in old if i.ready]
        if old and not any(not i.ready for i in current) and len(current) >= self._target:
            await self._retire(old[0], "replaced by a new instance")  # one at a time
            return
        missing = self._target - len(current) + (1 if old and len(current) >= self._target else 0)
        if missing > 0 and now >= self._next_start and not (old and any(not i.ready for i in current)):
            for _ in range(missing if not old else 1):
                await self._start_one()
        # Scaled down: those not healthy first, then the newest.
        for instance in sorted(current, key=lambda i: (i.ready, -i.started))[: max(-missing, 0)]:
            await self._retire(instance, "scaled down")

    async def _start_one(self) -> None:
        name = f"{self.service.name}-{next(self._names)}"
        try:
            instance = await Instance.start(
                self.service,
                name=name,
                generation=self._generation,
                sandbox=self._sandbox,
                places=self._places,
            )
        except Exception as exc:
            log.warning("exposed service %s: instance %s did not start: %s", self.service.name, name, exc)
            self._crashed(f"Instance {name} could not start: {getattr(exc, 'message', exc)}")
            return
        instance.log.note(f"oscar-manager: instance {name} started")
        instance.exited.add_done_callback(lambda _: self._wake.set())
        self.instances.append(instance)

    async def _check(self, instance: Instance) -> None:
        expose = self.service.expose
        healthy = instance.link.up.is_set() and await probe(
            instance.link.path,
            http_path=_probe_path(self.service),
            host=f"localhost:{expose.api_port[0]}",
            within=self._timings.probe_timeout,
        )
        if not instance.running:
            return
        if healthy:
            instance.failed_probes = 0
            if not instance.ready:
                instance.ready = instance.was_ready = True
                self._crashes, self._failure = 0, ""
                async with self._readiness:
                    self._readiness.notify_all()
            return
        instance.failed_probes += 1
        threshold = self._timings.failure_threshold
        if instance.was_ready:
            if instance.failed_probes >= threshold:
                instance.ready = False
            if instance.failed_probes >= 2 * threshold:
                instance.kill_reason = f"it failed {instance.failed_probes} health probes in a row"
                await instance.stop(self._sandbox, grace=self._timings.stop_grace)
        elif time.monotonic() - instance.started > self._timings.startup_timeout:
            instance.kill_reason = (
                f"nothing answered on port {expose.api_port[0]} within {self._timings.startup_timeout:g} s"
                " (does the server listen on expose.api_port?)"
            )
            await instance.stop(self._sandbox, grace=self._timings.stop_grace)

    async def _reap(self, instance: Instance) -> None:
        """An instance that ended on its own (or was killed for failing): why, and when to start again."""
        await self._retire(instance, "")
        if self.stopped:
            return
        why = instance.kill_reason or f"exited with code {instance.exit_code}"
        port = self.service.expose.api_port[0]
        if instance.was_ready:
            self._failure = f"Instance {instance.name} {why}; restarted."
            return
        last = [text for _, text in instance.log.lines if not text.startswith("oscar-manager:")][-3:]
        output = f" Last output: {' | '.join(last)}" if last else ""
        self._crashed(f"Instance {instance.name} {why} before answering on port {port}.{output}")

    def _crashed(self, reason: str) -> None:
        self._crashes += 1
        self._failure = reason
        delay = backoff(self._crashes, self._timings)
        self._next_start = time.monotonic() + delay
        if self._crashes >= self._timings.crash_threshold:
            self._failure += f" ({self._crashes} failed starts in a row; next try in {delay:g} s)"

    async def _retire_all(self, why: str) -> None:
        await asyncio.gather(*(self._retire(instance, why) for instance in list(self.instances)))

    async def _retire(self, instance: Instance, why: str) -> None:
        if instance in self.instances:
            self.instances.remove(instance)
            if why:
                instance.kill_reason = instance.kill_reason or why
            await instance.stop(self._sandbox, grace=self._timings.stop_grace)
            said = instance.kill_reason or f"exited with code {instance.exit_code}"
            instance.log.note(f"oscar-manager: instance {instance.name} ended: {said}")
            self._past_logs.append(list(instance.log.lines))


def _probe_path(service: Service) -> str | None:
    """As upstream's probe: ``health_path`` (with the base path before it under ``rewrite_target``, unless
    ``probe_mode`` is ``direct``); None without a ``health_path``: the port taking connections is enough."""
    expose = service.expose
    if not expose.health_path:
        return None
    path = expose.health_path if expose.health_path.startswith("/") else f"/{expose.health_path}"
    if expose.rewrite_target and expose.probe_mode.strip().lower() != "direct":
        return base_path(service) + path
    return path
