"""The cluster's nodes for ``/system/status``: capacity from the nodes, usage from the metrics API
(``metrics.k8s.io``, served by metrics-server), and what the manager's own running pods request; and what
those nodes offer for ``/system/config`` (``kube_offers`` keeps it for some seconds).

As upstream: only nodes that are not control-plane ones count, and only those the metrics API reports on.
Without a metrics API (or one that refuses or fails) upstream answers 500 and the dashboard's Status page
spins forever; here every eligible node is listed with its capacity and requests and no usage. Requests are
summed over the pods of the services' namespace, not over every namespace as upstream does: reading every
pod of the cluster is a permission the manager does not otherwise need.

What they offer is read from the same nodes: a GPU where one has allocatable ``nvidia.com/gpu``, interLink
where one is a virtual kubelet (``interlink.is_virtual_node``; so is a node's ``is_interlink`` in the
status, where upstream's status looks at the ``virtual-node.interlink/type`` label alone). Upstream's
start-up check leaves the control plane's nodes out even when they are all there is; here they count then,
as they do in the status: on a one-node cluster the jobs run there.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from oscar_manager.backends.interlink import is_virtual_node
from oscar_manager.backends.kube_answers import KubernetesError, reason
from oscar_manager.domain.cluster import ClusterOffers, NodeStatus
from oscar_manager.domain.quantities import parse_quantity

log = logging.getLogger(__name__)

GPU = "nvidia.com/gpu"
# Upstream (utils.SelectEligibleNodes) leaves out the control plane's nodes, unless they are all there is.
CONTROL_PLANE_LABELS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")


def _amount(quantities: dict[str, str] | None, name: str, *, milli: bool = False) -> int:
    """A resource quantity as upstream reads it: ``MilliValue()`` or ``Value()``, rounded up."""
    amount = parse_quantity((quantities or {}).get(name, "") or "") or Decimal(0)
    scaled = amount * 1000 if milli else amount
    return int(scaled.to_integral_value(rounding="ROUND_CEILING"))


def _requests(pods: list[Any]) -> dict[str, tuple[int, int]]:
    """Node -> (millicores, bytes) requested by its pods that have not ended: the larger of the app
    containers' sum and the largest init container, as the scheduler counts them."""
    totals: dict[str, tuple[int, int]] = {}
    for pod in pods:
        node = pod.spec.node_name if pod.spec else None
        if not node or (pod.status and pod.status.phase in ("Succeeded", "Failed")):
            continue

        def asked(containers: list[Any] | None) -> list[tuple[int, int]]:
            return [
                (
                    _amount(c.resources.requests if c.resources else None, "cpu", milli=True),
                    _amount(c.resources.requests if c.resources else None, "memory"),
                )
                for c in containers or []
            ]

        apps, inits = asked(pod.spec.containers), asked(pod.spec.init_containers)
        cpu = max(sum(c for c, _ in apps), max((c for c, _ in inits), default=0))
        memory = max(sum(m for _, m in apps), max((m for _, m in inits), default=0))
        before = totals.get(node, (0, 0))
        totals[node] = (before[0] + cpu, before[1] + memory)
    return totals


def _control_plane(node: Any) -> bool:
    return any(label in (node.metadata.labels or {}) for label in CONTROL_PLANE_LABELS)


def _eligible(nodes: list[Any]) -> list[Any]:
    """The nodes jobs run on: the workers, or every node when there are none."""
    return [node for node in nodes if not _control_plane(node)] or nodes


def _gpus(node: Any) -> int:
    return _amount(node.status.allocatable if node.status else None, GPU)


def _interlink(node: Any) -> bool:
    return is_virtual_node(node.metadata.labels or {})


async def cluster_offers(api: client.ApiClient) -> ClusterOffers:
    """What the nodes jobs run on offer; ``KubernetesError`` when the nodes cannot be listed."""
    try:
        nodes = _eligible((await client.CoreV1Api(api).list_node()).items)
    except ApiException as exc:
        raise KubernetesError(f"Kubernetes refused to list the nodes: {reason(exc)}") from None
    return ClusterOffers(
        gpu=any(_gpus(node) > 0 for node in nodes), interlink=any(_interlink(node) for node in nodes)
    )


async def cluster_nodes(api: client.ApiClient, *, namespace: str) -> list[NodeStatus]:
    core = client.CoreV1Api(api)
    try:
        nodes = (await core.list_node()).items
        pods = (await core.list_namespaced_pod(namespace)).items
    except ApiException as exc:
        raise KubernetesError(f"Kubernetes refused to list the nodes: {reason(exc)}") from None
    usage: dict[str, dict[str, str]] | None = None
    try:
        metrics = await client.CustomObjectsApi(api).list_cluster_custom_object(
            "metrics.k8s.io", "v1beta1", "nodes"
        )
        usage = {item["metadata"]["name"]: item.get("usage") or {} for item in metrics.get("items") or []}
    except ApiException as exc:
        log.warning("status without node usage: the metrics API answered %s", reason(exc))
    requested = _requests(pods)
    found: list[NodeStatus] = []
    for node in _eligible(nodes):
        name = node.metadata.name
        if usage is not None and name not in usage:  # as upstream, only nodes the metrics API reports on
            continue
        used = None if usage is None else usage[name]
        allocatable = node.status.allocatable if node.status else None
        cpu, memory = requested.get(name, (0, 0))
        found.append(
            NodeStatus(
                name=name,
                cpu_millis=_amount(allocatable, "cpu", milli=True),
                memory_bytes=_amount(allocatable, "memory"),
                cpu_used_millis=None if used is None else _amount(used, "cpu", milli=True),
                memory_used_bytes=None if used is None else _amount(used, "memory"),
                cpu_requested_millis=cpu,
                memory_requested_bytes=memory,
                gpus=_gpus(node),
                interlink=_interlink(node),
                conditions={
                    c.type: c.status == "True" for c in (node.status.conditions or []) if node.status
                },
            )
        )
    return found
