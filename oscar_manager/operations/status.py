"""``/system/status`` in upstream's shape (``types.StatusInfo``), from what the backend and the registry know.

Upstream reads a Kubernetes Deployment and the pods of the services' namespace; here the manager is the
deployment (one replica, ready while it answers), and the job records stand for the pods: they outlive
pods, so ``jobs_count`` and the states count every job the registry keeps.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from oscar_manager.backends.base import Backend
from oscar_manager.domain.cluster import NodeStatus
from oscar_manager.domain.principal import Principal
from oscar_manager.errors import OscarError
from oscar_manager.registry import Transaction
from oscar_manager.settings import Settings
from oscar_manager.storage.base import ObjectStore

log = logging.getLogger(__name__)

STARTED = datetime.now(UTC)  # the manager's "deployment" creation time
POD_STATES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")


def _node(node: NodeStatus) -> dict[str, Any]:
    # Zero figures are left out, as Go's omitempty does in NodeResource, and so is usage nothing measures.
    cpu = {
        "capacity_cores": node.cpu_millis,
        "usage_cores": node.cpu_used_millis,
        "request_cores": node.cpu_requested_millis,
    }
    memory = {
        "capacity_bytes": node.memory_bytes,
        "usage_bytes": node.memory_used_bytes,
        "request_bytes": node.memory_requested_bytes,
    }
    return {
        "name": node.name,
        "cpu": {key: value for key, value in cpu.items() if value},
        "memory": {key: value for key, value in memory.items() if value},
        "gpu": node.gpus,
        "is_interlink": node.interlink,
        "status": node.status,
        "conditions": [{"type": kind, "status": holds} for kind, holds in node.conditions.items()],
    }


def _known(measured: int | None, requested: int) -> int:
    return requested if measured is None else measured


def _cluster(nodes: list[NodeStatus]) -> dict[str, Any]:
    # Without measured usage (no metrics API), what is free is what the requests leave.
    free_cpu = [node.cpu_millis - _known(node.cpu_used_millis, node.cpu_requested_millis) for node in nodes]
    free_memory = [
        node.memory_bytes - _known(node.memory_used_bytes, node.memory_requested_bytes) for node in nodes
    ]
    open_cpu = [node.cpu_millis - node.cpu_requested_millis for node in nodes]
    open_memory = [node.memory_bytes - node.memory_requested_bytes for node in nodes]
    return {
        "nodes_count": len(nodes),
        "metrics": {
            # Upstream's key names, including the one that says "total" for a per-node maximum.
            "cpu": {
                "total_free_cores": sum(free_cpu),
                "max_free_on_node_cores": max([0, *free_cpu]),
                "total_schedulable_cores": sum(open_cpu),
                "total_schedulable_on_node_cores": max([0, *open_cpu]),
            },
            "memory": {
                "total_free_bytes": sum(free_memory),
                "max_free_on_node_bytes": max([0, *free_memory]),
                "total_schedulable_bytes": sum(open_memory),
                "max_schedulable_on_node_bytes": max([0, *open_memory]),
            },
            "gpu": {"total_gpu": sum(node.gpus for node in nodes)},
        },
        "nodes": [_node(node) for node in nodes],
    }


async def _storage(store: ObjectStore) -> dict[str, int]:
    """Buckets, and objects with content (folder markers and empty objects are not counted, as upstream)."""
    buckets = await store.list_buckets()
    objects = 0
    for bucket in buckets:
        objects += sum(1 for info in await store.list_objects(bucket) if info.size > 0)
    return {"buckets_count": len(buckets), "total_objects": objects}


async def status(
    tx: Transaction, *, principal: Principal, settings: Settings, backend: Backend, store: ObjectStore
) -> dict[str, Any]:
    """Everyone authenticated gets the cluster and the manager; jobs and storage figures only the admin and
    ``USERS_ADMIN`` (others see zeros there, as upstream)."""
    nodes = await backend.nodes()
    oscar: dict[str, Any] = {
        "deployment_name": settings.oscar_name,
        "ready": True,
        "deployment": {
            "available_replicas": 1,
            "ready_replicas": 1,
            "replicas": 1,
            "creation_timestamp": STARTED.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "strategy": "",
            "labels": {"app": settings.oscar_name},
        },
        "jobs_count": 0,
        "pods": {"total": 0, "states": {}},
        "oidc": {
            "enabled": settings.oidc_enable,
            "issuers": list(settings.oidc_issuers),
            "groups": list(settings.oidc_groups),
        },
    }
    minio = {"buckets_count": 0, "total_objects": 0}
    if principal.is_admin or principal.users_admin:
        counts = await tx.jobs.counts()
        states = {state: counts.get(state, 0) for state in POD_STATES}
        oscar["jobs_count"] = sum(counts.values())
        oscar["pods"] = {"total": sum(counts.values()), "states": states}
        try:
            minio = await _storage(store)
        except OscarError as exc:  # as upstream: the rest of the status is still worth answering
            log.warning("status: the storage could not be counted: %s", exc.message)
    return {"cluster": _cluster(nodes), "oscar": oscar, "minio": minio}
