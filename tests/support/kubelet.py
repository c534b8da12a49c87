"""How the tests' runner kubelet (``tests.support.runner_kubelet``) runs a pod of an OSCAR Job for real.

It does for a pod what a kubelet does, as far as the manager's pods need: each volume the main container
mounts is materialised (ConfigMap and Secret keys as files, emptyDirs empty), the container's environment
is resolved (values, ``spec.nodeName``, ``secretKeyRef``, ``envFrom`` Secrets), and standard output and
standard error are merged into the pod log, as the container runtime keeps them. Projected volumes of
Secrets are mounted too. A volume whose ConfigMap or Secret is missing is waited for, as a real kubelet
retries the mount (for ``mount_timeout`` seconds here, then the pod fails). The ConfigMaps and Secrets are
read from the apiserver (``Objects``). A container whose environment
the kernel refuses (a string over 128 KiB) fails to start, as ``runc`` reports it.

With an ``image`` the pod runs as on a node: its "image" is a root file system holding nothing but a static
busybox, the init containers run (the manager's copies the self-contained supervisor executable into the
``emptyDir``), the volumes are mounted at their paths, and the container's command runs in that root under
bubblewrap with only the pod's environment. Without one, the supervisor runs in this process on the
mounted files (quicker; the image is then this machine's ``/bin/sh`` and tools), and so does a warm pod's
server (``supervisor serve``), on a loopback port of its own that :meth:`SupervisorKubelet.resolve` gives.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Protocol

from oscar_manager.backends import manifests
from oscar_manager.errors import OscarError
from oscar_manager.supervisor import cli, serve
from tests.support.supervisor import BusyboxRoot


class PodFailed(Exception):
    pass


class Objects(Protocol):
    """Where the kubelet reads the ConfigMaps and Secrets a pod needs (None: there is no such object)."""

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class BusyboxImage:
    """Every pod's image: a static busybox; and what the manager's own image holds (the supervisor)."""

    busybox: Path
    supervisor: Path  # the executable at manifests.IMAGE_SUPERVISOR in the manager's image
    bwrap: str


@dataclass
class SupervisorKubelet:
    api: Objects
    root: Path
    node: str = "double-node"
    image: BusyboxImage | None = None
    mount_timeout: float = 30.0
    # Warm pods' servers (in-process only), by the pod's address: the port each listens on, and itself.
    serve_ports: dict[str, int] = field(default_factory=dict)
    warm_servers: dict[str, serve.WarmServer] = field(default_factory=dict)

    async def __call__(self, namespace: str, pod: dict[str, Any], log: BinaryIO) -> int:
        container = pod["spec"]["containers"][0]
        pod_dir = self.root / pod["metadata"]["name"]
        try:
            await self._volumes_ready(namespace, pod)
            env = await self._environment(namespace, container)
            if self.image is not None:
                return await self._run_in_image(namespace, pod, env, pod_dir, log)
            return await self._run_in_process(namespace, pod, env, pod_dir, log)
        except PodFailed as exc:
            log.write(f"{exc}\n".encode())
            return 1

    async def _run_in_process(
        self, namespace: str, pod: dict[str, Any], env: dict[str, str], pod_dir: Path, log: BinaryIO
    ) -> int:
        if pod["spec"]["containers"][0].get("command") != [f"{manifests.SUPERVISOR_DIR}/supervisor"]:
            raise PodFailed("exec: the command is not the supervisor")
        await self._mount_volumes(namespace, pod, pod_dir)
        (pod_dir / "tmp").mkdir()
        # The image's own PATH (this machine's tools) and a private temporary folder.
        env.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
        env["TMPDIR"] = str(pod_dir / "tmp")
        if pod["spec"]["containers"][0].get("args") == ["serve"]:
            return await self._serve_in_process(pod, env, pod_dir, log)
        try:
            event = cli.read_event(b"", env, body_dir=_inside(pod_dir, cli.BODY_DIR))
        except OscarError as exc:
            raise PodFailed(f"supervisor: {type(exc).__name__}: {exc.message}") from None
        return await cli.run(
            event,
            env=env,
            stdout=log,
            stderr=log,
            config_file=_inside(pod_dir, cli.CONFIG_FILE),
            script_file=_inside(pod_dir, cli.SCRIPT_FILE),
            credentials_dir=_inside(pod_dir, cli.CREDENTIALS_DIR),
        )

    async def _serve_in_process(
        self, pod: dict[str, Any], env: dict[str, str], pod_dir: Path, log: BinaryIO
    ) -> int:
        """A warm pod (``supervisor serve``): its server, until the pod is deleted, on a loopback port of its
        own (pods share this machine's network here), recorded in :attr:`serve_ports` by the pod's address
        for the manager's ``resolve`` hook (:meth:`resolve`)."""
        server = serve.WarmServer(
            env=env,
            config_file=_inside(pod_dir, cli.CONFIG_FILE),
            script_file=_inside(pod_dir, cli.SCRIPT_FILE),
            credentials_dir=_inside(pod_dir, cli.CREDENTIALS_DIR),
            live=log,
        )
        address = pod["status"]["podIP"]
        self.warm_servers[address] = server

        def listening(port: int) -> None:
            self.serve_ports[address] = port

        try:
            await serve.serve(server, port=0, host="127.0.0.1", listening=listening)
        finally:
            self.serve_ports.pop(address, None)
            self.warm_servers.pop(address, None)
        return 0

    def probe_target(self, address: str) -> tuple[str, int] | None:
        """Where the runner kubelet probes a warm pod's readiness (None: its server is not up yet)."""
        port = self.serve_ports.get(address)
        return None if port is None else ("127.0.0.1", port)

    def resolve(self, address: str, port: int) -> tuple[str, int]:
        """Where a warm pod's server listens here (a pod without one: a port nothing listens on)."""
        return "127.0.0.1", self.serve_ports.get(address, 9)

    async def _run_in_image(
        self, namespace: str, pod: dict[str, Any], env: dict[str, str], pod_dir: Path, log: BinaryIO
    ) -> int:
        assert self.image is not None
        root = BusyboxRoot.create(pod_dir, busybox=self.image.busybox, bwrap=self.image.bwrap)
        await self._mount_volumes(namespace, pod, root.path)
        for init in pod["spec"].get("initContainers", []):
            self._run_manager_init_container(init, root)
        command = pod["spec"]["containers"][0]["command"]
        try:
            process = await asyncio.create_subprocess_exec(
                *root.command(*command),
                env={"PATH": "/bin", **env},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as exc:
            if exc.errno != errno.E2BIG:
                raise
            # The container's process is exec'd with the pod's environment: the kernel refuses it.
            raise PodFailed(
                f"StartError: failed to create containerd task: exec: {command[0]!r}: argument list too long"
            ) from None
        assert process.stdout is not None
        try:
            while chunk := await process.stdout.read(65536):
                log.write(chunk)
            return await process.wait()
        except BaseException:  # killed at its deadline: so is the container
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise

    def _run_manager_init_container(self, init: dict[str, Any], root: BusyboxRoot) -> None:
        """The only init container the manager adds: ``cp <image supervisor> <emptyDir>/supervisor``, run
        from the manager's image (which this double knows holds ``image.supervisor`` at that path)."""
        assert self.image is not None
        command = init.get("command") or []
        if len(command) != 3 or command[:2] != ["cp", manifests.IMAGE_SUPERVISOR]:
            raise PodFailed(f"init container {init['name']}: unexpected command {command!r}")
        mounts = [mount["mountPath"] for mount in init.get("volumeMounts", [])]
        if not any(PurePosixPath(command[2]).parent == PurePosixPath(path) for path in mounts):
            raise PodFailed(f"init container {init['name']}: {command[2]} is on no volume it mounts")
        target = root.host_path(command[2])
        shutil.copyfile(self.image.supervisor, target)
        target.chmod(0o755)

    async def _object(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        found = await self.api.get(kind, namespace, name)
        if found is None:
            raise PodFailed(f'MountVolume.SetUp failed: {kind.lower()} "{name}" not found')
        return found

    def _volume_objects(self, pod: dict[str, Any]) -> list[tuple[str, str]]:
        """(kind, name) of every ConfigMap and Secret the main container's volumes need."""
        volumes = {volume["name"]: volume for volume in pod["spec"].get("volumes", [])}
        needed: list[tuple[str, str]] = []
        for mount in pod["spec"]["containers"][0].get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "configMap" in volume:
                needed.append(("ConfigMap", volume["configMap"]["name"]))
            elif "secret" in volume:
                needed.append(("Secret", volume["secret"]["secretName"]))
            for source in volume.get("projected", {}).get("sources", []):
                needed.append(("Secret", source["secret"]["name"]))
        return needed

    async def _volumes_ready(self, namespace: str, pod: dict[str, Any]) -> None:
        """Wait until every object the volumes need exists, as the kubelet retries a failed mount."""
        deadline = time.monotonic() + self.mount_timeout
        for kind, name in self._volume_objects(pod):
            while await self.api.get(kind, namespace, name) is None:
                if time.monotonic() > deadline:
                    raise PodFailed(f'MountVolume.SetUp failed: {kind.lower()} "{name}" not found')
                await asyncio.sleep(0.02)

    async def _mount_volumes(self, namespace: str, pod: dict[str, Any], base: Path) -> None:
        volumes = {volume["name"]: volume for volume in pod["spec"].get("volumes", [])}
        for mount in pod["spec"]["containers"][0].get("volumeMounts", []):
            target = _inside(base, PurePosixPath(mount["mountPath"]))
            target.mkdir(parents=True, exist_ok=True)
            volume = volumes[mount["name"]]
            if "configMap" in volume:
                config_map = await self._object("ConfigMap", namespace, volume["configMap"]["name"])
                data = config_map.get("data", {})
                for key, text in data.items():
                    (target / key).write_text(text)
            elif "secret" in volume:
                secret = await self._object("Secret", namespace, volume["secret"]["secretName"])
                for key, encoded in secret.get("data", {}).items():
                    (target / key).write_bytes(base64.b64decode(encoded))
            for source in volume.get("projected", {}).get("sources", []):
                data = (await self._object("Secret", namespace, source["secret"]["name"])).get("data", {})
                for item in source["secret"].get("items") or [{"key": key, "path": key} for key in data]:
                    (target / item["path"]).write_bytes(base64.b64decode(data[item["key"]]))

    async def _secret_values(self, namespace: str, name: str) -> dict[str, str]:
        data = (await self._object("Secret", namespace, name)).get("data", {})
        return {key: base64.b64decode(value).decode() for key, value in data.items()}

    async def _environment(self, namespace: str, container: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            env.update(await self._secret_values(namespace, source["secretRef"]["name"]))
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
                continue
            reference = item["valueFrom"]
            if reference.get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
                env[item["name"]] = self.node
            elif "secretKeyRef" in reference:
                key_ref = reference["secretKeyRef"]
                values = await self._secret_values(namespace, key_ref["name"])
                env[item["name"]] = values[key_ref["key"]]
            else:
                raise PodFailed(f"CreateContainerConfigError: unsupported valueFrom {reference!r}")
        return env


def _inside(root: Path, path: PurePosixPath | Path) -> Path:
    return root / PurePosixPath(path).relative_to("/")
