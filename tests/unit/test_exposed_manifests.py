"""The Kubernetes objects of an exposed service (valid for the official schema, named and shaped as
upstream's where it matters), and its state and logs as read from the Deployment and its pods."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from oscar_manager.backends import exposed_manifests as objects
from oscar_manager.backends import manifests
from oscar_manager.backends.exposed_kube_status import deployment_state, merged_logs
from oscar_manager.domain.service import Service
from tests.support.factories import stored_service
from tests.support.kubernetes import validate
from tests.support.pod_security import baseline_violations, restricted_violations

CLUSTER = manifests.ClusterConfig(manager_image="ghcr.io/example/oscar-manager:1.0", ttl_seconds=600)


def exposed(**expose: Any) -> Service:
    return stored_service(
        "nginx",
        image="nginx",
        script="nginx -g 'daemon off;'\n",
        environment={"variables": {"MODE": "x", "OSCAR_SERVICE_TOKEN": "forged"}, "secrets": {"K": "v"}},
        labels={"team": "a"},
        expose={"api_port": [80], **expose},
    )


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (found,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(found)


def test_the_deployment_runs_the_script_on_the_port_with_the_oscar_variables() -> None:
    service = exposed(min_scale=2)
    deployment = objects.deployment(service, cluster=CLUSTER, replicas=2)
    validate(deployment)
    assert deployment["metadata"]["name"] == "nginx-dpl"
    assert deployment["spec"]["replicas"] == 2
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["app"] == "oscar-svc-exp-nginx"  # upstream's selector label
    assert (labels["oscar_service"], labels["team"]) == ("nginx", "a")
    assert deployment["spec"]["selector"] == {"matchLabels": {"app": "oscar-svc-exp-nginx"}}
    main = container(deployment)
    assert main["command"] == ["/bin/sh", "/oscar/config/script.sh"]
    env = {item["name"]: item["value"] for item in main["env"]}
    # The service cannot set the variables the manager sets.
    assert env == {
        "MODE": "x",
        "OSCAR_SERVICE_NAME": "nginx",
        "OSCAR_SERVICE_TOKEN": service.token,
        "OSCAR_SERVICE_BASE_PATH": "/system/services/nginx/exposed",
    }
    assert main["envFrom"] == [{"secretRef": {"name": "nginx"}}]
    assert main["ports"] == [{"name": "api-0", "containerPort": 80, "protocol": "TCP"}]
    assert main["readinessProbe"]["tcpSocket"] == {"port": 80}
    assert "livenessProbe" not in main
    assert main["resources"]["limits"] == {"cpu": service.cpu, "memory": service.memory}
    # The supervisor is delivered as for Jobs, by the init container from the manager's image.
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert init["image"] == CLUSTER.manager_image
    # Pod Security: "baseline" always, and "restricted" but for what a user's image may need.
    pod = deployment["spec"]["template"]["spec"]
    assert baseline_violations(pod) == []
    # Of "restricted", only what the user's image decides is left as it says: its user, its capabilities.
    assert restricted_violations(pod) == [
        "oscar-container may run as root",
        "oscar-container does not drop ALL capabilities",
    ]


def test_default_command_keeps_the_images_own_and_health_path_is_an_http_probe() -> None:
    main = container(
        objects.deployment(exposed(default_command=True, health_path="healthz"), cluster=CLUSTER, replicas=1)
    )
    assert "command" not in main
    assert "args" not in main
    assert main["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 80}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 80}


@pytest.mark.parametrize(
    ("rewrite_target", "probe_mode", "path"),
    [(True, "", "/system/services/nginx/exposed/ok"), (True, "direct", "/ok"), (False, "", "/ok")],
)
def test_the_probe_goes_under_the_base_path_when_the_server_gets_whole_paths(
    rewrite_target: bool, probe_mode: str, path: str
) -> None:
    service = exposed(health_path="/ok", rewrite_target=rewrite_target, probe_mode=probe_mode)
    main = container(objects.deployment(service, cluster=CLUSTER, replicas=1))
    assert main["readinessProbe"]["httpGet"]["path"] == path


def test_the_service_listens_on_the_api_port_and_is_a_node_port_when_asked() -> None:
    plain = objects.kube_service(exposed())
    validate(plain)
    assert plain["metadata"]["name"] == "nginx-svc"
    assert plain["spec"]["type"] == "ClusterIP"
    assert plain["spec"]["selector"] == {"app": "oscar-svc-exp-nginx"}
    assert plain["spec"]["ports"] == [{"name": "api-0", "port": 80, "targetPort": 80, "protocol": "TCP"}]
    fixed = objects.kube_service(exposed(api_port=[80, 81], nodePort=[30080, 0]))
    validate(fixed)
    assert fixed["spec"]["type"] == "NodePort"
    assert [p.get("nodePort") for p in fixed["spec"]["ports"]] == [30080, None]  # 0: the cluster picks


def test_the_hpa_takes_upstreams_documented_defaults_for_zeros() -> None:
    hpa = objects.hpa(exposed())
    validate(hpa)
    assert hpa["metadata"]["name"] == "nginx-hpa"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "nginx-dpl",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 10)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 80}
    chosen = objects.hpa(exposed(min_scale=3, max_scale=5, cpu_threshold=50))["spec"]
    assert (chosen["minReplicas"], chosen["maxReplicas"]) == (3, 5)
    assert chosen["metrics"][0]["resource"]["target"]["averageUtilization"] == 50
    # A max below the min (refused at create by the operations) never makes an invalid HPA.
    assert objects.hpa(exposed(min_scale=4))["spec"]["maxReplicas"] == 10
    assert objects.hpa(exposed(min_scale=12))["spec"]["maxReplicas"] == 12


def test_the_ingress_strips_the_base_path_unless_rewrite_target_and_asks_for_the_token_with_set_auth() -> (
    None
):
    hosted = manifests.ClusterConfig(manager_image="m", ttl_seconds=1, ingress_host="oscar.example.org")
    ingress = objects.ingress(exposed(set_auth=True), cluster=hosted)
    validate(ingress)
    assert ingress["metadata"]["name"] == "nginx-ing"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "oscar.example.org"
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/system/services/nginx/exposed/?(.*)"
    assert path["backend"]["service"] == {"name": "nginx-svc", "port": {"number": 80}}
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/rewrite-target"] == "/$1"
    assert annotations["nginx.ingress.kubernetes.io/auth-secret"] == "nginx-auth-expose"
    assert ingress["spec"]["tls"] == [{"hosts": ["oscar.example.org"], "secretName": "oscar.example.org"}]
    kept = objects.ingress(exposed(rewrite_target=True), cluster=CLUSTER)
    rewrite = kept["metadata"]["annotations"]["nginx.ingress.kubernetes.io/rewrite-target"]
    assert rewrite == "/system/services/nginx/exposed/$1"
    assert "nginx.ingress.kubernetes.io/auth-type" not in kept["metadata"]["annotations"]
    assert "tls" not in kept["spec"]
    assert "host" not in kept["spec"]["rules"][0]


def test_the_auth_secret_holds_an_ssha_of_the_token_for_the_service_name() -> None:
    service = exposed(set_auth=True)
    secret = objects.auth_secret(service)
    validate(secret)
    user, hashed = secret["stringData"]["auth"].strip().split(":", 1)
    assert user == "nginx"
    assert hashed.startswith("{SSHA}")
    raw = base64.b64decode(hashed.removeprefix("{SSHA}"))
    digest, salt = raw[:20], raw[20:]
    assert hashlib.sha1(service.token.encode() + salt, usedforsecurity=False).digest() == digest
    assert hashlib.sha1(b"wrong" + salt, usedforsecurity=False).digest() != digest


# --- state and logs --------------------------------------------------------------------------------------


def dpl(
    replicas: int, *, ready: int = 0, observed: int | None = None, conditions: Any = ()
) -> dict[str, Any]:
    status = {"replicas": replicas if observed is None else observed, "availableReplicas": ready}
    return {"spec": {"replicas": replicas}, "status": {**status, "conditions": list(conditions)}}


def crashing(name: str = "p") -> dict[str, Any]:
    waiting = {"reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container"}
    return {
        "metadata": {"name": name},
        "status": {"containerStatuses": [{"name": "oscar-container", "state": {"waiting": waiting}}]},
    }


PROGRESSING = {
    "type": "Progressing",
    "status": "True",
    "reason": "NewReplicaSetAvailable",
    "message": "ReplicaSet has successfully progressed.",
    "lastUpdateTime": "2026-01-01T00:00:05Z",
}


def test_states_from_the_deployment_and_its_pods() -> None:
    ready = deployment_state(dpl(2, ready=2, conditions=[PROGRESSING]), [])
    assert (ready.state, ready.active_instances, ready.affected_instances) == ("ready", 2, 0)
    assert ready.reason == "NewReplicaSetAvailable: ReplicaSet has successfully progressed."
    assert ready.last_transition_time is not None
    assert ready.last_transition_time.second == 5
    assert deployment_state(dpl(0), []).state == "stopped"
    assert deployment_state(dpl(0), []).reason == "Deployment is stopped."
    pending = deployment_state(dpl(1, ready=0), [])
    assert (pending.state, pending.affected_instances) == ("pending", 1)
    degraded = deployment_state(dpl(3, ready=1), [])
    assert (degraded.state, degraded.reason) == ("degraded", "2 of 3 instances are affected.")
    stuck = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "m"}
    assert deployment_state(dpl(1, conditions=[stuck]), []).state == "failed"


def test_a_crash_looping_pod_is_failed_or_degraded_with_its_reason() -> None:
    failed = deployment_state(dpl(1, ready=0), [crashing()])
    assert failed.state == "failed"
    assert failed.reason == "CrashLoopBackOff: back-off 10s restarting failed container"
    assert failed.affected_instances == 1
    degraded = deployment_state(dpl(2, ready=1), [crashing()])
    assert (degraded.state, degraded.active_instances, degraded.affected_instances) == ("degraded", 1, 1)
    leaving = crashing()
    leaving["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert deployment_state(dpl(1, ready=1), [leaving]).state == "ready"  # a rollout's old pod


def test_logs_of_several_pods_are_merged_by_time_and_cut_to_the_tail() -> None:
    first = "2026-01-01T00:00:01.000000000Z a1\n2026-01-01T00:00:03.000000000Z a3\n"
    second = "2026-01-01T00:00:02.5Z b2\n2026-01-01T00:00:04.000000000Z b4\n"
    assert merged_logs([first, second], tail_lines=10) == [
        ("2026-01-01T00:00:01.000000000Z", "a1"),
        ("2026-01-01T00:00:02.5Z", "b2"),
        ("2026-01-01T00:00:03.000000000Z", "a3"),
        ("2026-01-01T00:00:04.000000000Z", "b4"),
    ]
    assert [line for _, line in merged_logs([first, second], tail_lines=2)] == ["a3", "b4"]
    assert merged_logs([first], tail_lines=0) == []
