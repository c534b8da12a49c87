"""How many warm pods a service has (``backends.warm_kube``): more when runs find them all busy, fewer
once pods above ``min_scale`` have been idle for a while.

Up, per manager replica, on its own count: a run that no warm pod took (every one busy, or none yet)
asks for one more (:meth:`WarmScaler.want_more`), in the background while that run is a Job. Asks are
coalesced: one at a time per service in this process, and none while a pod asked for earlier (by any
replica) is still coming (the Deployment asks for more pods than are Running). The change is a JSON patch
that first tests ``spec.replicas``: a compare-and-swap, so replicas growing or shrinking it at once never
add up to more than one step each, and never past the cap (``max_scale``, or ``warm_max_pods``).

Down, by the leader alone (:meth:`WarmScaler.scale_down_round`, a loop in the leader's work), on what the
pods say: each knows whether it is busy and since when it is idle (``GET /idle``), whichever replica sent
its runs. A Deployment is never shrunk below its ``min_scale`` (0 with the ``oscar-manager/warm``
annotation). A pod in a run is never removed:

1. each pod to go is *retired* first (``POST /retire``): the pod checks that it is idle, and has been for
   the idle period, and from then on refuses runs (``/run`` 503: the manager tries another pod or a Job),
   in one step of its event loop, so no run slips in between;
2. it gets the lowest ``controller.kubernetes.io/pod-deletion-cost``, and the leader waits until the
   apiserver shows it not Ready (its probe answers 503 once retired);
3. then ``spec.replicas`` is lowered by that many (compare-and-swap as above). The ReplicaSet controller
   removes, in order, pods not yet scheduled or not Running (no run in them), then not-Ready pods by
   deletion cost: a retired pod (lowest cost) before any busy one (not Ready too, but cost 0) or idle one.

Then the retired pods are also deleted by name (safe: they take no run), in case the controller took a
pod not Running yet instead (it then makes that one again: the count is right). Why not delete the idle
pods by name first and lower the count after: between the two the ReplicaSet makes a replacement, which
may be up and Ready by the time the count drops, and a not-Ready (busy) pod ranks before it. And lowering
the count alone, without retiring and costs, lets the controller pick: busy pods are not Ready, so they
would go first. A retired pod that cannot go (the count was changed meanwhile, or the bounds) is taken
again next round, or deleted and replaced when the bounds no longer let it go.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from oscar_manager.backends import warm_manifests as objects
from oscar_manager.backends.exposed_kube import Resolve
from oscar_manager.backends.kube_client import TRANSPORT_ERRORS
from oscar_manager.domain.service import Service
from oscar_manager.supervisor import serve

log = logging.getLogger(__name__)

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
LOWEST_COST = str(-(2**31))  # an int32: below any other pod's (0 by default)
# How long the leader waits for a retired pod to show not Ready (its probe runs every second).
_NOT_READY_WITHIN = 10.0
_POD_ANSWER = aiohttp.ClientTimeout(total=3)


class WarmScaler:
    def __init__(
        self,
        api: client.ApiClient,
        *,
        namespace: str,
        resolve: Resolve,
        default_cap: int,
        idle_seconds: float,
        session: Callable[[], aiohttp.ClientSession],
    ) -> None:
        self._apps = client.AppsV1Api(api)
        self._core = client.CoreV1Api(api)
        self._namespace = namespace
        self._resolve = resolve
        self._default_cap = default_cap
        self.idle_seconds = idle_seconds
        self._session = session
        self._growing: dict[str, asyncio.Task[bool]] = {}

    async def close(self) -> None:
        for task in list(self._growing.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- up ------------------------------------------------------------------------------------------

    def want_more(self, service: Service) -> asyncio.Task[bool]:
        """One more pod for ``service`` (no run of this process took a pod): in the background, at most
        one ask in flight per service (the task of the one under way, if any)."""
        name = objects.deployment_name(service)
        task = self._growing.get(name)
        if task is None:
            task = asyncio.create_task(self._grow(service), name=f"grow {name}")
            self._growing[name] = task
            task.add_done_callback(lambda _: self._growing.pop(name, None))
        return task

    async def _grow(self, service: Service) -> bool:
        name = objects.deployment_name(service)
        try:
            deployment = await self._read(name)
            if deployment is None:
                return False
            wanted = int(deployment["spec"].get("replicas") or 0)
            _, cap = objects.deployment_bounds(deployment)
            if wanted >= (cap or self._default_cap):
                return False
            pods = await self._pods(objects.pod_selector(service))
            if wanted > sum(1 for pod in pods if _running(pod)):
                return False  # a pod asked for is still coming: it is this demand's too
            return await self._set_replicas(name, was=wanted, now=wanted + 1)
        except Exception:
            # Best effort: the run that asked is a Job meanwhile, the next one asks again.
            log.exception("could not add a warm pod to %s", name)
            return False

    # --- down (the leader's) -------------------------------------------------------------------------

    async def scale_down_round(self) -> int:
        """One look at every warm Deployment of the namespace; 0 (nothing more to do at once)."""
        answer = await self._apps.list_namespaced_deployment(
            self._namespace, label_selector=f"{objects.WARM_LABEL}=true", _preload_content=False
        )
        async with cast("aiohttp.ClientResponse", answer) as raw:
            if raw.status != 200:
                return 0
            deployments = json.loads(await raw.read())["items"]
        for deployment in deployments:
            try:
                await self._shrink(deployment)
            except (ApiException, *TRANSPORT_ERRORS) as exc:
                log.warning("warm pods of %s: no scale-down this round: %s", _name(deployment), exc)
        return 0

    async def _shrink(self, deployment: dict[str, Any]) -> None:
        meta, status = deployment["metadata"], deployment.get("status") or {}
        if status.get("observedGeneration", 0) < meta.get("generation", 0):
            return  # a change the controller has not taken in yet (a service update rolling out)
        low, _ = objects.deployment_bounds(deployment)
        wanted = int(deployment["spec"].get("replicas") or 0)
        selector = ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items())
        pods = [pod for pod in await self._pods(selector) if _running(pod)]
        states = await asyncio.gather(*(self._idle_state(pod) for pod in pods))
        known = [(pod, state) for pod, state in zip(pods, states, strict=True) if state is not None]
        retired = [pod for pod, state in known if state["retired"]]  # by an earlier round
        idle = sorted(
            (
                (pod, state)
                for pod, state in known
                if not state["busy"] and not state["retired"] and state["idle_seconds"] >= self.idle_seconds
            ),
            key=lambda pair: -float(pair[1]["idle_seconds"]),
        )
        fewer = max(wanted - low, 0)
        retired += [pod for pod, _ in idle[: max(fewer - len(retired), 0)] if await self._retire(pod)]
        # Retired beyond what may go (the bounds changed since): replaced, as they take no run.
        await self._delete(retired[fewer:])
        going = retired[:fewer]
        for pod in going:
            await self._core.patch_namespaced_pod(
                _name(pod), self._namespace, {"metadata": {"annotations": {DELETION_COST: LOWEST_COST}}}
            )
        going = await self._not_ready(selector, going)
        if going and await self._set_replicas(_name(deployment), was=wanted, now=wanted - len(going)):
            log.info("warm pods of %s: %d -> %d (idle)", _name(deployment), wanted, wanted - len(going))
            # The controller removes them (they rank first); by name too, in case it took a pod that
            # was not Running yet instead (then it makes that one again: the count stays right).
            await self._delete(going)

    async def _delete(self, pods: list[dict[str, Any]]) -> None:
        """Delete retired pods (they take no run, so that is safe whoever else removes them)."""
        for pod in pods:
            try:
                await self._core.delete_namespaced_pod(_name(pod), self._namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise

    async def _idle_state(self, pod: dict[str, Any]) -> dict[str, Any] | None:
        try:
            async with self._session().get(self._url(pod, "/idle"), timeout=_POD_ANSWER) as answer:
                if answer.status != 200:
                    return None
                state: dict[str, Any] = await answer.json(content_type=None)
                return state
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None  # not answering: not known idle, so left alone

    async def _retire(self, pod: dict[str, Any]) -> bool:
        headers = {
            serve.KEY_HEADER: objects.pod_key(pod),
            serve.IDLE_AT_LEAST_HEADER: f"{self.idle_seconds:g}",
        }
        try:
            async with self._session().post(
                self._url(pod, "/retire"), headers=headers, timeout=_POD_ANSWER
            ) as answer:
                return answer.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _not_ready(self, selector: str, pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Those of ``pods`` the apiserver shows not Ready, waiting for their probes (a pod still shown
        Ready could rank after a busy one: it stays retired, and is retried next round)."""
        names = {_name(pod) for pod in pods}
        deadline = time.monotonic() + _NOT_READY_WITHIN
        while names:
            shown = {_name(pod): pod for pod in await self._pods(selector)}
            done = {name for name in names if name in shown and not _ready(shown[name])}
            if done == names or time.monotonic() > deadline:
                return [pod for pod in pods if _name(pod) in done]
            await asyncio.sleep(0.25)
        return []

    # --- both ----------------------------------------------------------------------------------------

    async def _set_replicas(self, name: str, *, was: int, now: int) -> bool:
        """``spec.replicas`` from ``was`` to ``now``, only if it still is ``was`` (False: it changed)."""
        patch = [
            {"op": "test", "path": "/spec/replicas", "value": was},
            {"op": "replace", "path": "/spec/replicas", "value": now},
        ]
        try:
            await self._apps.patch_namespaced_deployment(name, self._namespace, patch)
        except ApiException as exc:
            if exc.status in (404, 409, 422):  # gone, or the test failed: someone else changed it
                return False
            raise
        return True

    async def _read(self, name: str) -> dict[str, Any] | None:
        answer = await self._apps.read_namespaced_deployment(name, self._namespace, _preload_content=False)
        async with cast("aiohttp.ClientResponse", answer) as raw:
            if raw.status == 404:
                return None
            if raw.status != 200:
                raise ApiException(status=raw.status, reason=await raw.text())
            found: dict[str, Any] = json.loads(await raw.read())
            return found

    async def _pods(self, selector: str) -> list[dict[str, Any]]:
        answer = await self._core.list_namespaced_pod(
            self._namespace, label_selector=selector, _preload_content=False
        )
        async with cast("aiohttp.ClientResponse", answer) as raw:
            if raw.status != 200:
                raise ApiException(status=raw.status, reason=await raw.text())
            pods: list[dict[str, Any]] = json.loads(await raw.read())["items"]
            return pods

    def _url(self, pod: dict[str, Any], path: str) -> str:
        host, port = self._resolve(pod["status"]["podIP"], objects.PORT)
        return f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"


def _name(item: dict[str, Any]) -> str:
    return str(item["metadata"]["name"])


def _running(pod: dict[str, Any]) -> bool:
    """Running with an address, and not going away."""
    status = pod.get("status") or {}
    return (
        status.get("phase") == "Running"
        and bool(status.get("podIP"))
        and not pod["metadata"].get("deletionTimestamp")
    )


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
