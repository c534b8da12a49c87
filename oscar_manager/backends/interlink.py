"""Offloading a service's Jobs to an interLink virtual node (upstream ``pkg/types/interlink.go``).

interLink runs a virtual kubelet: a node (labelled ``virtual-node.interlink/type=virtual-kubelet`` and
tainted ``virtual-node.interlink/no-schedule``) whose pods run elsewhere, e.g. as Slurm jobs on an HPC
cluster. A service naming such a node in ``interlink_node_name`` has its Jobs (sync runs' too) placed
there as upstream places them: node selector ``kubernetes.io/hostname=<node>``, a toleration of the
node's taint (``Exists``, any effect), ``dnsPolicy: ClusterFirst``. What else the remote side needs
(Slurm flags, Singularity mounts...) it reads from the pod's annotations, which are the service's.

What the pod needs in the cluster's nodes it does not get there: no volume of a node's host. The
supervisor already arrives without one (``manifests``: copied by an init container into an ``emptyDir``,
as upstream's interLink path does with its ``SUPERVISOR_KIT_IMAGE``), the definition and credentials come
from a ConfigMap and a Secret as elsewhere, and the body travels base64-encoded in ``EVENT``
(``supervisor.event_env``), as upstream sends it there: the remote side may not re-create a variable
holding quotes or newlines intact.

Unlike upstream: the placement does not wait for the manager to have seen an interLink node at start-up
(upstream ignores the field on a cluster without one, so the Jobs run on ordinary nodes); a Job for a
node that is not there stays Pending, as any Job no node can take. Not offloaded, as upstream: a
service's exposed Deployment (its pods serve HTTP, which a remote batch system does not), and warm pods,
which an offloaded service does not get (upstream makes no Knative service for it): its sync runs are
Jobs on the node.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from oscar_manager.domain.service import Service

NODE_SELECTOR_KEY: Final = "kubernetes.io/hostname"
TAINT_KEY: Final = "virtual-node.interlink/no-schedule"
# How interLink labels its virtual nodes; upstream's start-up check (``CheckAvailableInterLink``) also
# takes the generic virtual kubelet's ``type=virtual-kubelet``, as its documentation words it.
NODE_TYPE_LABEL: Final = "virtual-node.interlink/type"
NODE_TYPE_LABELS: Final = (NODE_TYPE_LABEL, "type")
NODE_TYPE: Final = "virtual-kubelet"


def is_virtual_node(labels: Mapping[str, str]) -> bool:
    """Whether a node with ``labels`` is a virtual kubelet a service may offload to."""
    return any(labels.get(label) == NODE_TYPE for label in NODE_TYPE_LABELS)


def offloaded(service: Service) -> bool:
    return bool(service.interlink_node_name)


def placement(service: Service) -> dict[str, Any]:
    """The pod spec's fields that put a Job of ``service`` on its virtual node ({} when it has none)."""
    if not offloaded(service):
        return {}
    return {
        "nodeSelector": {NODE_SELECTOR_KEY: service.interlink_node_name},
        "tolerations": [{"key": TAINT_KEY, "operator": "Exists"}],
        "dnsPolicy": "ClusterFirst",
    }
