"""Nodes on the tests' real control plane that offer what ``/system/config`` reports: a GPU node (allocatable
``nvidia.com/gpu``, as the NVIDIA device plugin's kubelet reports it) or a virtual kubelet's (labelled).

No kubelet runs them: their status is written once by the test, they stay not ready (tainted so by the
apiserver), and no pod goes there, which the answers read from the nodes do not need.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

GPU = "nvidia.com/gpu"


@asynccontextmanager
async def offering_node(
    http: httpx.AsyncClient,
    *,
    labels: dict[str, str] | None = None,
    allocatable: dict[str, str] | None = None,
) -> AsyncIterator[str]:
    """A node with ``labels`` and ``allocatable`` resources (its capacity too), deleted afterwards."""
    name = f"offers-{secrets.token_hex(4)}"
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
    }
    (await http.post("/api/v1/nodes", json=node)).raise_for_status()
    try:
        if allocatable:
            resources = {"cpu": "4", "memory": "8Gi", "pods": "110", **allocatable}
            patched = await http.patch(
                f"/api/v1/nodes/{name}/status",
                json={"status": {"capacity": resources, "allocatable": resources}},
                headers={"Content-Type": "application/merge-patch+json"},
            )
            patched.raise_for_status()
        yield name
    finally:
        await http.delete(f"/api/v1/nodes/{name}")
