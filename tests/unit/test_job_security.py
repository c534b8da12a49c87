"""Issue 15: the Jobs' pods meet Pod Security "baseline" (enforced in the services' namespace) and of
"restricted" what users' images allow: all of it in the init container, the pod's seccomp profile and no
privilege escalation in the main container. The rules checked are listed in ``tests.support.pod_security``
(hand-written: pod-security-admission is a Go library)."""

from __future__ import annotations

from typing import Any

import pytest

from oscar_manager.backends import manifests
from oscar_manager.supervisor.stage import EVENT_ENV_MAX_BYTES
from tests.support.deploy import find
from tests.support.pod_security import baseline_violations, restricted_violations
from tests.unit.test_dockerfile import runtime
from tests.unit.test_kubernetes_deploy import settings_from_env
from tests.unit.test_manifests import CLUSTER, EVENT, GOLDEN_SERVICES, JOB_ID, make, pod_spec

KINDS: dict[str, dict[str, Any]] = {
    **{name: {"service": fields} for name, fields in GOLDEN_SERVICES.items()},
    "sync": {"service": {}, "sync_deadline": 60, "sync_max_response": 1024},
    "large-body": {"service": {}, "event": b"x" * (EVENT_ENV_MAX_BYTES + 1)},
}


def job_of(kind: str) -> dict[str, Any]:
    options = dict(KINDS[kind])
    service = make(**options.pop("service"))
    event = options.pop("event", EVENT)
    return manifests.job(service, job_id=JOB_ID, event=event, cluster=CLUSTER, **options)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_pod_of_every_job_meets_baseline(kind: str) -> None:
    assert baseline_violations(pod_spec(job_of(kind))) == []


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_init_container_and_the_volumes_meet_restricted(kind: str) -> None:
    spec = pod_spec(job_of(kind))
    assert restricted_violations({**spec, "containers": spec["initContainers"], "initContainers": []}) == []


def test_the_main_container_meets_what_of_restricted_users_images_allow() -> None:
    """Not run-as-non-root nor capabilities dropped (images running as root need both): those are the
    only "restricted" rules it misses."""
    spec = pod_spec(job_of("plain"))
    main = spec["containers"][0]
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert restricted_violations({**spec, "initContainers": []}) == [
        f"{manifests.CONTAINER} may run as root",
        f"{manifests.CONTAINER} does not drop ALL capabilities",
    ]


def test_the_init_container_runs_as_the_manager_images_user() -> None:
    """The user the manager's image declares (Dockerfile ``USER``), whose file the copy reads."""
    init = pod_spec(job_of("plain"))["initContainers"][0]
    uid, _, gid = runtime().last("USER").arguments.partition(":")
    assert (init["securityContext"]["runAsUser"], init["securityContext"]["runAsGroup"]) == (
        int(uid),
        int(gid),
    )


def test_the_checks_catch_what_they_should() -> None:
    spec = pod_spec(job_of("plain"))
    init = spec["initContainers"][0]
    unconfined = {**spec, "securityContext": {"seccompProfile": {"type": "Unconfined"}}}
    assert baseline_violations(unconfined) != []
    escalating = {**init, "securityContext": {**init["securityContext"], "allowPrivilegeEscalation": True}}
    assert restricted_violations({**spec, "containers": [escalating], "initContainers": []}) != []
    as_root = {**init, "securityContext": {**init["securityContext"], "runAsUser": 0}}
    assert restricted_violations({**spec, "containers": [as_root], "initContainers": []}) != []


def test_the_services_namespace_says_what_is_enforced_and_warns_of_nothing_jobs_do() -> None:
    """``baseline`` enforced (and warned of, for a Job whose pods it would refuse), ``restricted`` only
    audited: jobs miss a little of it, and a warning on every Job would say nothing."""
    labels = find("Namespace", settings_from_env().oscar_services_namespace)["metadata"]["labels"]
    security = {key: value for key, value in labels.items() if key.startswith("pod-security.kubernetes.io/")}
    prefix = "pod-security.kubernetes.io/"
    assert {key.removeprefix(prefix): value for key, value in security.items()} == {
        "enforce": "baseline",
        "enforce-version": "v1.37",
        "warn": "baseline",
        "warn-version": "v1.37",
        "audit": "restricted",
        "audit-version": "v1.37",
    }
