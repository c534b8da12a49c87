"""The Kubernetes backend's two watches on Jobs.

The job watcher follows the services' Jobs in the namespace and reports their starts (once their pod
runs) and ends, so the job rows stay current (of several managers, the leader runs it): it resumes from
the last resourceVersion, and lists again after 410 Gone. A sync run's Job is left out of it (labelled)
and awaited by its request instead, with a watch on that one Job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from oscar_manager.backends import manifests
from oscar_manager.backends.base import BackendUnavailable, JobReporter
from oscar_manager.backends.kube_answers import FORBIDDEN_PAUSE, KubernetesError, reason, refused_for_now
from oscar_manager.backends.kube_client import TRANSPORT_ERRORS
from oscar_manager.backends.kube_jobs import ended, job_outcome, watched_job
from oscar_manager.domain.service import SERVICE_LABEL

log = logging.getLogger(__name__)

WATCH_SECONDS = 60
# The job watcher's Jobs: the services' ones, not those of sync runs (awaited by their requests).
WATCHED_JOBS = f"{SERVICE_LABEL},!{manifests.SYNC_LABEL}"


class Watch(watch.Watch):
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

    def unmarshal_event(self, data: str | bytes, response_type: str | None) -> Any:
        """Events of ``return_type="object"`` as the dicts parsed from the line: the library parses each
        event, serialises its object again and parses that into an equal dict (three passes over every
        Job's JSON where one does). Errors, bookmarks and the resourceVersion are the library's."""
        return super().unmarshal_event(data, None if response_type == "object" else response_type)


class JobWatcher:
    """Reports the starts and ends of the namespace's service Jobs to ``reporter``, each once.

    ``watching`` is set while the watch is established (cleared while it is being re-established).
    """

    def __init__(
        self,
        api: client.ApiClient,
        *,
        namespace: str,
        reporter: JobReporter,
        watching: asyncio.Event,
        up: Callable[[], None] = lambda: None,
    ) -> None:
        self._api = api
        self._batch = client.BatchV1Api(api)
        self._core = client.CoreV1Api(api)
        self._namespace = namespace
        self._reporter = reporter
        self._watching = watching
        self._up = up  # told each time the watch is (re-)established
        self._started: set[str] = set()
        self._finished: set[str] = set()

    async def run(self) -> None:
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
                self._watching.set()
                self._up()
                # Events as plain dicts, made into slim V1Jobs (watched_job): whole models cost more CPU
                # than anything else the manager did per job.
                async with Watch(self._api, return_type="object") as stream:
                    async for event in stream.stream(
                        self._batch.list_namespaced_job,
                        self._namespace,
                        label_selector=WATCHED_JOBS,
                        resource_version=version,
                        timeout_seconds=WATCH_SECONDS,
                    ):
                        job = watched_job(event["object"])
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
            except TRANSPORT_ERRORS as exc:
                log.warning("job watch lost the API server (%s); retrying in %.1f s", exc, delay)
            except Exception:
                log.exception("job watch failed; retrying in %.1f s", delay)
            self._watching.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _observe(self, job: client.V1Job) -> None:
        name = job.metadata.name
        status = job.status
        if ended(job):
            if name not in self._finished:
                outcome = await job_outcome(self._core, self._namespace, job, timestamps=True)
                await self._reporter.finished(name, outcome=outcome)
                self._finished.add(name)
        elif status is not None and status.ready and name not in self._started:
            # Running once its pod is: ``ready`` counts the pods whose containers run (a Job's pods have no
            # readiness probes), where ``active`` counts them from their creation, unscheduled and
            # pulling images too. The Job says not since when: it is seen now (a start seen only in a
            # listing after a restart is recorded late).
            await self._reporter.started(name, at=datetime.now(UTC))
            self._started.add(name)

    async def _skip_recorded_ends(self, jobs: list[client.V1Job]) -> None:
        """After a restart (or 410 Gone) the listing holds every Job still within its TTL: the ends the
        registry has already need no second copy of their pod's log."""
        done = [job.metadata.name for job in jobs if job.metadata.name not in self._finished and ended(job)]
        if done:
            self._finished.update(await self._reporter.ended(done))

    def _forget(self, name: str) -> None:
        """A deleted Job (its TTL, or the service's deletion) will not be seen again."""
        self._started.discard(name)
        self._finished.discard(name)


async def await_end(api: client.ApiClient, *, namespace: str, name: str, version: str | None) -> client.V1Job:
    """The Job ``name`` once it has ended, by a watch on it alone (from ``version``, or from the Job as
    it is now when ``None``): resumed after a lost connection or a 5xx, and after 410 Gone started again
    from the Job as it is now."""
    batch = client.BatchV1Api(api)
    delay = 0.2
    refusals = 0  # 403s so far: one from an apiserver that is starting is not final
    while True:
        try:
            if version is None:
                current = await batch.read_namespaced_job(name, namespace)
                if ended(current):
                    return current
                version = current.metadata.resource_version
            async with Watch(api) as stream:
                async for event in stream.stream(
                    batch.list_namespaced_job,
                    namespace,
                    field_selector=f"metadata.name={name}",
                    resource_version=version,
                    timeout_seconds=WATCH_SECONDS,
                ):
                    job: client.V1Job = event["object"]
                    version = job.metadata.resource_version
                    if event["type"] == "DELETED":
                        raise BackendUnavailable(f"the Job {name} of the sync run was deleted")
                    if ended(job):
                        return job
            continue
        except ApiException as exc:
            if exc.status == 410:
                version = None
                continue
            if exc.status == 404:
                raise BackendUnavailable(f"the Job {name} of the sync run was deleted") from None
            refusals += exc.status == 403
            if not refused_for_now(exc, refusals):
                raise KubernetesError(f"Kubernetes refused to watch job {name}: {reason(exc)}") from None
            if exc.status == 403:
                delay = max(delay, FORBIDDEN_PAUSE)
            problem = reason(exc)
        except TRANSPORT_ERRORS as exc:
            problem = str(exc) or type(exc).__name__
        log.warning("lost the watch of sync job %s (%s); retrying in %.1f s", name, problem, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)
