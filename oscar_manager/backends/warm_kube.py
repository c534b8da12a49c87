"""Warm sync runs on Kubernetes: ``/run`` served by a service's warm pods instead of a Job per request.

A service that asks for warm pods (``warm_manifests.is_warm``: ``synchronous.min_scale`` > 0, or the
``oscar-manager/warm`` annotation) has a Deployment of them, each pod running the supervisor's server
(``supervisor.serve``) in the service's image. The Deployment is created or replaced with the service (a
new key and pod template: the pods roll over to the new definition; the count it has is kept, within the
new bounds) and deleted with it, or when an update no longer asks for warm pods.

Scaling (``warm_scaling``): ``min_scale`` pods are kept up; a run that no pod took asks for one more, up
to ``max_scale`` (0: ``OSCAR_WARM_MAX_PODS``); the leader removes pods above ``min_scale`` once they were
idle ``OSCAR_WARM_IDLE_SECONDS``, never one in a run. An HPA on CPU is the wrong signal for pods that each
take one run at a time (an idle pod and a pod waiting on S3 both show no CPU).

Routing, per run: the service's pods are listed (the apiserver's view; in the cluster a pod's address is
reachable as is, outside it ``resolve`` maps it, as for exposed services), and the run goes to one that
is Running and idle: Ready (its probe answers 200 only while idle) or, since the probe lags by up to its
period, one whose last run from this manager has ended. This manager sends one run at a time to a pod
(``_busy``); another replica's run, or a retired pod, is refused by the pod itself (503), and the next pod
is tried. When no pod takes the run, :meth:`WarmPods.run` answers None and the caller starts a Job.

A pod that fails mid-run: if the connection was refused (nothing reached the pod) the next pod is tried,
then a Job; once the body was sent the script may have run, partly or whole (uploaded outputs, any side
effect), so the run is not repeated: the answer is a 502 that says so (:class:`WarmPodFailed`).
"""

from __future__ import annotations

import json
import secrets
from typing import Any, cast

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from oscar_manager.backends import warm_manifests as objects
from oscar_manager.backends.base import RunTimeout, ScriptFailed, SyncRequest
from oscar_manager.backends.exposed import DeploymentState
from oscar_manager.backends.exposed_kube import Resolve
from oscar_manager.backends.kube_client import TRANSPORT_ERRORS, answers
from oscar_manager.backends.manifests import ClusterConfig
from oscar_manager.backends.warm_scaling import WarmScaler
from oscar_manager.domain.service import Service
from oscar_manager.errors import OscarError
from oscar_manager.supervisor import serve
from oscar_manager.supervisor.answer import ResponseTooLarge, SyncAnswer, encoded_size

# Tries at replacing a warm Deployment whose count changes meanwhile (a run scaling it, or the leader).
_REPLACE_ATTEMPTS = 5
# Beyond the run's own time limit (which the pod keeps), how long the manager waits for its answer.
_ANSWER_GRACE = 5.0


class WarmPodFailed(OscarError):
    """A warm pod broke off a run after taking its body: not repeated, since it may have run."""

    status_code = 502


class WarmPods:
    def __init__(
        self, api: client.ApiClient, *, namespace: str, cluster: ClusterConfig, resolve: Resolve
    ) -> None:
        self._api = api
        self._apps = client.AppsV1Api(api)
        self._core = client.CoreV1Api(api)
        self._namespace = namespace
        self._cluster = cluster
        self._resolve = resolve
        self._busy: set[str] = set()  # pod names running a run of this manager's
        self._idle: set[str] = set()  # pod names whose last run from this manager ended
        self._session: aiohttp.ClientSession | None = None
        self.scaler = WarmScaler(
            api,
            namespace=namespace,
            resolve=resolve,
            default_cap=cluster.warm_max_pods,
            idle_seconds=cluster.warm_idle_seconds,
            session=self._session_for_pods,
        )

    async def close(self) -> None:
        await self.scaler.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- with the service --------------------------------------------------------------------------

    async def apply(self, service: Service, *, previous: Service | None = None) -> None:
        """Create or replace the warm pods' Deployment when the service asks for them; delete it when an
        update stops asking."""
        if not objects.is_warm(service):
            if previous is not None and objects.is_warm(previous):
                await self.remove(previous)
            return
        key = secrets.token_hex(32)
        body = objects.deployment(service, cluster=self._cluster, key=key)
        name = body["metadata"]["name"]
        with answers(f"store deployment {name}"):
            try:
                await self._apps.create_namespaced_deployment(self._namespace, cast("Any", body))
            except ApiException as exc:
                if exc.status != 409:
                    raise
                await self._replace(service, key)

    async def _replace(self, service: Service, key: str) -> None:
        """Replace the Deployment's definition keeping the count it has now (pods may be in runs), within
        the new bounds. A JSON patch that tests the count read: a scaling in between is not undone (then
        read again), and the controllers' own status writes, frequent in a rollout, do not conflict with
        it as a resourceVersion would."""
        name = objects.deployment_name(service)
        for attempt in range(_REPLACE_ATTEMPTS):
            current = await self._apps.read_namespaced_deployment(name, self._namespace)
            count = current.spec.replicas or 0
            body = objects.deployment(service, cluster=self._cluster, key=key, current_replicas=count)
            patch = [
                {"op": "test", "path": "/spec/replicas", "value": count},
                {"op": "replace", "path": "/spec/replicas", "value": body["spec"]["replicas"]},
                {"op": "replace", "path": "/spec/template", "value": body["spec"]["template"]},
                {"op": "replace", "path": "/metadata/labels", "value": body["metadata"]["labels"]},
                {"op": "replace", "path": "/metadata/annotations", "value": body["metadata"]["annotations"]},
            ]
            try:
                await self._apps.patch_namespaced_deployment(name, self._namespace, patch)
                return
            except ApiException as exc:
                # 422 for a failed test (or an invalid body: the last attempt says which).
                if exc.status not in (409, 422) or attempt == _REPLACE_ATTEMPTS - 1:
                    raise

    async def remove(self, service: Service) -> None:
        name = objects.deployment_name(service)
        with answers(f"delete deployment {name}"):
            try:
                await self._apps.delete_namespaced_deployment(
                    name, self._namespace, propagation_policy="Background"
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise

    async def state(self, service: Service) -> DeploymentState | None:
        """The warm pods' state (None: the service has no warm Deployment)."""
        name = objects.deployment_name(service)
        with answers(f"read deployment {name}"):
            try:
                deployment = await self._apps.read_namespaced_deployment(name, self._namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            pods = await self._core.list_namespaced_pod(
                self._namespace, label_selector=objects.pod_selector(service)
            )
        return objects.state_of(
            self._api.sanitize_for_serialization(deployment),
            [self._api.sanitize_for_serialization(pod) for pod in pods.items],
        )

    # --- runs ----------------------------------------------------------------------------------------

    async def run(self, request: SyncRequest) -> SyncAnswer | None:
        """The run's answer from a warm pod, or None when none took it (start a Job instead)."""
        if not objects.is_warm(request.service):
            return None
        for pod in await self._candidates(request.service):
            name = pod["metadata"]["name"]
            if name in self._busy:
                continue
            self._busy.add(name)
            self._idle.discard(name)
            try:
                answer = await self._send(pod, request)
            finally:
                self._busy.discard(name)
            if answer is not None:
                self._idle.add(name)
                return answer
        self.scaler.want_more(request.service)  # every pod busy, or none: one more, for the next runs
        return None

    async def _candidates(self, service: Service) -> list[dict[str, Any]]:
        """The service's pods that may take a run now: Running, not going away, idle as far as known."""
        try:
            answer = await self._core.list_namespaced_pod(
                self._namespace, label_selector=objects.pod_selector(service), _preload_content=False
            )
            async with cast("aiohttp.ClientResponse", answer) as raw:
                if raw.status != 200:
                    return []
                pods: list[dict[str, Any]] = json.loads(await raw.read())["items"]
        except TRANSPORT_ERRORS:
            return []  # no pod known: a Job does the run (and says what is wrong, if anything is)
        live = {pod["metadata"]["name"] for pod in pods}
        self._idle &= live  # forget pods that are gone
        return [
            pod
            for pod in pods
            if pod.get("status", {}).get("phase") == "Running"
            and pod["status"].get("podIP")
            and not pod["metadata"].get("deletionTimestamp")
            and (_ready(pod) or pod["metadata"]["name"] in self._idle)
        ]

    async def _send(self, pod: dict[str, Any], request: SyncRequest) -> SyncAnswer | None:
        """Post the run to ``pod``; None when it took nothing (refused the connection, or busy)."""
        host, port = self._resolve(pod["status"]["podIP"], objects.PORT)
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}/run"
        headers = {
            serve.KEY_HEADER: objects.pod_key(pod),
            serve.TIMEOUT_HEADER: f"{request.timeout:g}",
            serve.ANY_BUCKET_HEADER: "true" if request.any_bucket else "false",
            serve.RUN_ID_HEADER: f"{request.service.name[:40]}-warm-{secrets.token_hex(8)}",
        }
        if request.max_response_bytes is not None:
            headers[serve.MAX_RESPONSE_HEADER] = str(request.max_response_bytes)
        session = self._session_for_pods()
        timeout = aiohttp.ClientTimeout(total=request.timeout + _ANSWER_GRACE)
        name = pod["metadata"]["name"]
        try:
            async with session.post(url, data=request.body, headers=headers, timeout=timeout) as answer:
                body = await answer.read()
                status = answer.status
                answer_headers = answer.headers
        except aiohttp.ClientConnectorError:
            return None  # nothing reached the pod (not listening yet, or gone): another pod, or a Job
        except TimeoutError:
            raise RunTimeout(
                f"the run did not finish within {request.timeout:g} s (warm pod {name})"
            ) from None
        except aiohttp.ClientError as exc:
            raise WarmPodFailed(
                f"warm pod {name} failed during the run ({type(exc).__name__}: {exc}); "
                "it may have run in part, so it was not run again"
            ) from None
        return _outcome(name, status, answer_headers, body, request)

    def _session_for_pods(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No environment proxies: pods are reached directly. One connection per run (the pod closes it).
            self._session = aiohttp.ClientSession(
                trust_env=False, connector=aiohttp.TCPConnector(force_close=True)
            )
        return self._session


def _ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _outcome(name: str, status: int, headers: Any, body: bytes, request: SyncRequest) -> SyncAnswer | None:
    """The pod's answer in the manager's terms (``supervisor.serve`` lists them)."""
    text = body.decode("utf-8", errors="replace")
    if status == 200:
        limit = request.max_response_bytes
        if limit is not None and len(body) > encoded_size(
            limit
        ):  # the pod keeps the limit; this is a backstop
            raise ResponseTooLarge(
                len(body) * 3 // 4, limit, what=f"the answer ({len(body)} bytes in base64)"
            )
        return SyncAnswer.of_bytes(body)
    if status == 503:
        return None  # busy with another manager's run: nothing was run
    if status == 422:
        code = headers.get(serve.EXIT_CODE_HEADER, "unknown")
        raise ScriptFailed(f"the script exited with code {code}: {text[-2000:]}")
    if status == 504:
        raise RunTimeout(f"the run did not finish within {request.timeout:g} s and was killed")
    if status == 413 and request.max_response_bytes is not None:
        size = headers.get(serve.RESPONSE_SIZE_HEADER, "")
        raise ResponseTooLarge(int(size) if size.isdigit() else 0, request.max_response_bytes)
    raise WarmPodFailed(f"warm pod {name} answered {status}: {text[-2000:]}")
