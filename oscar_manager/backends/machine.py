"""This machine as the one node of the local backend, for ``/system/status``."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from pathlib import Path

from oscar_manager.domain.cluster import NodeStatus
from oscar_manager.domain.quantities import quantity_bytes, quantity_cores
from oscar_manager.domain.service import Service

MEMINFO = Path("/proc/meminfo")


def _meminfo(path: Path) -> dict[str, int]:
    """``/proc/meminfo`` in bytes, by field (``MemTotal``, ``MemAvailable``...)."""
    fields: dict[str, int] = {}
    try:
        text = path.read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return fields


def this_machine(running: Iterable[Service], *, meminfo: Path = MEMINFO) -> NodeStatus:
    """Capacity: the CPUs this process may run on and the machine's memory. Usage: the one-minute load
    average (runnable threads, so at most the capacity) and the memory not available to new processes.
    Requests: the ``cpu`` and ``memory`` of the services whose jobs are running now."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cpu_millis = cpus * 1000
    memory = _meminfo(meminfo)
    total = memory.get("MemTotal", 0)
    used = max(total - memory.get("MemAvailable", memory.get("MemFree", total)), 0)
    services = list(running)
    return NodeStatus(
        name=socket.gethostname(),
        cpu_millis=cpu_millis,
        memory_bytes=total,
        cpu_used_millis=min(round(os.getloadavg()[0] * 1000), cpu_millis),
        memory_used_bytes=used,
        cpu_requested_millis=sum(round((quantity_cores(s.cpu) or 0) * 1000) for s in services),
        memory_requested_bytes=sum(quantity_bytes(s.memory) or 0 for s in services),
        conditions={"Ready": True},
    )
