"""A kubelet for the Kubernetes API double: the pods of OSCAR Jobs really run, with the real supervisor.

It does for a pod what a kubelet does, as far as the manager's pods need: each volume the main container
mounts is materialised under a per-pod folder (ConfigMap and Secret keys as files, emptyDirs empty), the
container's environment is resolved (values, ``spec.nodeName``, ``secretKeyRef``, ``envFrom`` Secrets), and
the supervisor runs on them with standard output and standard error merged into the pod log, as the
container runtime keeps them. What it does not do: pull the image (the script runs with this machine's
``/bin/sh`` and tools) or run init containers (the supervisor they would copy runs in-process here; the
copied executable is proven on its own in ``test_supervisor_executable``). A volume whose ConfigMap or
Secret is missing fails the pod at once (a real kubelet would keep retrying the mount).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from oscar_manager.backends import manifests
from oscar_manager.supervisor import cli
from tests.support.kube_api import KubeApiDouble


class MountFailed(Exception):
    pass


@dataclass
class SupervisorKubelet:
    api: KubeApiDouble
    root: Path
    node: str = "double-node"

    async def __call__(self, namespace: str, pod: dict[str, Any], log: BinaryIO) -> int:
        container = pod["spec"]["containers"][0]
        if container.get("command") != [f"{manifests.SUPERVISOR_DIR}/supervisor"]:
            log.write(f"exec: {container.get('command')!r}: not the supervisor\n".encode())
            return 127
        pod_root = self.root / pod["metadata"]["name"]
        try:
            self._mount_volumes(namespace, pod, pod_root)
            env = self._environment(namespace, container)
        except MountFailed as exc:
            log.write(f"MountVolume.SetUp failed: {exc}\n".encode())
            return 1
        (pod_root / "tmp").mkdir()
        # The image's own PATH (this machine's tools) and a private temporary folder.
        env.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
        env["TMPDIR"] = str(pod_root / "tmp")
        # One stream: the container runtime interleaves stdout and stderr into the pod log.
        return await cli.run(
            env.get("EVENT", "").encode(),
            env=env,
            stdout=log,
            stderr=log,
            config_file=_inside(pod_root, cli.CONFIG_FILE),
            script_file=_inside(pod_root, cli.SCRIPT_FILE),
            credentials_dir=_inside(pod_root, cli.CREDENTIALS_DIR),
        )

    def _object(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        found = self.api.get(kind, namespace, name)
        if found is None:
            raise MountFailed(f'{kind.lower()} "{name}" not found')
        return found

    def _mount_volumes(self, namespace: str, pod: dict[str, Any], pod_root: Path) -> None:
        volumes = {volume["name"]: volume for volume in pod["spec"].get("volumes", [])}
        for mount in pod["spec"]["containers"][0].get("volumeMounts", []):
            target = _inside(pod_root, PurePosixPath(mount["mountPath"]))
            target.mkdir(parents=True)
            volume = volumes[mount["name"]]
            if "configMap" in volume:
                data = self._object("ConfigMap", namespace, volume["configMap"]["name"]).get("data", {})
                for key, text in data.items():
                    (target / key).write_text(text)
            elif "secret" in volume:
                secret = self._object("Secret", namespace, volume["secret"]["secretName"])
                for key, encoded in secret.get("data", {}).items():
                    (target / key).write_bytes(base64.b64decode(encoded))

    def _secret_values(self, namespace: str, name: str) -> dict[str, str]:
        data = self._object("Secret", namespace, name).get("data", {})
        return {key: base64.b64decode(value).decode() for key, value in data.items()}

    def _environment(self, namespace: str, container: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            env.update(self._secret_values(namespace, source["secretRef"]["name"]))
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
                continue
            reference = item["valueFrom"]
            if reference.get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
                env[item["name"]] = self.node
            elif "secretKeyRef" in reference:
                key_ref = reference["secretKeyRef"]
                env[item["name"]] = self._secret_values(namespace, key_ref["name"])[key_ref["key"]]
            else:
                raise MountFailed(f"unsupported valueFrom {reference!r}")
        return env


def _inside(root: Path, path: PurePosixPath | Path) -> Path:
    return root / PurePosixPath(path).relative_to("/")
