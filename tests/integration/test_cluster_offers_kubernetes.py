"""What ``/system/config`` says the cluster offers (``gpu_available``, ``interLink_available``), on the real
control plane: read from its nodes (``tests.support.offering_nodes``), the same for users as for the admin
(as upstream), and listed once for many requests. (A node list RBAC refuses: ``test_rbac``.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from oscar_manager.backends import interlink
from oscar_manager.settings import Settings
from tests.support.app import NO_AUTH, app_client, bearer
from tests.support.controlplane import ControlPlane, audit_records
from tests.support.kube_cluster import MANAGER_USER, JobNamespace, manager_settings
from tests.support.offering_nodes import GPU, offering_node
from tests.support.oidc import egi_issuer, with_egi

pytestmark = pytest.mark.asyncio


@pytest.fixture
def on_cluster(
    settings: Settings,
    control_plane: ControlPlane,
    manager_token: str,
    kube_namespace: JobNamespace,
    tmp_path: Path,
) -> Settings:
    """A manager on the control plane as the shipped ServiceAccount, with OIDC users besides the admin."""
    return with_egi(manager_settings(settings, control_plane, manager_token, kube_namespace.name, tmp_path))


def offered(answer: httpx.Response) -> tuple[bool, bool]:
    assert answer.status_code == 200, answer.text
    config: dict[str, Any] = answer.json()["config"]
    return config["gpu_available"], config["interLink_available"]


async def as_admin_and_user(settings: Settings) -> list[tuple[bool, bool]]:
    """What a manager started now answers the admin, then a user."""
    with egi_issuer("alice") as egi:
        async with app_client(settings) as http:
            admin = offered(await http.get("/system/config"))
            user = offered(await http.get("/system/config", headers=bearer(egi.token("alice")), auth=NO_AUTH))
    return [admin, user]


async def test_a_gpu_node_offers_gpus_to_the_admin_and_to_users(
    on_cluster: Settings, kube_admin: httpx.AsyncClient
) -> None:
    async with offering_node(kube_admin, allocatable={GPU: "2"}):
        assert await as_admin_and_user(on_cluster) == [(True, False), (True, False)]


@pytest.mark.parametrize("label", interlink.NODE_TYPE_LABELS)
async def test_a_virtual_kubelet_offers_interlink_to_the_admin_and_to_users(
    on_cluster: Settings, kube_admin: httpx.AsyncClient, label: str
) -> None:
    """By interLink's own label or the generic virtual kubelet's ``type``, as upstream finds them; and the
    Status page says which node it is."""
    async with offering_node(kube_admin, labels={label: interlink.NODE_TYPE}) as node:
        assert await as_admin_and_user(on_cluster) == [(False, True), (False, True)]
        async with app_client(on_cluster) as http:
            status = (await http.get("/system/status")).json()
    assert {n["name"]: n["is_interlink"] for n in status["cluster"]["nodes"]}[node] is True


async def test_gpus_of_a_control_plane_node_are_not_offered_while_workers_run_the_jobs(
    on_cluster: Settings, kube_admin: httpx.AsyncClient
) -> None:
    """As upstream: a GPU only the control plane has is not one jobs get (the plane has kwok workers)."""
    labels = {"node-role.kubernetes.io/control-plane": ""}
    async with offering_node(kube_admin, labels=labels, allocatable={GPU: "1"}):
        assert await as_admin_and_user(on_cluster) == [(False, False), (False, False)]


async def test_nothing_offered_without_such_nodes_and_the_nodes_listed_once_for_many_requests(
    on_cluster: Settings, control_plane: ControlPlane, kube_admin: httpx.AsyncClient
) -> None:
    """The dashboard asks on every page load: the answer is kept for a while (a node added meanwhile is
    seen after that), not a node list per request."""
    start = control_plane.audit_log.stat().st_size
    async with app_client(on_cluster) as http:
        assert offered(await http.get("/system/config")) == (False, False)
        async with offering_node(kube_admin, allocatable={GPU: "1"}):
            for _ in range(3):
                assert offered(await http.get("/system/config/")) == (False, False)
    node_lists = [
        record
        for record in audit_records(control_plane.audit_log, user=MANAGER_USER, start=start)
        if (record.group, record.resource, record.verb) == ("", "nodes", "list")
    ]
    assert len(node_lists) == 1
