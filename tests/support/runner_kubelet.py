"""A kubelet of the tests' own for the real control plane: the pods bound to its node really run.

kwok plays pods without running anything; the tests that check what a job does (its outputs in the
buckets, a sync run's answer) need the supervisor to run. This node does what a kubelet does for them, as
far as the manager's pods need, against the real apiserver: it registers its Node (Ready, its address and
port), watches the pods the scheduler binds to it, reports them Running, runs them
(``tests.support.kubelet.SupervisorKubelet``: the manager's init container, the volumes from the real
ConfigMaps and Secrets, the container's command in a busybox root under bubblewrap), reports how they
ended (phase, exit code), serves their logs to the apiserver (``pods/log`` is proxied to the node), and
finishes the deletion of pods that are deleted, killing what runs, as a kubelet does.

With ``manual=True`` nothing runs: a pod stays Running until the test ends it with :meth:`finish`, and its
log is what the test says (what a real control plane cannot do on demand: a chosen log, a chosen moment).

Each test has its own node and namespace (``PodNodeSelector`` on the namespace sends its pods here).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from aiohttp import web

from tests.support.kube_pki import KeyPair

_NOW_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stamp() -> str:
    # RFC 3339 with nanoseconds, as the container runtime records each line.
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


@dataclass
class PodLog:
    """What a container wrote, line by line, each with the time the runtime saw it."""

    lines: list[tuple[str, bytes]] = field(default_factory=list)
    _partial: bytes = b""

    def write(self, data: bytes) -> int:
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        self.lines.extend((_stamp(), line + b"\n") for line in complete)
        return len(data)

    def close(self) -> None:
        if self._partial:
            self.lines.append((_stamp(), self._partial))
            self._partial = b""

    def render(self, *, timestamps: bool) -> bytes:
        return b"".join((f"{stamp} ".encode() if timestamps else b"") + line for stamp, line in self.lines)


class _LogWriter(io.RawIOBase):
    """The BinaryIO the pod runner writes to."""

    def __init__(self, log: PodLog) -> None:
        self._log = log

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return self._log.write(bytes(data))


@dataclass
class RunnerKubelet:
    http: httpx.AsyncClient  # the apiserver, as the admin
    node: str
    serving: KeyPair
    runner: Any | None = None  # SupervisorKubelet (None: manual)
    logs: dict[tuple[str, str], PodLog] = field(default_factory=dict)
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _manual_ends: dict[str, asyncio.Future[tuple[int, str, list[str] | None]]] = field(default_factory=dict)
    _server: web.AppRunner | None = None
    _addresses: int = 0  # pod addresses given so far
    _watch: asyncio.Task[None] | None = None
    port: int = 0

    @property
    def manual(self) -> bool:
        return self.runner is None

    # --- life cycle ---------------------------------------------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, **kwargs: Any) -> AsyncIterator[RunnerKubelet]:
        kubelet = cls(**kwargs)
        await kubelet._serve_logs()
        try:
            await kubelet._register()
            kubelet._watch = asyncio.create_task(kubelet._watch_pods(), name=f"kubelet {kubelet.node}")
            yield kubelet
        finally:
            if kubelet._watch is not None:
                kubelet._watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await kubelet._watch
            for task in list(kubelet._tasks.values()):
                task.cancel()
            await asyncio.gather(*kubelet._tasks.values(), return_exceptions=True)
            with contextlib.suppress(httpx.HTTPError):
                await kubelet._forget_pods()
                await kubelet.http.delete(f"/api/v1/nodes/{kubelet.node}")
            assert kubelet._server is not None
            await kubelet._server.cleanup()

    async def _serve_logs(self) -> None:
        app = web.Application()
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self._container_log)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.serving.cert, self.serving.key)
        self._server = web.AppRunner(app, access_log=None)
        await self._server.setup()
        site = web.TCPSite(self._server, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.port = self._server.addresses[0][1]

    async def _register(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node,
                "labels": {"type": self.node, "kubernetes.io/hostname": self.node},
            },
        }
        (await self.http.post("/api/v1/nodes", json=node)).raise_for_status()
        status = {
            "status": {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "the tests' runner kubelet",
                        "lastHeartbeatTime": _now(),
                        "lastTransitionTime": _now(),
                    }
                ],
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
                "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
            }
        }
        answer = await self.http.patch(
            f"/api/v1/nodes/{self.node}/status",
            json=status,
            headers={"Content-Type": "application/strategic-merge-patch+json"},
        )
        answer.raise_for_status()
        # What the node lifecycle controller would do now that the node is Ready (it is off on this plane).
        answer = await self.http.patch(
            f"/api/v1/nodes/{self.node}",
            json={"spec": {"taints": None}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        answer.raise_for_status()

    # --- pods -----------------------------------------------------------------------------------------------

    async def _watch_pods(self) -> None:
        selector = f"spec.nodeName={self.node}"
        version = ""
        while True:
            try:
                if not version:
                    listed = await self.http.get("/api/v1/pods", params={"fieldSelector": selector})
                    listed.raise_for_status()
                    version = listed.json()["metadata"]["resourceVersion"]
                    for pod in listed.json()["items"]:
                        await self._pod_changed(pod)
                params = {"fieldSelector": selector, "watch": "1", "resourceVersion": version}
                async with self.http.stream("GET", "/api/v1/pods", params=params, timeout=None) as stream:
                    async for line in stream.aiter_lines():
                        event = json.loads(line)
                        if event["type"] == "ERROR":
                            version = ""  # 410 Gone: list again
                            break
                        version = event["object"]["metadata"]["resourceVersion"]
                        if event["type"] != "DELETED":
                            await self._pod_changed(event["object"])
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                # The apiserver went away (or cut a line short): watch again from where we were.
                logging.getLogger(__name__).info("kubelet %s: watch lost (%r)", self.node, exc)
                await asyncio.sleep(0.2)

    async def _pod_changed(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        if pod["metadata"].get("deletionTimestamp"):
            task = self._tasks.pop(uid, None)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await self._delete(pod)
            return
        if uid in self._tasks or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return
        self._tasks[uid] = asyncio.create_task(self._run(pod), name=f"pod {pod['metadata']['name']}")

    async def _forget_pods(self) -> None:
        """The node goes away: its pods with it, at once (no kubelet would confirm their deletion later)."""
        listed = await self.http.get("/api/v1/pods", params={"fieldSelector": f"spec.nodeName={self.node}"})
        for pod in listed.json().get("items", []):
            await self._delete(pod)

    async def _delete(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}}
        with contextlib.suppress(httpx.HTTPError):
            await self.http.request(
                "DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", json=body
            )

    async def _set_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        """Report the pod's status, retrying while the apiserver is away (as a kubelet does)."""
        meta = pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        headers = {"Content-Type": "application/strategic-merge-patch+json"}
        async with asyncio.timeout(120):
            while True:
                try:
                    answer = await self.http.patch(path, json={"status": status}, headers=headers)
                except httpx.HTTPError:
                    answer = None
                if answer is not None and (answer.status_code == 404 or answer.is_success):
                    return  # reported, or the pod was deleted meanwhile
                await asyncio.sleep(0.2)

    def _container_statuses(self, pod: dict[str, Any], state: dict[str, Any], *, ready: bool) -> list[Any]:
        return [
            {
                "name": c["name"],
                "image": c["image"],
                "imageID": "",
                "ready": ready,
                "restartCount": 0,
                "state": state,
            }
            for c in pod["spec"]["containers"]
        ]

    async def _run(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        log = self.logs.setdefault((meta["namespace"], meta["name"]), PodLog())
        started = _now()
        running = {"running": {"startedAt": started}}
        # An address of its own, as a CNI plugin gives (nothing listens there): what makes a pod an
        # endpoint of the Services selecting it (the EndpointSlice controller skips pods without one).
        self._addresses += 1
        address = f"10.250.{self._addresses // 250}.{self._addresses % 250 + 1}"
        await self._set_status(
            pod,
            {
                "phase": "Running",
                "startTime": started,
                "hostIP": "127.0.0.1",
                "podIP": address,
                "podIPs": [{"ip": address}],
                "conditions": [
                    {"type": kind, "status": "True", "lastTransitionTime": started}
                    for kind in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
                ],
                "containerStatuses": self._container_statuses(pod, running, ready=True),
            },
        )
        if self.runner is None:
            end: asyncio.Future[tuple[int, str, list[str] | None]] = (
                asyncio.get_running_loop().create_future()
            )
            self._manual_ends[meta["name"]] = end
            code, text, stamps = await end
            lines = text.splitlines(keepends=True)
            log.lines = list(
                zip(stamps or [_stamp()] * len(lines), (line.encode() for line in lines), strict=False)
            )
        else:
            # The runner is told the address it was given (a warm pod's server is reached there).
            pod = {**pod, "status": {**pod.get("status", {}), "podIP": address}}
            probing = asyncio.create_task(self._probe_readiness(pod, address))
            try:
                code = await self.runner(meta["namespace"], pod, _LogWriter(log))
            except Exception as exc:  # a broken pod spec: the container could not start
                log.write(f"{type(exc).__name__}: {exc}\n".encode())
                code = 128
            finally:
                probing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probing
            log.close()
        terminated = {
            "terminated": {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "startedAt": started,
                "finishedAt": _now(),
            }
        }
        await self._set_status(
            pod,
            {
                "phase": "Succeeded" if code == 0 else "Failed",
                "conditions": [
                    {"type": kind, "status": "False", "lastTransitionTime": _now(), "reason": "PodCompleted"}
                    for kind in ("Ready", "ContainersReady")
                ],
                "containerStatuses": self._container_statuses(pod, terminated, ready=False),
            },
        )

    async def _probe_readiness(self, pod: dict[str, Any], address: str) -> None:
        """A container's HTTP readiness probe, as a kubelet runs it: every ``periodSeconds`` a GET, and
        the pod's Ready condition set to whether it answered 2xx. Only where the runner says where the
        container listens (``probe_target``: a warm pod's server, once it is up); until its first
        answer the pod keeps the Ready it started with."""
        container = pod["spec"]["containers"][0]
        probe = (container.get("readinessProbe") or {}).get("httpGet")
        target = getattr(self.runner, "probe_target", None)
        if probe is None or target is None:
            return
        period = container["readinessProbe"].get("periodSeconds", 10)
        ready = True
        while True:
            await asyncio.sleep(period)
            where = target(address)
            if where is None:
                continue
            now = await _http_probe(where[0], where[1], probe["path"])
            if now != ready:
                ready = now
                running = {"running": {"startedAt": pod["status"].get("startTime") or _now()}}
                await self._set_status(
                    pod,
                    {
                        "conditions": [
                            {"type": kind, "status": str(now), "lastTransitionTime": _now()}
                            for kind in ("Ready", "ContainersReady")
                        ],
                        "containerStatuses": self._container_statuses(pod, running, ready=now),
                    },
                )

    async def finish(
        self,
        job_name: str,
        *,
        succeeded: bool,
        log: str = "",
        exit_code: int | None = None,
        stamps: list[str] | None = None,
        within: float = 30,
    ) -> None:
        """End the (manual) pod of ``job_name`` once it runs, with ``log`` (``stamps``: each line's time)."""
        assert self.manual, "finish() is for a manual kubelet"
        code = (0 if succeeded else 1) if exit_code is None else exit_code
        deadline = asyncio.get_running_loop().time() + within
        while asyncio.get_running_loop().time() < deadline:
            for name, end in self._manual_ends.items():
                if name.startswith(f"{job_name}-") and not end.done():
                    end.set_result((code, log, stamps))
                    return
            await asyncio.sleep(0.02)
        # Say where the job's pods are instead, for whoever reads the failure.
        pods = await self.http.get("/api/v1/pods", params={"labelSelector": f"job-name={job_name}"})
        where = [
            (p["metadata"]["name"], p["spec"].get("nodeName"), p["status"].get("phase"))
            for p in pods.json().get("items", [])
        ]
        raise AssertionError(
            f"no pod of {job_name} ran on {self.node} within {within:g} s; its pods: {where}"
        )

    # --- the kubelet's log endpoint -----------------------------------------------------------------------

    async def _container_log(self, request: web.Request) -> web.StreamResponse:
        key = (request.match_info["namespace"], request.match_info["pod"])
        log = self.logs.get(key)
        if log is None:
            return web.Response(status=404, text=f"pod {key[1]} has no log here")
        timestamps = request.query.get("timestamps", "").lower() == "true"
        return web.Response(body=log.render(timestamps=timestamps), content_type="text/plain")


async def _http_probe(host: str, port: int, path: str) -> bool:
    """One GET as a kubelet's httpGet probe: success on 2xx within a second. Its own connection, closed
    in every case (a pod deleted mid-probe cancels it)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        status_line = await asyncio.wait_for(reader.readline(), 1)
        code = status_line.split(b" ")[1:2]
        return bool(code) and code[0].startswith(b"2")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


@dataclass
class ApiObjects:
    """The ConfigMaps and Secrets a pod needs, read from the apiserver as a kubelet reads them: while the
    apiserver is away (refused connections, 5xx, the 403s of its RBAC warming up after a restart) the pod
    waits in ContainerCreating and the kubelet tries again, up to ``patience`` seconds."""

    http: httpx.AsyncClient
    patience: float = 120

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        plural = {"ConfigMap": "configmaps", "Secret": "secrets"}[kind]
        deadline = asyncio.get_running_loop().time() + self.patience
        while True:
            try:
                answer = await self.http.get(f"/api/v1/namespaces/{namespace}/{plural}/{name}")
            except httpx.TransportError:
                answer = None
            if answer is not None and answer.status_code == 404:
                return None
            if answer is not None and answer.status_code not in (403, 429) and answer.status_code < 500:
                answer.raise_for_status()
                found: dict[str, Any] = answer.json()
                return found
            if asyncio.get_running_loop().time() > deadline:
                if answer is None:
                    raise httpx.ConnectError(f"the apiserver stayed away: cannot read {plural}/{name}")
                answer.raise_for_status()
            await asyncio.sleep(0.5)
