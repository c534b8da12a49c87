"""kwok's configuration for the tests' control plane: how its nodes come up, and how their pods run.

kwok runs no container: Stages move a pod along. Here a pod on a kwok node starts (Ready, its init
containers done) unless labelled ``oscar-test-outcome: pending``; then it completes with exit code 0,
unless labelled ``fail`` (exit code 1) or ``run`` (it stays Running). A service's labels are on its Jobs'
pods, so a test chooses the outcome with the service's labels. Every pod's log is one file in CRI format,
served by kwok and proxied by the apiserver (``pods/log``).
"""

from __future__ import annotations

from typing import Any

import yaml

OUTCOME_LABEL = "oscar-test-outcome"
KWOK_NODE_LABEL = "oscar-test/kubelet"
_OUTCOME = f'.metadata.labels["{OUTCOME_LABEL}"]'


def _stage(name: str, kind: str, selector: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": kind},
            "selector": {"matchExpressions": selector},
            "next": {"statusTemplate": status},
        },
    }


def _alive(phase: str) -> list[dict[str, Any]]:
    return [
        {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
        {"key": ".status.phase", "operator": "In", "values": [phase]},
    ]


_NODE_READY = """
{{ $now := Now }}
conditions:
{{ range NodeConditions }}
- lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $now | Quote }}
  message: {{ .message | Quote }}
  reason: {{ .reason | Quote }}
  status: {{ .status | Quote }}
  type: {{ .type | Quote }}
{{ end }}
addresses:
- {address: {{ NodeIP | Quote }}, type: InternalIP}
- {address: {{ NodeName | Quote }}, type: Hostname}
daemonEndpoints:
  kubeletEndpoint:
    Port: {{ NodePort }}
allocatable: {cpu: "32", memory: 128Gi, pods: "1000"}
capacity: {cpu: "32", memory: 128Gi, pods: "1000"}
nodeInfo: {architecture: amd64, operatingSystem: linux, kubeletVersion: kwok, containerRuntimeVersion: kwok}
phase: Running
"""

_POD_RUNNING = """
{{ $now := Now }}
conditions:
- {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Initialized}
- {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Ready}
- {lastTransitionTime: {{ $now | Quote }}, status: "True", type: ContainersReady}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  started: true
  state: {running: {startedAt: {{ $now | Quote }}}}
{{ end }}
initContainerStatuses:
{{ range .spec.initContainers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  state:
    terminated:
      exitCode: 0
      reason: Completed
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
phase: Running
startTime: {{ $now | Quote }}
"""


def _pod_ended(phase: str, exit_code: int, reason: str) -> str:
    return f"""
{{{{ $now := Now }}}}
containerStatuses:
{{{{ range .spec.containers }}}}
- image: {{{{ .image | Quote }}}}
  name: {{{{ .name | Quote }}}}
  ready: false
  restartCount: 0
  started: false
  state:
    terminated:
      exitCode: {exit_code}
      reason: {reason}
      startedAt: {{{{ $now | Quote }}}}
      finishedAt: {{{{ $now | Quote }}}}
{{{{ end }}}}
phase: {phase}
"""


def stages() -> list[dict[str, Any]]:
    pending = {"key": _OUTCOME, "operator": "NotIn", "values": ["pending"]}
    keeps_running = {"key": _OUTCOME, "operator": "NotIn", "values": ["fail", "run"]}
    fails = {"key": _OUTCOME, "operator": "In", "values": ["fail"]}
    node_not_ready = {
        "key": '.status.conditions.[] | select( .type == "Ready" ) | .status',
        "operator": "NotIn",
        "values": ["True"],
    }
    return [
        _stage("node-initialize", "Node", [node_not_ready], _NODE_READY),
        _stage("pod-ready", "Pod", [*_alive("Pending"), pending], _POD_RUNNING),
        _stage(
            "pod-complete",
            "Pod",
            [*_alive("Running"), keeps_running],
            _pod_ended("Succeeded", 0, "Completed"),
        ),
        _stage("pod-fail", "Pod", [*_alive("Running"), fails], _pod_ended("Failed", 1, "Error")),
        {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Stage",
            "metadata": {"name": "pod-delete"},
            "spec": {
                "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
                "selector": {
                    "matchExpressions": [{"key": ".metadata.deletionTimestamp", "operator": "Exists"}]
                },
                "next": {"delete": True},
            },
        },
    ]


def configuration(*, node_port: int, logs_file: str) -> str:
    """The document kwok's ``--config`` reads: its options, the Stages, and one ClusterLogs for every pod."""
    options = {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokConfiguration",
        "options": {
            # Without these kwok refuses to start ("playStageParallelism must be greater than 0").
            "podPlayStageParallelism": 8,
            "nodePlayStageParallelism": 2,
            "nodeLeaseParallelism": 2,
            "nodePort": node_port,
            "cidr": "10.244.0.0/16",
            "nodeIP": "127.0.0.1",
            "manageAllNodes": False,
            "manageNodesWithLabelSelector": f"{KWOK_NODE_LABEL}=kwok",
            # The kubelet's /containerLogs (what the apiserver's pods/log proxies to) is one of these.
            "enableDebuggingHandlers": True,
        },
    }
    logs = {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "ClusterLogs",
        "metadata": {"name": "every-pod"},
        "spec": {"logs": [{"logsFile": logs_file, "follow": False}]},
    }
    return yaml.safe_dump_all([options, *stages(), logs], sort_keys=False)
