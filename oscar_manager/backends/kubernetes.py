"""Jobs as Kubernetes Jobs, through kubernetes-asyncio (the only module that imports it).

Submitting creates a Job named after the intake's dedup key, so a resubmission (after a crash, or of a
redelivered event) answers 409 AlreadyExists and counts as done. One watch on the namespace's Jobs keeps the
job rows current: it resumes from the last resourceVersion, and lists again after 410 Gone. When a Job
ends, its pod's log is copied into the registry, so logs outlive the pod and its TTL.

A sync ``/run`` is a Job of its own, labelled so the watcher leaves it alone: the request awaits it with a
watch on that one Job, reads the response the supervisor framed into the pod log, and deletes the Job;
past the run's timeout the Job is deleted and the answer is 504 (Kubernetes also kills it by its
``activeDeadlineSeconds``, should the manager be gone).

A body too large for the Job's environment (``manifests.body_inline``) goes, after the Job, into Secrets
the Job owns, which the garbage collector deletes with it; the pod waits for them as for any volume. A
resubmission finds the Job (409) and creates what is missing of them.

Not here: per-user namespaces, Kueue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import aiohttp
from kubernetes_asyncio import client, config, watch
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
from oscar_manager.backends.kube_answers import KubernetesError, invalid_fields, reason, retryable
from oscar_manager.backends.kube_nodes import cluster_nodes
from oscar_manager.domain import logtimes
from oscar_manager.domain.cluster import NodeStatus
from oscar_manager.domain.jobs import JobOutcome, JobStatus
from oscar_manager.domain.service import SERVICE_LABEL, Service
from oscar_manager.errors import BadRequest, OscarError
from oscar_manager.supervisor import response_frame
from oscar_manager.supervisor.answer import SyncAnswer

log = logging.getLogger(__name__)

WATCH_SECONDS = 60
# The job watcher's Jobs: the services' ones, not those of sync runs (awaited by their requests).
WATCHED_JOBS = f"{SERVICE_LABEL},!{manifests.SYNC_LABEL}"
_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


class ResponseLost(OscarError):
    """The run ended well but its response is not in the pod log (a log rotated or cut by the node)."""

    status_code = 502


@contextlib.contextmanager
def _answers(action: str) -> Any:
    """Kubernetes answers in the manager's terms: 5xx and lost connections are worth retrying; an invalid
    object is the request's fault (400, naming the field); any other refusal (RBAC...) is a 502."""
    try:
        yield
    except ApiException as exc:
        if retryable(exc):
            raise BackendUnavailable(f"Kubernetes could not {action}: {reason(exc)}") from None
        if exc.status == 422:
            fields = ", ".join(invalid_fields(exc)) or "unknown field"
            raise BadRequest(f"Kubernetes found {fields} invalid: cannot {action}: {reason(exc)}") from None
        raise KubernetesError(f"Kubernetes refused to {action}: {reason(exc)}") from None
    except _TRANSPORT_ERRORS as exc:
        raise BackendUnavailable(f"Kubernetes API unreachable: cannot {action}: {exc}") from None


async def new_api_client(kubeconfig: Path | None) -> client.ApiClient:
    """In a pod: its service account. Elsewhere: ``kubeconfig``, ``$KUBECONFIG`` or ``~/.kube/config``."""
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        return client.ApiClient()
    return await config.new_client_from_config(config_file=str(kubeconfig) if kubeconfig else None)


def without_environment_lookups(api: client.ApiClient) -> None:
    """The client's aiohttp session trusts the environment, so every request reads ``~/.netrc`` and the
    proxy variables in a worker thread: two thread hops and a file read per Job created. The API server's
    address and credentials come from the kubeconfig (its ``proxy-url`` too), so a session on the same
    connector without those lookups replaces it."""
    rest = api.rest_client
    trusting = rest.pool_manager
    rest.pool_manager = aiohttp.ClientSession(
        # The library's read buffer too: watch events carrying big objects outgrow aiohttp's default.
        connector=trusting.connector,
        trust_env=False,
        read_bufsize=2**21,
    )
    trusting.detach()


class KubernetesBackend:
    durable_submissions = True

    def __init__(
        self,
        api: client.ApiClient,
        *,
        namespace: str,
        cluster: manifests.ClusterConfig,
        concurrency: int = 64,
    ) -> None:
        self._api = api
        self._batch = client.BatchV1Api(api)
        self._core = client.CoreV1Api(api)
        self._namespace = namespace
        self._cluster = cluster
        self._concurrency = concurrency
        self._inflight = 0
        self._reporter: JobReporter | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._started: set[str] = set()
        self._finished: set[str] = set()
        self.watching = asyncio.Event()

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls, *, kubeconfig: Path | None, namespace: str, cluster: manifests.ClusterConfig, concurrency: int
    ) -> AsyncIterator[KubernetesBackend]:
        try:
            api = await new_api_client(kubeconfig)
        except (config.ConfigException, OSError) as exc:
            raise BackendUnavailable(f"no Kubernetes configuration: {exc}") from None
        without_environment_lookups(api)
        async with api:
            yield cls(api, namespace=namespace, cluster=cluster, concurrency=concurrency)

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self, reporter: JobReporter) -> None:
        self._reporter = reporter
        self._watcher = asyncio.create_task(self._watch_jobs(), name="kubernetes-job-watcher")

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None

    async def nodes(self) -> list[NodeStatus]:
        return await cluster_nodes(self._api, namespace=self._namespace)

    def describe(self) -> dict[str, Any]:
        return {"kind": "kubernetes", "namespace": self._namespace, "image_pulled": True}

    def free_slots(self) -> int:
        return max(self._concurrency - self._inflight, 0)

    # --- services ----------------------------------------------------------------------------------

    async def prepare_service(self, service: Service) -> None:
        """Create or replace the service's ConfigMap (definition, script) and Secret (its secrets)."""
        await self._apply("configmap", manifests.config_map(service))
        secret = manifests.secret(service)
        if secret is not None:
            await self._apply("secret", secret)
        else:
            await self._delete_quietly("secret", service.name)

    async def remove_service(self, service: Service) -> None:
        """Delete the service's ConfigMap, Secret and Jobs (their pods go with them, in the background)."""
        await self._delete_quietly("configmap", service.name)
        await self._delete_quietly("secret", service.name)
        with _answers(f"delete the jobs of {service.name}"):
            await self._batch.delete_collection_namespaced_job(
                self._namespace,
                label_selector=f"{SERVICE_LABEL}={service.name}",
                propagation_policy="Background",
            )

    async def _apply(self, kind: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        create = getattr(self._core, f"create_namespaced_{_api_kind(kind)}")
        replace = getattr(self._core, f"replace_namespaced_{_api_kind(kind)}")
        with _answers(f"store {kind} {name}"):
            try:
                await create(self._namespace, body)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                await replace(name, self._namespace, body)

    async def _delete_quietly(self, kind: str, name: str) -> None:
        delete = getattr(self._core, f"delete_namespaced_{_api_kind(kind)}")
        with _answers(f"delete {kind} {name}"):
            try:
                await delete(name, self._namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise

    # --- jobs --------------------------------------------------------------------------------------

    async def submit(self, request: JobRequest) -> None:
        service, name, payload = request.service, request.job_id, request.payload
        body = manifests.job(service, job_id=name, event=payload, cluster=self._cluster)
        inline = manifests.body_inline(payload)
        self._inflight += 1
        try:
            created = await self._create(self._batch.create_namespaced_job, body, parse=not inline)
            if not inline:
                # Created before (a resubmission): its Secrets may be there too, or only some of them.
                uid = created["metadata"]["uid"] if created else await self._job_uid(name)
                await self._deliver_body(service, name, uid, payload)
        except ApiException as exc:
            if retryable(exc):
                raise BackendUnavailable(f"Kubernetes could not create the job: {reason(exc)}") from None
            if not inline:  # its pod would wait for its volumes until its deadline
                with contextlib.suppress(OscarError):
                    await self.cancel(name)
            raise SubmissionRefused(f"Kubernetes refused the job: {reason(exc)}") from None
        except _TRANSPORT_ERRORS as exc:
            raise BackendUnavailable(f"Kubernetes API unreachable: {exc}") from None
        finally:
            self._inflight -= 1

    async def _create(
        self, create: Callable[..., Awaitable[object]], body: dict[str, Any], *, parse: bool = False
    ) -> dict[str, Any] | None:
        """POST ``body``; return the object created (when ``parse``, else {}), or None if it existed already
        (409). The answer is left unparsed otherwise: no client model spares half the call's CPU. (The
        client is typed for its models; it serialises plain dicts all the same.)"""
        answer = await create(self._namespace, body, _preload_content=False)
        async with cast("aiohttp.ClientResponse", answer) as raw:
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
            await self._create(self._core.create_namespaced_secret, secret)

    async def cancel(self, job_id: str) -> None:
        with _answers(f"delete job {job_id}"):
            try:
                await self._batch.delete_namespaced_job(
                    job_id, self._namespace, propagation_policy="Background"
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise

    async def run_sync(self, request: SyncRequest) -> SyncAnswer:
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
        with _answers(f"create the job of a sync run of {service.name}"):
            created = await self._batch.create_namespaced_job(self._namespace, cast("client.V1Job", body))
        try:
            async with asyncio.timeout(request.timeout):
                if not manifests.body_inline(request.body):
                    with _answers(f"store the body of a sync run of {service.name}"):
                        await self._deliver_body(service, name, created.metadata.uid, request.body)
                job = await self._await_end(name, created.metadata.resource_version)
            outcome = await self._outcome(job, timestamps=False)
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
        if _past_deadline(job):
            raise RunTimeout(f"the run did not finish within {request.timeout:g} s and was killed")
        code = "unknown" if outcome.exit_code is None else outcome.exit_code
        raise ScriptFailed(f"the script exited with code {code}: {log_text[-2000:]}")

    async def _await_end(self, name: str, version: str | None) -> client.V1Job:
        """The Job once it has ended, by a watch on it alone: resumed after a lost connection or a 5xx,
        and after 410 Gone started again from the Job as it is now."""
        delay = 0.2
        while True:
            try:
                if version is None:
                    current = await self._batch.read_namespaced_job(name, self._namespace)
                    if _ended(current):
                        return current
                    version = current.metadata.resource_version
                async with _Watch(self._api) as stream:
                    async for event in stream.stream(
                        self._batch.list_namespaced_job,
                        self._namespace,
                        field_selector=f"metadata.name={name}",
                        resource_version=version,
                        timeout_seconds=WATCH_SECONDS,
                    ):
                        job: client.V1Job = event["object"]
                        version = job.metadata.resource_version
                        if event["type"] == "DELETED":
                            raise BackendUnavailable(f"the Job {name} of the sync run was deleted")
                        if _ended(job):
                            return job
                continue
            except ApiException as exc:
                if exc.status == 410:
                    version = None
                    continue
                if exc.status == 404:
                    raise BackendUnavailable(f"the Job {name} of the sync run was deleted") from None
                if not retryable(exc):
                    raise KubernetesError(f"Kubernetes refused to watch job {name}: {reason(exc)}") from None
                problem = reason(exc)
            except _TRANSPORT_ERRORS as exc:
                problem = str(exc) or type(exc).__name__
            log.warning("lost the watch of sync job %s (%s); retrying in %.1f s", name, problem, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    # --- the job watcher ---------------------------------------------------------------------------

    async def _watch_jobs(self) -> None:
        version: str | None = None
        delay = 0.5
        while True:
            try:
                if version is None:
                    listed = await self._batch.list_namespaced_job(
                        self._namespace, label_selector=WATCHED_JOBS
                    )
                    await self._skip_recorded_ends(listed.items)
                    for job in listed.items:
                        await self._observe(job)
                    version = listed.metadata.resource_version
                self.watching.set()
                # Events as plain dicts, made into slim V1Jobs (_watched_job): whole models cost more CPU
                # than anything else the manager did per job.
                async with _Watch(self._api, return_type="object") as stream:
                    async for event in stream.stream(
                        self._batch.list_namespaced_job,
                        self._namespace,
                        label_selector=WATCHED_JOBS,
                        resource_version=version,
                        timeout_seconds=WATCH_SECONDS,
                    ):
                        job = _watched_job(event["object"])
                        if event["type"] == "DELETED":
                            self._forget(job.metadata.name)
                        else:
                            await self._observe(job)
                        # Only once observed: a failure before resumes from the previous version.
                        version = job.metadata.resource_version
                delay = 0.5
            except ApiException as exc:
                if exc.status == 410:
                    log.info("job watch expired at resourceVersion %s: listing again", version)
                    version = None
                    continue
                log.warning("job watch failed: %s; retrying in %.1f s", reason(exc), delay)
            except _TRANSPORT_ERRORS as exc:
                log.warning("job watch lost the API server (%s); retrying in %.1f s", exc, delay)
            except Exception:
                log.exception("job watch failed; retrying in %.1f s", delay)
            self.watching.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _observe(self, job: client.V1Job) -> None:
        assert self._reporter is not None
        name = job.metadata.name
        status = job.status
        if _ended(job):
            if name not in self._finished:
                await self._reporter.finished(name, outcome=await self._outcome(job, timestamps=True))
                self._finished.add(name)
        elif status is not None and status.active and name not in self._started:
            await self._reporter.started(name, at=status.start_time or datetime.now(UTC))
            self._started.add(name)

    async def _skip_recorded_ends(self, jobs: list[client.V1Job]) -> None:
        """After a restart (or 410 Gone) the listing holds every Job still within its TTL: the ends the
        registry has already need no second copy of their pod's log."""
        assert self._reporter is not None
        ended = [job.metadata.name for job in jobs if job.metadata.name not in self._finished and _ended(job)]
        if ended:
            self._finished.update(await self._reporter.ended(ended))

    def _forget(self, name: str) -> None:
        """A deleted Job (its TTL, or the service's deletion) will not be seen again."""
        self._started.discard(name)
        self._finished.discard(name)

    async def _outcome(self, job: client.V1Job, *, timestamps: bool) -> JobOutcome:
        """The job's end, with its pod's log copied (so it outlives the pod). With ``timestamps`` the log is
        read with the kubelet's time of each line, kept apart from the text (a sync run's answer frame is
        read from the plain log)."""
        job_name = job.metadata.name
        succeeded = "Complete" in _conditions(job)
        deadline = job.spec.active_deadline_seconds if job.spec else None
        text = ""
        times: logtimes.LineTimes | None = None
        exit_code: int | None = 0 if succeeded else None
        try:
            pods = await self._core.list_namespaced_pod(
                self._namespace, label_selector=f"job-name={job_name}"
            )
            for pod in pods.items[:1]:
                text = await self._core.read_namespaced_pod_log(
                    pod.metadata.name, self._namespace, container=manifests.CONTAINER, timestamps=timestamps
                )
                if timestamps:
                    text, times = logtimes.unstamp(text)
                for container in (pod.status.container_statuses or []) if pod.status else []:
                    terminated = container.state.terminated if container.state else None
                    if container.name == manifests.CONTAINER and terminated is not None:
                        exit_code = terminated.exit_code
        except ApiException as exc:
            text = f"(the log could not be read: {reason(exc)})\n"
        if _past_deadline(job):
            text += f"Kubernetes killed the job after its {deadline} s timeout (DeadlineExceeded)\n"
        return JobOutcome(
            status=JobStatus.SUCCEEDED if succeeded else JobStatus.FAILED,
            exit_code=exit_code,
            log=text,
            finished_at=datetime.now(UTC),
            log_times=times,  # lines added here have none: they show the job's end
        )


class _Watch(watch.Watch):
    """kubernetes-asyncio's Watch, deserialising events with the backend's client. The library's builds a
    client of its own for each watch, and with it a TLS context: about 30 ms of CPU on the event loop for
    every sync run. (Sets what ``Watch.__init__`` sets; ``close`` releases the response only.)"""

    def __init__(self, api: client.ApiClient, return_type: str | None = None) -> None:
        self._raw_return_type = return_type
        self._stop = False
        self._api_client = api
        self.resource_version = None
        self.resp = None

    async def close(self) -> None:
        if self.resp is not None:
            self.resp.release()
            self.resp = None


# Models built without the client's checks for required fields (a slim Job has no pod template).
_UNCHECKED = client.Configuration()
_UNCHECKED.client_side_validation = False


def _watched_job(raw: dict[str, Any]) -> client.V1Job:
    """What the job watcher reads of a Job (name, resourceVersion, status, active deadline) as a V1Job.
    Building models for the whole object, pod template and all, took a millisecond per watch event."""
    metadata = raw.get("metadata") or {}
    spec = raw.get("spec") or {}
    status = raw.get("status")
    return client.V1Job(
        metadata=client.V1ObjectMeta(
            name=metadata.get("name"),
            resource_version=metadata.get("resourceVersion"),
            labels=metadata.get("labels"),
        ),
        spec=client.V1JobSpec(
            template=None,
            active_deadline_seconds=spec.get("activeDeadlineSeconds"),
            local_vars_configuration=_UNCHECKED,
        ),
        status=None
        if status is None
        else client.V1JobStatus(
            active=status.get("active"),
            start_time=_timestamp(status.get("startTime")),
            conditions=[
                client.V1JobCondition(
                    type=condition.get("type"),
                    status=condition.get("status"),
                    reason=condition.get("reason"),
                    local_vars_configuration=_UNCHECKED,
                )
                for condition in status.get("conditions") or []
            ],
        ),
    )


def _timestamp(value: str | None) -> datetime | None:
    """An RFC 3339 time as the API server writes it (``2024-05-01T10:00:00Z``)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _conditions(job: client.V1Job) -> dict[str, str]:
    """The Job's true conditions, by type, with their reasons (``Failed`` -> ``DeadlineExceeded``...)."""
    status = job.status
    return {c.type: c.reason or "" for c in (status.conditions or []) if c.status == "True"} if status else {}


def _ended(job: client.V1Job) -> bool:
    return bool(_conditions(job).keys() & {"Complete", "Failed"})


def _past_deadline(job: client.V1Job) -> bool:
    """Killed by Kubernetes at its ``activeDeadlineSeconds``."""
    return _conditions(job).get("Failed") == "DeadlineExceeded"


def _api_kind(kind: str) -> str:
    return {"configmap": "config_map", "secret": "secret"}[kind]
