"""How the local exposer paces itself: probes, restarts with backoff, and scaling on load (pure rules).

Load is what the relays report: connections open through each instance (a proxied request in flight, a
websocket, or a keep-alive connection the proxy holds). Scaling keeps it simple:
- up by one instance (to ``max_scale``) when the open connections per instance have stayed above
  ``connections_per_instance`` for ``scale_up_after`` seconds;
- down by one (to ``min_scale``, at least 1) when all of them would have fitted, at half that threshold,
  in one instance fewer for ``scale_down_after`` seconds: so an idle service goes back to ``min_scale``,
  one instance per idle period.
"""

from __future__ import annotations

from dataclasses import dataclass

from oscar_manager.domain.service import Service


@dataclass(frozen=True, slots=True)
class ExposeTimings:
    probe_interval: float = 2.0  # between two rounds of health probes (and scaling decisions)
    probe_timeout: float = 2.0
    # A new instance not healthy within this long is killed and started again (upstream's startup probe
    # allows 18 x 10 s).
    startup_timeout: float = 180.0
    # Failed probes in a row after which a running instance that was healthy is killed and restarted.
    failure_threshold: int = 3
    # Crashes in a row before any instance got healthy, after which the deployment is ``failed``.
    crash_threshold: int = 3
    backoff_base: float = 1.0  # before the first restart; doubled at each crash in a row
    backoff_cap: float = 60.0
    # endpoint() waits this long for a healthy instance while one is starting, before answering anyway.
    ready_wait: float = 10.0
    connections_per_instance: int = 4
    scale_up_after: float = 4.0
    scale_down_after: float = 60.0
    stop_grace: float = 5.0


def scale_bounds(service: Service, *, isolated: bool) -> tuple[int, int]:
    """(least, most) instances: ``min_scale`` at least 1, ``max_scale`` at least that. Without a network
    namespace of their own (the service asked for the host's network, or there is no sandbox) instances
    would all bind the same host port: one only."""
    least = max(service.expose.min_scale, 1)
    most = max(service.expose.max_scale, least)
    return (1, 1) if not isolated else (least, most)


def backoff(crashes: int, timings: ExposeTimings) -> float:
    """Seconds before the next start after ``crashes`` crashes in a row (none before the first start)."""
    if crashes <= 0:
        return 0.0
    return min(timings.backoff_base * 2.0 ** (crashes - 1), timings.backoff_cap)


class Scaler:
    """Remembers since when the load asked for more or fewer instances; :meth:`decide` says how many."""

    def __init__(self, timings: ExposeTimings) -> None:
        self._timings = timings
        self._busy_since: float | None = None
        self._idle_since: float | None = None

    def reset(self) -> None:
        self._busy_since = self._idle_since = None

    def decide(self, *, now: float, current: int, load: int, bounds: tuple[int, int]) -> int:
        least, most = bounds
        target = min(max(current, least), most)
        per = self._timings.connections_per_instance
        busy = load > per * target
        idle = target > least and 2 * load <= per * (target - 1)
        if not busy:
            self._busy_since = None
        elif self._busy_since is None:
            self._busy_since = now
        if not idle:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = now
        if self._busy_since is not None and now - self._busy_since >= self._timings.scale_up_after:
            self._busy_since = None
            return min(target + 1, most)
        if self._idle_since is not None and now - self._idle_since >= self._timings.scale_down_after:
            self._idle_since = None
            return max(target - 1, least)
        return target
