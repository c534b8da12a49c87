"""An in-process double of the Kubernetes API server, over real HTTP, for kubernetes-asyncio to talk to.

It keeps ConfigMaps, Secrets, Jobs and Pods per namespace and validates every body it is sent against the
official schema (``tests.support.kubernetes.validate``), answering as the API server does: ``Status``
objects with 201/200, 404 NotFound, 409 AlreadyExists and 422 Invalid (naming the field); a create with
``dryRun=All`` is validated and answered, not stored. A created Job gets a Pod at once, Pending (counted in
the Job's ``status.active``), which then runs (``status.ready``) unless the test holds it with
``hold_pods`` (a pod waiting for a node, or for its image) until :meth:`KubeApiDouble.run_pod`; the test
decides how it ends with :meth:`KubeApiDouble.finish_pod`. Watches of Jobs
stream ADDED/MODIFIED/DELETED events (newline-delimited JSON) from a resourceVersion; a resourceVersion
older than the kept history answers 410 Gone, as a compacted etcd would.

Covered: ``/api/v1/namespaces/{ns}/{configmaps,secrets,pods}``, ``/apis/batch/v1/namespaces/{ns}/jobs``,
``.../pods/{name}/log``; labelSelector of the form ``k[=v]``/``!k`` (comma-separated), fieldSelector on the
name. ``delay`` adds latency to every answer; ``fail_next`` injects errors into chosen requests.

What it is for now that the tests have a real control plane (``tests.support.controlplane``): what a real
apiserver cannot be made to answer on demand (a 503 to one chosen request, a 422 the manager's own checks
would prevent, a metrics API), and benchmarks that want the apiserver's cost out of the figures.

Sizes are limited as on a real cluster: a request body over 3 MiB is 413 (the API server's
``maxRequestBodyBytes``), an object over 1.5 MiB as stored is 500 "etcdserver: request is too large"
(etcd's ``--max-request-bytes``), a Secret with over 1 MiB of data 422. The garbage collector is modelled
for ``ownerReferences``: deleting an object deletes its dependents, and an object created with an owner
that does not exist is deleted at once.

``python -m tests.support.kube_api`` serves it in a process of its own (benchmarks: a real API server does
not share the manager's CPU) and prints its port; ``GET /_double/created`` then answers the loop time
(``time.monotonic``, comparable across processes) at which each Job was created.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import copy
import gc
import json
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from oscar_manager.settings import Settings
from tests.support.kubernetes import Invalid, validate

KINDS = {
    ("", "configmaps"): "ConfigMap",
    ("", "secrets"): "Secret",
    ("", "pods"): "Pod",
    ("batch", "jobs"): "Job",
}


# The API server's limit on a request body, and etcd's on a stored object (their defaults).
MAX_REQUEST_BYTES = 3 * 1024 * 1024
MAX_STORED_BYTES = 1536 * 1024


def _stored_size(obj: dict[str, Any]) -> int:
    """About what etcd stores: the object, with a Secret's data as bytes rather than base64 (protobuf)."""
    data = obj.get("data") if obj.get("kind") == "Secret" else None
    if not data:
        return len(json.dumps(obj))
    raw = sum(len(base64.b64decode(value)) for value in data.values())
    return len(json.dumps({**obj, "data": dict.fromkeys(data, "")})) + raw


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _node(name: str, *, cpu: str = "4", memory: str = "8Gi", ready: str = "True") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
            "conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": ready},
            ],
        },
    }


def status(code: int, reason: str, message: str, **details: Any) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure" if code >= 400 else "Success",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    }
    return web.json_response(body, status=code)


def _selected(obj: dict[str, Any], selector: str, fields: str = "") -> bool:
    """Label terms: ``k=v`` must match, a bare ``k`` means the label exists, ``!k`` that it does not.
    Field terms: ``metadata.name=x`` and ``metadata.namespace=x`` (what the manager uses)."""
    labels = obj["metadata"].get("labels") or {}
    for term in filter(None, selector.split(",")):
        if term.startswith("!"):
            if term[1:] in labels:
                return False
            continue
        key, equals, value = term.partition("=")
        if key not in labels or (equals and labels[key] != value):
            return False
    for term in filter(None, fields.split(",")):
        path, _, value = term.partition("=")
        if path not in ("metadata.name", "metadata.namespace"):
            raise ValueError(f"field selector {path!r} is not supported by the double")
        if obj["metadata"].get(path.removeprefix("metadata.")) != value:
            return False
    return True


@dataclass
class KubeApiDouble:
    delay: float = 0.0
    # Schema validation costs ~15 ms of CPU per body: benchmarks turn it off (tests never do).
    validate_bodies: bool = True
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)  # (kind, ns, name)
    logs: dict[tuple[str, str], str] = field(default_factory=dict)  # (ns, pod) -> log
    # (ns, pod) -> the kubelet's time of each line of its log (``?timestamps=true``)
    log_stamps: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path[?dryRun=All])
    refused: list[str] = field(default_factory=list)  # validation messages, for assertions
    # (rv, type, the Job's namespace, name and labels then): the Job events a watch replays, filtered on
    # those; ``_lines`` has them serialised whole.
    history: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    max_history: int = 1000
    # (method, path fragment, HTTP status): the next matching request gets that status, once each.
    fail_next: list[tuple[str, str, int]] = field(default_factory=list)
    created_at: dict[str, float] = field(default_factory=dict)  # Job name -> loop time it was created
    # Job name -> its pods' keys: finding a Job's pods by scanning every object made each create cost
    # in proportion to all the Jobs so far (the benchmarks' bottleneck past a few thousand).
    _job_pods: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)
    # Set: the pods of Jobs created from now on stay Pending until ``run_pod``.
    hold_pods: bool = False
    # The cluster's nodes (served at /api/v1/nodes) and their usage as metrics-server reports it; None:
    # no metrics API.
    nodes: list[dict[str, Any]] = field(default_factory=lambda: [_node("node-1")])
    node_usage: dict[str, dict[str, str]] | None = field(
        default_factory=lambda: {"node-1": {"cpu": "250m", "memory": "1Gi"}}
    )
    # Cleared: watch requests are answered 503 (an API server restarting). See also ``break_watches``.
    watches_open: asyncio.Event = field(default_factory=asyncio.Event)
    _watch_generation: int = 0
    _compacted_at: int = 0  # watches resuming from before this resourceVersion get 410 Gone
    listed: list[str] = field(default_factory=list)  # kinds listed (not watched), for assertions
    _version: int = 1
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _lines: list[bytes] = field(default_factory=list)  # history[i] as one watch line

    def __post_init__(self) -> None:
        self.watches_open.set()

    def app(self) -> web.Application:
        # aiohttp's own body limit (1 MiB by default) would answer first: the double applies the API server's.
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        for group_path in ("/api/v1", "/apis/batch/v1"):
            base = group_path + "/namespaces/{ns}/{plural}"
            app.router.add_post(base, self._create)
            app.router.add_get(base, self._list)
            app.router.add_delete(base, self._delete_collection)
            app.router.add_get(base + "/{name}", self._read)
            app.router.add_put(base + "/{name}", self._replace)
            app.router.add_delete(base + "/{name}", self._delete)
        app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}/log", self._log)
        app.router.add_get("/api/v1/nodes", self._nodes)
        app.router.add_get("/apis/metrics.k8s.io/v1beta1/nodes", self._node_metrics)
        app.router.add_get("/_double/created", self._created)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        # A dry run's path says so: it is no create (tests count creates by their path).
        dry_run = "?dryRun=All" if "dryRun" in request.query else ""
        self.requests.append((request.method, request.path + dry_run))
        if self.delay:
            await asyncio.sleep(self.delay)
        for index, (method, fragment, code) in enumerate(self.fail_next):
            if request.method == method and fragment in request.path:
                del self.fail_next[index]
                if code == 422:
                    cause = {"reason": "FieldValueInvalid", "message": "injected", "field": "metadata.labels"}
                    return status(code, "Invalid", "injected: metadata.labels: Invalid value", causes=[cause])
                return status(code, "InternalError" if code >= 500 else "Forbidden", f"injected {code}")
        if (request.content_length or 0) > MAX_REQUEST_BYTES:
            return status(
                413, "RequestEntityTooLarge", f"Request entity too large: limit is {MAX_REQUEST_BYTES}"
            )
        if request.query.get("watch") and not self.watches_open.is_set():
            return status(503, "ServiceUnavailable", "watches are held by the test")
        response: web.StreamResponse = await handler(request)
        return response

    # --- helpers for tests ---------------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind, namespace, name))

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for (k, _ns, _name), obj in self.objects.items() if k == kind]

    async def finish_pod(
        self,
        namespace: str,
        job_name: str,
        *,
        succeeded: bool,
        log: str = "",
        exit_code: int | None = None,
        reason: str = "",
        stamps: list[str] | None = None,
    ) -> None:
        """End the job's pod (and the job) the way the kubelet and the Job controller would. ``stamps``:
        the time of each line of ``log`` as the kubelet would have recorded it (default: now, for all)."""
        pods = self._pods_of(job_name)
        code = (0 if succeeded else 1) if exit_code is None else exit_code
        for pod in pods:
            terminated = {"exitCode": code, "reason": "Completed" if succeeded else "Error"}
            pod["status"] = {
                "phase": "Succeeded" if succeeded else "Failed",
                "startTime": _now(),
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container["image"],
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"terminated": terminated},
                    }
                    for container in pod["spec"]["containers"]
                ],
            }
            self.logs[(namespace, pod["metadata"]["name"])] = log
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
            self.log_stamps[(namespace, pod["metadata"]["name"])] = stamps or [now] * (log.count("\n") + 1)
        job = self.get("Job", namespace, job_name)
        if job is not None:
            condition = {"type": "Complete" if succeeded else "Failed", "status": "True"}
            if reason:
                condition["reason"] = reason
            job["status"] = {
                "succeeded" if succeeded else "failed": 1,
                "conditions": [condition],
                "completionTime": _now(),
            }
            await self._record("MODIFIED", job)

    def _pods_of(self, job_name: str) -> list[dict[str, Any]]:
        keys = self._job_pods.get(job_name, [])
        return [self.objects[key] for key in keys if key in self.objects]

    def _store(self, key: tuple[str, str, str], obj: dict[str, Any]) -> None:
        self.objects[key] = obj
        job_name = (obj["metadata"].get("labels") or {}).get("job-name") if key[0] == "Pod" else None
        if job_name is not None:
            self._job_pods.setdefault(job_name, []).append(key)

    async def run_pod(self, namespace: str, job_name: str) -> None:
        """The job's pod is scheduled and its containers start: Running and Ready (a Job's pods have no
        readiness probes), which the Job controller counts in ``status.ready``."""
        job = self.get("Job", namespace, job_name)
        if job is None or (job.get("status") or {}).get("conditions"):
            return
        for pod in self._pods_of(job_name):
            pod["status"] = {
                "phase": "Running",
                "startTime": _now(),
                "conditions": [{"type": "Ready", "status": "True"}],
            }
        job["status"] = {**job["status"], "ready": 1}
        await self._record("MODIFIED", job)

    def compact(self) -> None:
        """Forget the history so far, as etcd compaction does: resuming from an older version is 410 Gone."""
        self._compacted_at = self._version

    async def break_watches(self) -> None:
        """End every open watch stream, as an API server going away does."""
        self._watch_generation += 1
        async with self._changed:
            self._changed.notify_all()

    # --- handlers ------------------------------------------------------------------------------------

    def _kind(self, request: web.Request) -> str:
        group = "batch" if request.path.startswith("/apis/batch") else ""
        return KINDS[(group, request.match_info["plural"])]

    async def _record(self, event: str, obj: dict[str, Any]) -> None:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)
        if obj["kind"] == "Job":
            # Serialised once (not per watcher), and a snapshot: later changes to ``obj`` do not show. The
            # history keeps what watches filter on, as it was then: a whole copy of each Job (parsed back
            # from its line) was most of the double's CPU in the benchmarks.
            line = (json.dumps({"type": event, "object": obj}) + "\n").encode()
            metadata = obj["metadata"]
            kept = {key: metadata.get(key) for key in ("namespace", "name")}
            self.history.append(
                (self._version, event, {"metadata": {**kept, "labels": dict(metadata.get("labels") or {})}})
            )
            self._lines.append(line)
            del self.history[: -self.max_history]
            del self._lines[: -self.max_history]
        async with self._changed:
            self._changed.notify_all()

    async def _create(self, request: web.Request) -> web.StreamResponse:
        namespace, kind = request.match_info["ns"], self._kind(request)
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return status(400, "BadRequest", "the body is not JSON")
        body.setdefault("kind", kind)
        body.setdefault("apiVersion", "batch/v1" if kind == "Job" else "v1")
        try:
            if self.validate_bodies:
                validate(body)
        except Invalid as exc:
            self.refused.append(str(exc))
            name = body.get("metadata", {}).get("name", "")
            return status(422, "Invalid", f"{kind} {name!r} is invalid: {exc}", name=name, kind=kind)
        name = body["metadata"]["name"]
        key = (kind, namespace, name)
        if key in self.objects:
            return status(409, "AlreadyExists", f'{kind.lower()}s "{name}" already exists', name=name)
        dry_run = request.query.getall("dryRun", [])
        if dry_run:
            if dry_run != ["All"]:
                return status(400, "BadRequest", f"unsupported dry run directive: {dry_run}")
            # Validated (and, on a real cluster, admitted), never stored: no etcd, no watch event.
            return web.json_response(body, status=201)
        body["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=_now())
        if kind == "Secret" and "stringData" in body:  # as the API server stores it
            encoded = {k: base64.b64encode(v.encode()).decode() for k, v in body.pop("stringData").items()}
            body["data"] = {**body.get("data", {}), **encoded}
        sent = request.content_length
        # (Sizing a few-KiB object costs more than the check is worth: only bodies that might be too big.)
        if (sent is None or sent > MAX_STORED_BYTES // 2) and _stored_size(body) > MAX_STORED_BYTES:
            return status(500, "InternalError", "etcdserver: request is too large")
        self._store(key, body)
        if not self._owners_exist(namespace, body):
            # The garbage collector deletes a dependent whose owner is gone (here: at once).
            await self._remove(kind, namespace, name)
            return web.json_response(body, status=201)
        if kind == "Job":
            self.created_at[name] = asyncio.get_running_loop().time()
        await self._record("ADDED", body)
        if kind == "Job":
            await self._start_pod(namespace, body)
        return web.json_response(body, status=201)

    async def _start_pod(self, namespace: str, job: dict[str, Any]) -> None:
        name = f"{job['metadata']['name']}-{uuid.uuid4().hex[:5]}"
        labels = {
            **(job["spec"]["template"]["metadata"].get("labels") or {}),
            "job-name": job["metadata"]["name"],
        }
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": copy.deepcopy(job["spec"]["template"]["spec"]),
            "status": {"phase": "Pending"},
        }
        self._store(("Pod", namespace, name), pod)
        # As the Job controller: the pod counts as active from its creation, unscheduled as it is.
        job["status"] = {"active": 1, "ready": 0, "startTime": _now()}
        await self._record("MODIFIED", job)
        if not self.hold_pods:
            await self.run_pod(namespace, job["metadata"]["name"])

    async def _replace(self, request: web.Request) -> web.StreamResponse:
        kind, namespace, name = self._kind(request), request.match_info["ns"], request.match_info["name"]
        if (kind, namespace, name) not in self.objects:
            return status(404, "NotFound", f'{kind.lower()}s "{name}" not found', name=name)
        del self.objects[(kind, namespace, name)]
        return await self._create(request)

    async def _delete_collection(self, request: web.Request) -> web.StreamResponse:
        kind, namespace = self._kind(request), request.match_info["ns"]
        selector = request.query.get("labelSelector", "")
        doomed = [
            name
            for (k, ns, name), obj in list(self.objects.items())
            if k == kind and ns == namespace and _selected(obj, selector)
        ]
        for name in doomed:
            await self._remove(kind, namespace, name)
        return status(200, "", f"deleted {len(doomed)}", kind=kind)

    async def _read(self, request: web.Request) -> web.StreamResponse:
        kind = self._kind(request)
        obj = self.get(kind, request.match_info["ns"], request.match_info["name"])
        if obj is None:
            name = request.match_info["name"]
            return status(404, "NotFound", f'{kind.lower()}s "{name}" not found', name=name)
        return web.json_response(obj)

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        kind, namespace, name = self._kind(request), request.match_info["ns"], request.match_info["name"]
        if not await self._remove(kind, namespace, name):
            return status(404, "NotFound", f'{kind.lower()}s "{name}" not found', name=name)
        return status(200, "", "deleted", name=name, kind=kind)

    def _owners_exist(self, namespace: str, obj: dict[str, Any]) -> bool:
        owners = obj["metadata"].get("ownerReferences") or []
        if not owners:
            return True
        uids = {o["metadata"].get("uid") for (_k, ns, _n), o in self.objects.items() if ns == namespace}
        return all(owner["uid"] in uids for owner in owners)

    async def _remove(self, kind: str, namespace: str, name: str) -> bool:
        obj = self.objects.pop((kind, namespace, name), None)
        if obj is None:
            return False
        if kind == "Job":  # background propagation: its pods go too
            keys = self._job_pods.pop(name, [])
            for key in keys:
                if key[1] == namespace:
                    self.objects.pop(key, None)
            if others := [key for key in keys if key[1] != namespace]:  # a Job of that name elsewhere
                self._job_pods[name] = others
            await self._record("DELETED", obj)
        # The garbage collector: what the object owned goes with it (background propagation).
        uid = obj["metadata"].get("uid")
        for (dependent_kind, ns, dependent), other in list(self.objects.items()):
            owners = other["metadata"].get("ownerReferences") or []
            if ns == namespace and any(owner.get("uid") == uid for owner in owners):
                await self._remove(dependent_kind, ns, dependent)
        return True

    async def _list(self, request: web.Request) -> web.StreamResponse:
        kind, namespace = self._kind(request), request.match_info["ns"]
        selector = request.query.get("labelSelector", "")
        fields = request.query.get("fieldSelector", "")
        if request.query.get("watch", "").lower() in ("true", "1") and kind == "Job":
            return await self._watch(request, namespace, selector, fields)
        self.listed.append(kind)
        items = [
            obj
            for (k, ns, _name), obj in sorted(self.objects.items())
            if k == kind and ns == namespace and _selected(obj, selector, fields)
        ]
        return web.json_response(
            {
                "kind": f"{kind}List",
                "apiVersion": "batch/v1" if kind == "Job" else "v1",
                "metadata": {"resourceVersion": str(self._version)},
                "items": items,
            }
        )

    def _gone(self, since: int) -> bool:
        """Events after ``since`` are no longer all kept (etcd compacted past it)."""
        return since < self._compacted_at or (bool(self.history) and since < self.history[0][0] - 1)

    async def _watch(
        self, request: web.Request, namespace: str, selector: str, fields: str
    ) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or self._version)
        response = web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(request)
        timeout = float(request.query.get("timeoutSeconds", "30"))
        deadline = asyncio.get_running_loop().time() + timeout
        generation = self._watch_generation
        while generation == self._watch_generation:
            if self._gone(since):
                # As the API server does once etcd has compacted that far (also for a watcher that fell
                # that far behind): an ERROR event, then the end.
                gone = {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "code": 410,
                    "reason": "Expired",
                    "message": f"too old resource version: {since}",
                }
                await response.write((json.dumps({"type": "ERROR", "object": gone}) + "\n").encode())
                return response
            start = bisect.bisect_right(self.history, since, key=lambda entry: entry[0])
            if start < len(self.history):
                version, _event, job = self.history[start]
                line = self._lines[start]
                since = version
                if job["metadata"]["namespace"] == namespace and _selected(job, selector, fields):
                    await response.write(line)
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return response
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=remaining)
                except TimeoutError:
                    return response
        return response

    async def _log(self, request: web.Request) -> web.StreamResponse:
        key = (request.match_info["ns"], request.match_info["name"])
        if ("Pod", *key) not in self.objects:
            return status(404, "NotFound", f'pods "{key[1]}" not found')
        text = self.logs.get(key, "")
        if request.query.get("timestamps", "").lower() == "true":  # kubernetes-asyncio sends "True"
            # As the kubelet: every line (a last one without its newline too) prefixed by its time.
            lines = text.split("\n")
            ends = ["\n"] * (len(lines) - 1) + [""]
            stamps = self.log_stamps.get(key, [])
            text = "".join(
                f"{stamps[index] if index < len(stamps) else _now()} {line}{end}"
                for index, (line, end) in enumerate(zip(lines, ends, strict=True))
                if line or end
            )
        return web.Response(text=text)

    async def _nodes(self, _request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"kind": "NodeList", "apiVersion": "v1", "metadata": {}, "items": self.nodes}
        )

    async def _node_metrics(self, _request: web.Request) -> web.StreamResponse:
        if self.node_usage is None:  # a cluster without metrics-server: the API group is not served
            return status(404, "NotFound", "the server could not find the requested resource")
        items = [
            {"metadata": {"name": name}, "timestamp": _now(), "window": "10s", "usage": usage}
            for name, usage in self.node_usage.items()
        ]
        return web.json_response(
            {"kind": "NodeMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "items": items}
        )

    async def _created(self, _request: web.Request) -> web.StreamResponse:
        return web.json_response(self.created_at)


def kubeconfig(url: str, namespace: str = "oscar-svc") -> str:
    """A kubeconfig document pointing kubernetes-asyncio at the double."""
    return f"""apiVersion: v1
kind: Config
clusters:
- name: double
  cluster: {{server: "{url}"}}
users:
- name: tester
  user: {{token: test-token}}
contexts:
- name: double
  context: {{cluster: double, user: tester, namespace: {namespace}}}
current-context: double
"""


def on_kubernetes(settings: Settings, url: str, directory: Path, **overrides: Any) -> Settings:
    """``settings`` with the Kubernetes backend talking to the API server at ``url`` (a kubeconfig is
    written in ``directory``)."""
    config = directory / "kubeconfig"
    config.write_text(kubeconfig(url))
    return settings.model_copy(
        update={
            "oscar_backend": "kubernetes",
            "oscar_kubeconfig": config,
            "oscar_manager_image": "registry.example/oscar-manager:test",
            "oscar_dispatch_interval": 0.05,
            **overrides,
        }
    )


async def _serve(args: argparse.Namespace) -> None:
    # No cyclic garbage collection in the stand-alone double: what it keeps (objects, watch history) is
    # acyclic JSON that reference counting frees, and full collections of that growing heap were stalls
    # of 200-330 ms every few seconds of a run at 300 Jobs/s, which the open-loop bench read as the
    # manager's p99 (kube-apiserver's Go collector runs concurrently and stalls nothing of the kind).
    gc.disable()
    double = KubeApiDouble(
        delay=args.delay, validate_bodies=not args.no_validate, max_history=args.max_history
    )
    runner = web.AppRunner(double.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    (address,) = runner.addresses
    print(address[1], flush=True)
    # Until whoever started us closes our stdin.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Serve the Kubernetes API double; prints its port.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--no-validate", action="store_true")
    parser.add_argument("--max-history", type=int, default=1000)
    asyncio.run(_serve(parser.parse_args()))
