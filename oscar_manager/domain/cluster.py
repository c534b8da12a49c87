"""What a backend knows of the machines jobs run on, for ``/system/status``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One machine: capacity and what is requested of it in millicores and bytes, and measured usage
    (None when nothing measures it: a cluster without a metrics API).

    The units are upstream's (``Quantity.MilliValue()`` for cpu, ``Value()`` for memory)."""

    name: str
    cpu_millis: int
    memory_bytes: int
    cpu_used_millis: int | None
    memory_used_bytes: int | None
    cpu_requested_millis: int = 0
    memory_requested_bytes: int = 0
    gpus: int = 0
    interlink: bool = False
    # Kubernetes node conditions by type (``Ready``, ``MemoryPressure``...): True when the condition holds.
    conditions: dict[str, bool] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """As upstream words it: the ``Ready`` condition, ``Unknown`` without one."""
        if "Ready" not in self.conditions:
            return "Unknown"
        return "Ready" if self.conditions["Ready"] else "NotReady"
