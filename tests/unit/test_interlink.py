"""A service offloaded through interLink (``interlink_node_name``): its Jobs go to the virtual node as
upstream sends them there, its body travels base64-encoded in ``EVENT``, and the name is checked."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from oscar_manager.backends import exposed_manifests, interlink, manifests, warm_manifests
from oscar_manager.errors import BadRequest, OscarError
from oscar_manager.supervisor import cli, event_env
from oscar_manager.supervisor.stage import EVENT_ENV_MAX_BYTES
from tests.support.kubernetes import validate
from tests.unit.test_manifests import CLUSTER, EVENT, JOB_ID, make, pod_spec

NODE = "vega-new-vk"
# As upstream's example (examples/thermal-detector-interlink): what the remote side reads is annotations.
SLURM = {"slurm-job.vk.io/flags": "--job-name=thermal --time=02:30:00 --nodes=1"}
GOLDEN = Path(__file__).parent / "golden" / "job-interlink.yaml"


def environment(job: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in pod_spec(job)["containers"][0]["env"]}


def test_an_offloaded_job_is_placed_on_its_node_as_upstream_places_it() -> None:
    job = manifests.job(make(interlink_node_name=NODE), job_id=JOB_ID, event=EVENT, cluster=CLUSTER)
    validate(job)
    pod = pod_spec(job)
    assert pod["nodeSelector"] == {"kubernetes.io/hostname": NODE}
    assert pod["tolerations"] == [{"key": "virtual-node.interlink/no-schedule", "operator": "Exists"}]
    assert pod["dnsPolicy"] == "ClusterFirst"
    # Upstream's own value after its job handler overrides the interLink one: no restarts, logs kept.
    assert pod["restartPolicy"] == "Never"


def test_a_service_without_a_node_is_placed_by_the_scheduler_alone() -> None:
    pod = pod_spec(manifests.job(make(), job_id=JOB_ID, event=EVENT, cluster=CLUSTER))
    assert not {"nodeSelector", "tolerations", "dnsPolicy"} & set(pod)


def test_the_supervisor_arrives_without_a_volume_of_the_nodes_host() -> None:
    """What the virtual node cannot give (a host path, a shared PVC) the pod does not ask for."""
    pod = pod_spec(manifests.job(make(interlink_node_name=NODE), job_id=JOB_ID, event=EVENT, cluster=CLUSTER))
    kinds = {key for volume in pod["volumes"] for key in volume if key != "name"}
    assert kinds == {"configMap", "emptyDir", "secret"}
    (init,) = pod["initContainers"]
    assert init["command"] == ["cp", manifests.IMAGE_SUPERVISOR, "/oscar/bin/supervisor"]


def test_the_jobs_of_sync_runs_are_offloaded_too() -> None:
    service = make(interlink_node_name=NODE)
    job = manifests.job(service, job_id="grayify-run-0011", event=b"aGk=", cluster=CLUSTER, sync_deadline=90)
    validate(job)
    assert pod_spec(job)["nodeSelector"] == {"kubernetes.io/hostname": NODE}


def test_the_annotations_the_remote_side_reads_are_on_the_job_and_its_pod() -> None:
    job = manifests.job(
        make(interlink_node_name=NODE, annotations=SLURM), job_id=JOB_ID, event=EVENT, cluster=CLUSTER
    )
    assert job["metadata"]["annotations"] == SLURM
    assert job["spec"]["template"]["metadata"]["annotations"] == SLURM


@pytest.mark.parametrize(
    "body",
    [
        EVENT,
        b"quotes ' \" $HOME `id` and\nnewlines\n",
        bytes(range(256)),  # not text: could not travel in EVENT as it is
        b"",
    ],
)
def test_the_body_travels_base64_encoded_and_the_supervisor_reads_it_back(body: bytes) -> None:
    job = manifests.job(make(interlink_node_name=NODE), job_id=JOB_ID, event=body, cluster=CLUSTER)
    assert manifests.body_inline(make(interlink_node_name=NODE), body)
    env = environment(job)
    assert env[event_env.ENCODING_ENV] == "base64"
    assert set(env["EVENT"]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
    assert cli.read_event(b"", env) == body


def test_a_body_whose_base64_is_too_large_for_the_environment_goes_in_parts() -> None:
    """64 KiB of text would travel as it is on an ordinary node; base64 makes it a third larger."""
    body = b"x" * EVENT_ENV_MAX_BYTES
    plain, offloaded = make(), make(interlink_node_name=NODE)
    assert manifests.body_inline(plain, body)
    assert not manifests.body_inline(offloaded, body)
    env = environment(manifests.job(offloaded, job_id=JOB_ID, event=body, cluster=CLUSTER))
    assert "EVENT" not in env
    assert event_env.ENCODING_ENV not in env
    assert env["OSCAR_EVENT_PARTS"] == "1"
    largest = EVENT_ENV_MAX_BYTES // 4 * 3  # 48 KiB: its base64 is the 64 KiB the environment takes
    assert manifests.body_inline(offloaded, b"x" * largest)
    assert not manifests.body_inline(offloaded, b"x" * (largest + 1))


def test_a_service_cannot_set_the_encoding_itself() -> None:
    """Its variables would make the supervisor decode a plain ``EVENT`` as base64."""
    service = make(environment={"variables": {event_env.ENCODING_ENV: "base64"}})
    env = environment(manifests.job(service, job_id=JOB_ID, event=EVENT, cluster=CLUSTER))
    assert event_env.ENCODING_ENV not in env
    assert cli.read_event(b"", env) == EVENT


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"EVENT": "not base64!", event_env.ENCODING_ENV: "base64"}, "not base64"),
        ({"EVENT": "aGk=", event_env.ENCODING_ENV: "rot13"}, "rot13"),
    ],
)
def test_an_event_the_supervisor_cannot_decode_is_an_error_naming_why(env: dict[str, str], says: str) -> None:
    with pytest.raises(OscarError, match=says):
        cli.read_event(b"", env)


def test_an_offloaded_service_gets_no_warm_pods() -> None:
    """Upstream makes no Knative service for it; its sync runs are Jobs on the virtual node."""
    assert warm_manifests.is_warm(make(synchronous={"min_scale": 2}))
    assert not warm_manifests.is_warm(make(synchronous={"min_scale": 2}, interlink_node_name=NODE))


def test_an_exposed_services_pods_stay_in_the_cluster() -> None:
    """As upstream's: they serve HTTP, which a remote batch system does not."""
    service = make(interlink_node_name=NODE, expose={"api_port": [8080]})
    deployment = exposed_manifests.deployment(service, cluster=CLUSTER, replicas=1)
    assert not {"nodeSelector", "tolerations"} & set(deployment["spec"]["template"]["spec"])


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("vega new vk", "invalid value 'vega new vk'"),
        ("-vk", "invalid value '-vk'"),
        ("vk/node", "invalid value 'vk/node'"),
        ("v" * 64, "64 characters long, over 63"),
    ],
)
def test_a_node_name_no_node_selector_could_hold_is_refused(name: str, says: str) -> None:
    with pytest.raises(BadRequest, match=f"interlink_node_name: .*{says}"):
        make(interlink_node_name=name)


def test_the_node_name_is_kept_as_given() -> None:
    assert make(interlink_node_name="Vega_New.vk-1").interlink_node_name == "Vega_New.vk-1"
    assert not interlink.offloaded(make())


def test_golden_offloaded_job_manifest() -> None:
    """The whole Job, reviewed once (``OSCAR_UPDATE_GOLDEN=1`` regenerates it, as in test_manifests)."""
    service = make(interlink_node_name=NODE, annotations=SLURM)
    job = manifests.job(service, job_id=JOB_ID, event=EVENT, cluster=CLUSTER)
    validate(job)
    if os.environ.get("OSCAR_UPDATE_GOLDEN"):
        GOLDEN.write_text(yaml.safe_dump(job, sort_keys=False))
    assert job == yaml.safe_load(GOLDEN.read_text())
