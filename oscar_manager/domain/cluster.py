"""What a backend knows of the machines jobs run on: each one for ``/system/status``, and what they offer
beyond CPU and memory for ``/system/config``."""

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


@dataclass(frozen=True, slots=True)
class ClusterOffers:
    """What jobs may ask of the cluster beyond CPU and memory: a GPU (a node with allocatable
    ``nvidia.com/gpu``), and offloading to an interLink virtual node. Both False where nothing offers them."""

    gpu: bool = False
    interlink: bool = False
