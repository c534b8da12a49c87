"""The Kubernetes objects of services and jobs: valid for the official schema, and as upstream builds them
where clients and scripts can tell."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from oscar_manager.backends import manifests
from oscar_manager.domain.service import MinioDefault, Service, normalise_new, parse_service
from tests.support.kubernetes import Invalid, validate

CLUSTER = manifests.ClusterConfig(manager_image="ghcr.io/example/oscar-manager:1.0", ttl_seconds=2_592_000)
JOB_ID = "grayify-0123456789abcdef"
EVENT = b'{"Records": [{"eventSource": "minio:s3", "s3": {"object": {"key": "in%2Fx.jpg"}}}]}'


def make(**fields: Any) -> Service:
    body = {
        "name": "grayify",
        "image": "ghcr.io/grycap/imagemagick",
        "script": '#!/bin/sh\nconvert "$INPUT_FILE_PATH" -type Grayscale "$TMP_OUTPUT_DIR/out.jpg"\n',
        "memory": "1Gi",
        "cpu": "1.0",
        "input": [{"storage_provider": "minio.default", "path": "grayify/input"}],
        "output": [{"storage_provider": "minio.default", "path": "grayify/output"}],
        **fields,
    }
    minio = MinioDefault(endpoint="http://minio:9000", region="us-east-1", verify=True)
    return normalise_new(parse_service(body), owner="cluster_admin", namespace="oscar-svc", minio=minio)


def pod_spec(job: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = job["spec"]["template"]["spec"]
    return spec


def test_a_plain_job_is_valid_and_shaped_as_upstream() -> None:
    service = make(environment={"variables": {"MODE": "gray"}})
    job = manifests.job(service, job_id=JOB_ID, event=EVENT, cluster=CLUSTER)
    validate(job)

    assert job["metadata"]["name"] == JOB_ID
    assert job["metadata"]["namespace"] == "oscar-svc"
    assert job["metadata"]["labels"]["oscar_service"] == "grayify"
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["ttlSecondsAfterFinished"] == 2_592_000
    pod = pod_spec(job)
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["name"] == "oscar-container"
    assert container["image"] == "ghcr.io/grycap/imagemagick"
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["MODE"] == "gray"
    assert env["EVENT"] == EVENT.decode()
    assert env["JOB_UUID"] == JOB_ID
    assert env["OSCAR_SERVICE_NAME"] == "grayify"
    assert container["resources"]["limits"] == {"cpu": "1.0", "memory": "1Gi"}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert set(mounts) == {"/oscar/config", "/oscar/bin", "/var/run/secrets/providers/minio.default"}
    assert "envFrom" not in container
    assert pod["imagePullSecrets"] == []


def test_the_supervisor_comes_from_the_manager_image_into_an_empty_dir() -> None:
    job = manifests.job(make(), job_id=JOB_ID, event=EVENT, cluster=CLUSTER)
    pod = pod_spec(job)
    (init,) = pod["initContainers"]
    assert init["image"] == CLUSTER.manager_image
    assert init["command"] == ["cp", manifests.IMAGE_SUPERVISOR, "/oscar/bin/supervisor"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["oscar-supervisor"] == {"name": "oscar-supervisor", "emptyDir": {}}
    assert "persistentVolumeClaim" not in str(volumes)  # no shared PVC, unlike upstream
    assert pod["containers"][0]["command"] == ["/oscar/bin/supervisor"]


def test_gpu_services_ask_for_one_gpu() -> None:
    job = manifests.job(make(enable_gpu=True), job_id=JOB_ID, event=EVENT, cluster=CLUSTER)
    validate(job)
    limits = pod_spec(job)["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    plain = manifests.job(make(), job_id=JOB_ID, event=EVENT, cluster=CLUSTER)
    assert "nvidia.com/gpu" not in pod_spec(plain)["containers"][0]["resources"]["limits"]


def test_secrets_go_to_a_secret_the_job_takes_its_environment_from() -> None:
    service = make(environment={"secrets": {"API_KEY": "s3cr3t"}})
    secret = manifests.secret(service)
    assert secret is not None
    validate(secret)
    assert secret["stringData"] == {"API_KEY": "s3cr3t"}
    job = manifests.job(service, job_id=JOB_ID, event=EVENT, cluster=CLUSTER)
    validate(job)
    container = pod_spec(job)["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "grayify"}}]
    assert "s3cr3t" not in str(job)  # the value itself is never in the Job
    assert manifests.secret(make()) is None


def test_image_pull_secrets_and_user_labels_and_annotations() -> None:
    service = make(
        image_pull_secrets=["registry-a", "registry-b"],
        labels={"team": "imaging"},
        annotations={"example.org/note": "hello"},
    )
    job = manifests.job(service, job_id=JOB_ID, event=EVENT, cluster=CLUSTER)
    validate(job)
    pod = pod_spec(job)
    assert pod["imagePullSecrets"] == [{"name": "registry-a"}, {"name": "registry-b"}]
    assert job["metadata"]["labels"]["team"] == "imaging"
    assert job["spec"]["template"]["metadata"]["labels"]["team"] == "imaging"
    assert job["spec"]["template"]["metadata"]["annotations"] == {"example.org/note": "hello"}


def test_the_config_map_holds_the_definition_without_script_or_secret_values() -> None:
    service = make(environment={"secrets": {"API_KEY": "s3cr3t"}})
    config = manifests.config_map(service)
    validate(config)
    assert config["data"]["script.sh"] == service.script
    stored = yaml.safe_load(config["data"]["function_config.yaml"])
    assert "script" not in stored
    assert stored["environment"]["secrets"] == {"API_KEY": ""}
    assert stored["input"] == [
        {"storage_provider": "minio.default", "path": "grayify/input", "suffix": [], "prefix": []}
    ]
    # What the supervisor reads back is the same service.
    assert parse_service({**stored, "script": service.script}).name == "grayify"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda job: pod_spec(job).update(restartPolicy="Always"), "spec.template.spec.restartPolicy"),
        (lambda job: pod_spec(job)["containers"][0].update(cpuz="1"), "spec.template.spec.containers.0"),
        (
            lambda job: pod_spec(job)["containers"][0]["resources"]["limits"].update(cpu="lots"),
            "spec.template.spec.containers[0].resources.limits.cpu",
        ),
        (lambda job: job["metadata"].update(name="Bad_Name"), "metadata.name"),
        (lambda job: job["spec"].update(backoffLimit="zero"), "spec.backoffLimit"),
    ],
)
def test_the_validator_refuses_what_the_api_server_would(change: Any, field: str) -> None:
    """The checks above are worth something only if the validator can say no."""
    job = manifests.job(make(), job_id=JOB_ID, event=EVENT, cluster=CLUSTER)
    change(job)
    with pytest.raises(Invalid) as refused:
        validate(job)
    assert refused.value.field == field


# --- golden manifests: the whole Job, reviewed once, compared on every run ----------------------------

GOLDEN = Path(__file__).parent / "golden"
GOLDEN_SERVICES: dict[str, dict[str, Any]] = {
    "plain": {},
    "gpu": {"enable_gpu": True, "memory": "8Gi", "cpu": "4"},
    "secrets": {"environment": {"variables": {"MODE": "gray"}, "secrets": {"API_KEY": "s3cr3t"}}},
    "pull-secrets": {
        "image_pull_secrets": ["registry-creds"],
        "labels": {"team": "imaging"},
        "annotations": {"example.org/owner": "lab-7"},
    },
}


@pytest.mark.parametrize("kind", sorted(GOLDEN_SERVICES))
def test_golden_job_manifest(kind: str) -> None:
    """Any change to a Job the manager sends shows up here as a diff to review; regenerate the files with
    ``OSCAR_UPDATE_GOLDEN=1 pytest tests/unit/test_manifests.py`` once it is the intended one."""
    job = manifests.job(make(**GOLDEN_SERVICES[kind]), job_id=JOB_ID, event=EVENT, cluster=CLUSTER)
    validate(job)
    golden = GOLDEN / f"job-{kind}.yaml"
    if os.environ.get("OSCAR_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(yaml.safe_dump(job, sort_keys=False))
    assert job == yaml.safe_load(golden.read_text())


def test_the_job_of_a_sync_run_frames_its_response_and_has_a_deadline() -> None:
    job = manifests.job(
        make(), job_id="grayify-run-0011223344556677", event=b"aGk=", cluster=CLUSTER, sync_deadline=90
    )
    validate(job)
    assert job["metadata"]["labels"][manifests.SYNC_LABEL] == "true"
    assert pod_spec(job)["containers"][0]["env"][-1] == {"name": "OSCAR_RESPONSE_FRAME", "value": "1"}
    assert job["spec"]["activeDeadlineSeconds"] == 90
    # Collected within the hour should the manager not be there to delete it.
    assert job["spec"]["ttlSecondsAfterFinished"] == manifests.SYNC_TTL_SECONDS


def test_the_job_timeout_is_kept_by_the_supervisor_and_backed_by_the_jobs_deadline() -> None:
    """The supervisor kills the script at the job's time limit, so the pod ends with its log; Kubernetes
    kills the Job a minute later should the supervisor not (its pod, and the log, go with it)."""
    timed = manifests.ClusterConfig(manager_image="m", ttl_seconds=60, job_timeout=3600)
    service = make(environment={"variables": {"OSCAR_JOB_TIMEOUT": "999999"}})
    job = manifests.job(service, job_id=JOB_ID, event=EVENT, cluster=timed)
    assert job["spec"]["activeDeadlineSeconds"] == 3600 + manifests.DEADLINE_BACKSTOP_SECONDS
    env = [item for item in pod_spec(job)["containers"][0]["env"] if item["name"] == "OSCAR_JOB_TIMEOUT"]
    assert env == [{"name": "OSCAR_JOB_TIMEOUT", "value": "3600"}]  # the service cannot lengthen it
    assert manifests.SYNC_LABEL not in job["metadata"]["labels"]
    assert "OSCAR_RESPONSE_FRAME" not in str(pod_spec(job)["containers"][0]["env"])
    assert (
        "activeDeadlineSeconds"
        not in manifests.job(make(), job_id=JOB_ID, event=EVENT, cluster=CLUSTER)["spec"]
    )
