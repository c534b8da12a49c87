"""Jobs as Kubernetes Jobs, through kubernetes-asyncio (only this module and its ``kube_*`` parts import it).

Submitting creates a Job named after the intake's dedup key, so a resubmission (after a crash, or of a
redelivered event) answers 409 AlreadyExists and counts as done. One watch on the namespace's Jobs keeps the
job rows current: it resumes from the last resourceVersion, and lists again after 410 Gone. When a Job
ends, its pod's log is copied into the registry, so logs outlive the pod and its TTL.

A sync ``/run`` of a service with warm pods (``synchronous.min_scale`` > 0) goes to a free one
(``warm_kube``). Otherwise, or when none is free, it is a Job of its own, labelled so the watcher leaves it
alone: the request awaits it with a watch on that one Job, reads the response the supervisor framed into the
pod log, and deletes the Job; past the run's timeout the Job is deleted and the answer is 504 (Kubernetes also
kills it by its ``activeDeadlineSeconds``, should the manager be gone).

A body too large for the Job's environment (``manifests.body_inline``) goes, after the Job, into Secrets
the Job owns, which the garbage collector deletes with it; the pod waits for them as for any volume. A
resubmission finds the Job (409) and creates what is missing of them.

A service's create or update first checks its Jobs: their size against etcd's limit (``kube_limits``)
and a dry-run create of one, so what the API server would refuse in every Job is the request's 400.

Beside this class: ``kube_client`` (the client and its errors), ``kube_watches`` (the job watcher and the
sync-run watch), ``kube_jobs`` (a Job's state and outcome, its pod's log), ``kube_nodes`` (``/system/status``
and what the nodes offer, which ``kube_offers`` keeps a while) and ``kube_answers`` (what refusals say).

Not here: per-user namespaces, Kueue.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from oscar_manager.backends import manifests
from oscar_manager.backends.base import (
    BackendUnavailable,
    JobReporter,
    JobRequest,
    RunTimeout,
    ScriptFailed,
    SubmissionRefused,
    SyncRequest,
)
from oscar_manager.backends.exposed import DeploymentState, Exposer
from oscar_manager.backends.exposed_kube import KubeExposer, Resolve
from oscar_manager.backends.kube_answers import reason, refused_for_now
from oscar_manager.backends.kube_client import (
    TRANSPORT_ERRORS,
    answers,
    create,
    in_cluster,
    new_api_client,
    without_environment_lookups,
)
from oscar_manager.backends.kube_jobs import job_outcome, past_deadline
from oscar_manager.backends.kube_limits import check_job_size
from oscar_manager.backends.kube_nodes import cluster_nodes, cluster_offers
from oscar_manager.backends.kube_offers import KeptOffers
from oscar_manager.backends.kube_watches import JobWatcher, await_end
from oscar_manager.backends.warm_kube import WarmPods
from oscar_manager.backends.warm_manifests import is_warm
from oscar_manager.domain.cluster import ClusterOffers, NodeStatus
from oscar_manager.domain.jobs import JobStatus
from oscar_manager.domain.service import SERVICE_LABEL, Service
from oscar_manager.errors import OscarError
from oscar_manager.supervisor import response_frame
from oscar_manager.supervisor.answer import SyncAnswer


class ResponseLost(OscarError):
    """The run ended well but its response is not in the pod log (a log rotated or cut by the node)."""

    status_code = 502


# At most this many jobs' 403 counts are kept (a bound, should jobs vanish between their attempts).
_MAX_REFUSALS_KEPT = 10_000


class KubernetesBackend:
    durable_submissions = True
    follows_jobs = True
    exposed: Exposer | None

    def __init__(
        self,
        api: client.ApiClient,
        *,
        namespace: str,
        cluster: manifests.ClusterConfig,
        concurrency: int = 64,
        resolve: Resolve | None = None,
    ) -> None:
        self._api = api
        self._batch = client.BatchV1Api(api)
        self._core = client.CoreV1Api(api)
        self._namespace = namespace
        self._cluster = cluster
        self._concurrency = concurrency
        self._inflight = 0
        # Job -> the 403s its creation met so far (its other failed attempts, say while the apiserver was
        # away, do not count): a few are an apiserver that is starting, more a refusal.
        self._refusals: dict[str, int] = {}
        self._reporter: JobReporter | None = None
        self.watching = asyncio.Event()
        # Exposed services (``exposed_kube``); ``resolve``: where the manager reaches a pod's address.
        self.exposed = KubeExposer(api, namespace=namespace, cluster=cluster, resolve=resolve)
        # Warm sync runs (``warm_kube``): services with ``synchronous.min_scale`` > 0.
        self.warm = WarmPods(api, namespace=namespace, cluster=cluster, resolve=resolve or _identity)
        self._offers = KeptOffers(lambda: cluster_offers(api))

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        *,
        kubeconfig: Path | None,
        namespace: str,
        cluster: manifests.ClusterConfig,
        concurrency: int,
        resolve: Resolve | None = None,
    ) -> AsyncIterator[KubernetesBackend]:
        """A backend on the cluster of ``kubeconfig`` (None: the pod's own, else the default one)."""
        try:
            api = await new_api_client(kubeconfig)
        except (config.ConfigException, OSError) as exc:
            raise BackendUnavailable(f"no Kubernetes configuration: {exc}") from None
        without_environment_lookups(api)
        if cluster.exposed_via_service is None:
            cluster = dataclasses.replace(cluster, exposed_via_service=in_cluster(kubeconfig))
        async with api:
            yield cls(api, namespace=namespace, cluster=cluster, concurrency=concurrency, resolve=resolve)

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self, reporter: JobReporter) -> None:
        self._reporter = reporter

    async def stop(self) -> None:
        """Only the warm pods' connections to close: the job watcher is the leader's (:meth:`follow_jobs`)."""
        await self.warm.close()

    async def follow_jobs(self, up: Callable[[], None]) -> None:
        """The job watcher: every service Job of the namespace, whichever replica created it."""
        assert self._reporter is not None, "start() first"
        watcher = JobWatcher(
            self._api, namespace=self._namespace, reporter=self._reporter, watching=self.watching, up=up
        )
        try:
            await watcher.run()
        finally:
            self.watching.clear()

    @property
    def warm_scale_interval(self) -> float:
        """How often the leader looks for idle warm pods: a fraction of the idle period (within bounds)."""
        return min(max(self._cluster.warm_idle_seconds / 4, 0.5), 30.0)

    async def scale_down_warm_pods(self) -> int:
        """The leader's: warm pods above ``min_scale`` idle for the idle period go (``warm_scaling``)."""
        return await self.warm.scaler.scale_down_round()

    async def warm_state(self, service: Service) -> DeploymentState | None:
        return await self.warm.state(service) if is_warm(service) else None

    async def nodes(self) -> list[NodeStatus]:
        return await cluster_nodes(self._api, namespace=self._namespace)

    async def offers(self) -> ClusterOffers:
        return await self._offers.get()

    def describe(self) -> dict[str, Any]:
        return {"kind": "kubernetes", "namespace": self._namespace, "image_pulled": True}

    def free_slots(self) -> int:
        return max(self._concurrency - self._inflight, 0)

    # --- services ----------------------------------------------------------------------------------

    async def prepare_service(self, service: Service, *, previous: Service | None = None) -> None:
        """Check that the cluster will take the service's Jobs (their size, then a dry-run create), then
        create or replace its ConfigMap (definition, script) and Secret (its secrets), then its warm pods'
        Deployment (``warm_kube``) when it asks for one. The Secret is deleted only when the version
        replaced had one: not a DELETE answered 404 on every change."""
        check_job_size(service, self._cluster, body_bytes=self._cluster.max_body_bytes)
        await self._dry_run_job(service)
        await self._apply("configmap", manifests.config_map(service))
        secret = manifests.secret(service)
        if secret is not None:
            await self._apply("secret", secret)
        elif previous is not None and manifests.secret(previous) is not None:
            await self._delete_quietly("secret", service.name)
        await self.warm.apply(service, previous=previous)

    async def _dry_run_job(self, service: Service) -> None:
        """Have the API server validate (and admit, not store) a Job of the service for an empty event:
        what it would refuse in every Job (an invalid field, a webhook's policy) is refused now, as the
        service's 400, instead of after each invocation's 201."""
        name = f"{service.name}-dry-run"  # no job has this name: a job id ends in hex digits
        body = manifests.job(service, job_id=name, event=b"", cluster=self._cluster)
        with answers(f"create a Job of service {service.name} (dry run)"):
            await self._create("jobs", body, dry_run="All")

    async def remove_service(self, service: Service) -> None:
        """Delete the service's warm pods (if it has some), ConfigMap, Secret (if it has one) and Jobs
        (their pods go with them, in the background)."""
        if is_warm(service):
            await self.warm.remove(service)
        await self._delete_quietly("configmap", service.name)
        if manifests.secret(service) is not None:
            await self._delete_quietly("secret", service.name)
        with answers(f"delete the jobs of {service.name}"):
            await self._batch.delete_collection_namespaced_job(
                self._namespace,
                label_selector=f"{SERVICE_LABEL}={service.name}",
                propagation_policy="Background",
            )

    async def _apply(self, kind: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        create = getattr(self._core, f"create_namespaced_{_api_kind(kind)}")
        replace = getattr(self._core, f"replace_namespaced_{_api_kind(kind)}")
        with answers(f"store {kind} {name}"):
            try:
                await create(self._namespace, body)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                await replace(name, self._namespace, body)

    async def _delete_quietly(self, kind: str, name: str) -> None:
        delete = getattr(self._core, f"delete_namespaced_{_api_kind(kind)}")
        with answers(f"delete {kind} {name}"):
            try:
                await delete(name, self._namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise

    # --- jobs --------------------------------------------------------------------------------------

    async def submit(self, request: JobRequest) -> None:
        service, name, payload = request.service, request.job_id, request.payload
        body = manifests.job(service, job_id=name, event=payload, cluster=self._cluster)
        inline = manifests.body_inline(service, payload)
        self._inflight += 1
        try:
            created = await self._create("jobs", body, parse=not inline)
            if not inline:
                # Created before (a resubmission): its Secrets may be there too, or only some of them.
                uid = created["metadata"]["uid"] if created else await self._job_uid(name)
                await self._deliver_body(service, name, uid, payload)
            self._refusals.pop(name, None)
        except ApiException as exc:
            refusals = self._refusals.pop(name, 0) + (exc.status == 403)
            if refused_for_now(exc, refusals):
                if refusals and len(self._refusals) < _MAX_REFUSALS_KEPT:
                    self._refusals[name] = refusals
                raise BackendUnavailable(f"Kubernetes could not create the job: {reason(exc)}") from None
            if not inline:  # its pod would wait for its volumes until its deadline
                with contextlib.suppress(OscarError):
                    await self.cancel(name)
            raise SubmissionRefused(f"Kubernetes refused the job: {reason(exc)}") from None
        except TRANSPORT_ERRORS as exc:
            raise BackendUnavailable(f"Kubernetes API unreachable: {exc}") from None
        finally:
            self._inflight -= 1

    async def _create(
        self, kind: str, body: dict[str, Any], *, parse: bool = False, dry_run: str | None = None
    ) -> dict[str, Any] | None:
        """POST ``body`` (a ``jobs`` or ``secrets`` object) in the namespace; return the object created (when
        ``parse``, else {}), or None if it existed already (409). The answer is left unparsed otherwise:
        no client model spares half the call's CPU."""
        group = "/apis/batch/v1" if kind == "jobs" else "/api/v1"
        collection = f"{group}/namespaces/{self._namespace}/{kind}"
        async with await create(self._api, collection, body, dry_run=dry_run) as raw:
            if raw.status == 409:
                return None
            if not 200 <= raw.status <= 299:
                refused = ApiException(status=raw.status, reason=raw.reason)
                refused.body = await raw.read()
                raise refused
            return cast("dict[str, Any]", json.loads(await raw.read())) if parse else {}

    async def _job_uid(self, name: str) -> str:
        job = await self._batch.read_namespaced_job(name, self._namespace)
        return str(job.metadata.uid)

    async def _deliver_body(self, service: Service, job_name: str, uid: str, event: bytes) -> None:
        """Store the parts of a body too large for the Job's environment, in Secrets the Job owns; its pod
        starts once they are all there. One at a time: each is hundreds of KiB."""
        for secret in manifests.body_secrets(service, job_id=job_name, job_uid=uid, event=event):
            await self._create("secrets", secret)

    async def cancel(self, job_id: str) -> None:
        with answers(f"delete job {job_id}"):
            try:
                await self._batch.delete_namespaced_job(
                    job_id, self._namespace, propagation_policy="Background"
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise

    async def run_sync(self, request: SyncRequest) -> SyncAnswer:
        """On a warm pod when the service has one free (``warm_kube``), else in a Job of its own."""
        warm = await self.warm.run(request)
        if warm is not None:
            return warm
        return await self._run_in_job(request)

    async def _run_in_job(self, request: SyncRequest) -> SyncAnswer:
        service = request.service
        # Random, not derived from the body: two identical requests are two runs.
        name = f"{service.name[:40]}-run-{secrets.token_hex(8)}"
        body = manifests.job(
            service,
            job_id=name,
            event=request.body,
            cluster=self._cluster,
            sync_deadline=math.ceil(request.timeout),
            any_bucket=request.any_bucket,
            sync_max_response=request.max_response_bytes,
        )
        with answers(f"create the job of a sync run of {service.name}"):
            created = await self._batch.create_namespaced_job(self._namespace, cast("client.V1Job", body))
        try:
            async with asyncio.timeout(request.timeout):
                if not manifests.body_inline(service, request.body):
                    with answers(f"store the body of a sync run of {service.name}"):
                        await self._deliver_body(service, name, created.metadata.uid, request.body)
                job = await await_end(
                    self._api, namespace=self._namespace, name=name, version=created.metadata.resource_version
                )
            outcome = await job_outcome(self._core, self._namespace, job, timestamps=False)
        except TimeoutError:
            raise RunTimeout(
                f"the run did not finish within {request.timeout:g} s; its Job was deleted"
            ) from None
        finally:
            # The response is read (or will never be): the Job and its pod go now, not at their TTL.
            with contextlib.suppress(OscarError):
                await self.cancel(name)
        # An answer over the limit is refused from its declared size, before it is decoded.
        log_text, response = response_frame.unframe(
            outcome.log, max_response_bytes=request.max_response_bytes
        )
        if outcome.status is JobStatus.SUCCEEDED:
            if response is None:
                raise ResponseLost("the run succeeded but its response is missing from the pod log")
            return SyncAnswer.of_bytes(response)
        if past_deadline(job):
            raise RunTimeout(f"the run did not finish within {request.timeout:g} s and was killed")
        code = "unknown" if outcome.exit_code is None else outcome.exit_code
        raise ScriptFailed(f"the script exited with code {code}: {log_text[-2000:]}")


def _identity(address: str, port: int) -> tuple[str, int]:
    return address, port


def _api_kind(kind: str) -> str:
    return {"configmap": "config_map", "secret": "secret"}[kind]
