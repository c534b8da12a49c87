"""The local executor: jobs and sync runs on this machine, with no cluster.

Stage-in and stage-out run here, in the manager, through the supervisor functions and the manager's own
storage clients; only the user's script runs in a child process, sandboxed by bubblewrap when available.
Credentials therefore never enter the sandbox, and no interpreter is started per job. The script runs in
its service's image (pulled once, unpacked, bound read-only as the sandbox's root) or, where images are
off or out of reach, with this machine's tools (``backends.images.service_images``). This module keeps the
queue, its workers and what ends a job or a sync run; one run itself (workspace, stage-in, image, sandboxed
script) is ``backends.local_run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from oscar_manager.backends.base import (
    BackendUnavailable,
    JobReporter,
    JobRequest,
    RunTimeout,
    ScriptFailed,
    SyncRequest,
)
from oscar_manager.backends.exposed import Exposer
from oscar_manager.backends.exposed_local import LocalExposer
from oscar_manager.backends.exposed_policy import ExposeTimings
from oscar_manager.backends.images.service_images import ImageMode, ServiceImages
from oscar_manager.backends.local_run import LocalRunner
from oscar_manager.backends.machine import this_machine
from oscar_manager.backends.sandbox import Sandbox
from oscar_manager.domain.cluster import ClusterOffers, NodeStatus
from oscar_manager.domain.jobs import JobOutcome, JobStatus
from oscar_manager.domain.service import Service
from oscar_manager.errors import OscarError
from oscar_manager.storage.base import STORE_FAULTS
from oscar_manager.storage.blocking import run_blocking
from oscar_manager.storage.providers import Stores
from oscar_manager.supervisor.answer import SyncAnswer, render_response
from oscar_manager.supervisor.deadline import Deadline, StagingTimeout
from oscar_manager.supervisor.log import SupervisorLog
from oscar_manager.supervisor.stage import stage_out
from oscar_manager.supervisor.workspace import Workspace

log = logging.getLogger(__name__)


class LocalBackend:
    durable_submissions = False
    follows_jobs = False
    exposed: Exposer | None

    def __init__(
        self,
        *,
        stores: Stores,
        sandbox: Sandbox,
        work_root: Path,
        concurrency: int,
        job_timeout: float | None,
        max_pids: int | None = None,
        disk_bytes: int | None = None,
        expose_timings: ExposeTimings | None = None,
        images: ServiceImages | None = None,
    ) -> None:
        self._images = images or ServiceImages(None, mode=ImageMode.HOST, sandboxed=sandbox.sandboxed)
        self._sandbox = sandbox
        self._work_root = work_root
        self._concurrency = concurrency
        self._job_timeout = job_timeout
        self._runner = LocalRunner(
            stores=stores,
            sandbox=sandbox,
            images=self._images,
            work_root=work_root,
            max_pids=max_pids,
            disk_bytes=disk_bytes,
        )
        self._queue: asyncio.Queue[JobRequest] = asyncio.Queue()
        self._queued: set[str] = set()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._running_services: dict[str, Service] = {}  # job -> its service, for what jobs request
        self._workers: list[asyncio.Task[None]] = []
        self._sync_slots = asyncio.Semaphore(concurrency)
        self._reporter: JobReporter | None = None
        self._exposer = LocalExposer(
            sandbox=sandbox,
            work_root=work_root,
            images=self._images,
            timings=expose_timings,
            max_pids=max_pids,
            disk_bytes=disk_bytes,
        )
        self.exposed = self._exposer

    @property
    def work_root(self) -> Path:
        """Where job and run folders are made (each removed when its run ends)."""
        return self._work_root

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self, reporter: JobReporter) -> None:
        self._reporter = reporter
        self._work_root.mkdir(parents=True, exist_ok=True)
        self._workers = [
            asyncio.create_task(self._worker(), name=f"local-job-worker-{n}")
            for n in range(self._concurrency)
        ]

    async def stop(self) -> None:
        """Stop taking jobs and kill running scripts (their events stay claimed and run again on restart), and
        end the exposed services' instances (exposed again at the next start)."""
        for task in [*self._workers, *self._running.values()]:
            task.cancel()
        await asyncio.gather(*self._workers, *self._running.values(), return_exceptions=True)
        self._workers = []
        self._running.clear()
        await self._exposer.close()
        if self._images.store is not None:
            await self._images.store.close()

    async def follow_jobs(self, up: Callable[[], None]) -> None:
        """Nothing to follow: each job's end is reported by the process that ran it."""
        up()

    async def nodes(self) -> list[NodeStatus]:
        return [this_machine(self._running_services.values())]

    async def offers(self) -> ClusterOffers:
        """Nothing beyond CPU and memory: scripts get no GPU scheduled, and nothing is offloaded."""
        return ClusterOffers()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "local",
            "sandbox": "bubblewrap" if self._sandbox.sandboxed else "none",
            "scripts": self._sandbox.refusal or ("run" if self._sandbox.sandboxed else "run unsandboxed"),
            "limits": self._sandbox.describe_limits(),
            "images_pulled": self._images.store is not None,
            "images": self._images.describe(),
            "concurrency": self._concurrency,
        }

    # --- async jobs --------------------------------------------------------------------------------

    def free_slots(self) -> int:
        return max(self._concurrency - len(self._queued) - len(self._running), 0)

    async def submit(self, request: JobRequest) -> None:
        if not self._workers:
            raise BackendUnavailable("the local executor is not running")
        if request.job_id in self._queued or request.job_id in self._running:
            return
        self._queued.add(request.job_id)
        await self._queue.put(request)

    async def prepull(self, services: list[Service]) -> int:
        """Pull the images of ``services`` ahead of their jobs; how many could not be had (logged)."""
        return await self._images.prepull(services)

    async def prepare_service(self, service: Service, *, previous: Service | None = None) -> None:
        """Nothing to prepare (a local job reads its service from the manager itself), but its image is
        resolved again at its next job: a tag may have been pushed again since."""
        self._images.refresh(service)

    async def remove_service(self, service: Service) -> None:
        """Nothing kept per service (its jobs are cancelled one by one by the caller)."""

    async def cancel(self, job_id: str) -> None:
        self._queued.discard(job_id)
        task = self._running.get(job_id)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _worker(self) -> None:
        while True:
            request = await self._queue.get()
            if request.job_id not in self._queued:  # cancelled while queued
                continue
            self._queued.discard(request.job_id)
            task = asyncio.create_task(self._execute(request), name=f"job-{request.job_id}")
            self._running[request.job_id] = task
            self._running_services[request.job_id] = request.service
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # the worker itself is being stopped
                # else only the job was cancelled (deleted): keep serving the queue
            except Exception:
                log.exception("job %s crashed", request.job_id)
            finally:
                self._running.pop(request.job_id, None)
                self._running_services.pop(request.job_id, None)

    async def _execute(self, request: JobRequest) -> None:
        assert self._reporter is not None
        await self._reporter.started(request.job_id, at=datetime.now(UTC))
        supervisor_log = SupervisorLog(request.service.log_level)
        workspace = self._runner.workspace()
        try:
            outcome = await self._job_outcome(request, workspace, supervisor_log)
        except STORE_FAULTS as exc:
            # The store, not the script, failed: accepted work runs again once the store recovers.
            log.warning("job %s will run again: %s", request.job_id, exc.message)
            await self._reporter.retry_later(request.job_id, reason=exc.message)
            return
        finally:
            await asyncio.to_thread(workspace.cleanup)
        await self._reporter.finished(request.job_id, outcome=outcome)

    async def _job_outcome(
        self, request: JobRequest, workspace: Workspace, slog: SupervisorLog
    ) -> JobOutcome:
        exit_code: int | None = None
        deadline = Deadline(self._job_timeout)
        try:
            run = await self._runner.run(
                service=request.service,
                body=request.payload,
                job_id=request.job_id,
                workspace=workspace,
                slog=slog,
                deadline=deadline,
            )
            exit_code = run.result.exit_code
            if run.succeeded:
                await stage_out(
                    service=request.service,
                    invocation=run.invocation,
                    stores=run.stores.sink,
                    workspace=workspace,
                    log=slog,
                    deadline=deadline,
                )
                status = JobStatus.SUCCEEDED
            else:
                status = JobStatus.FAILED
        except STORE_FAULTS:
            raise  # not the job's end: it is retried (``_execute``)
        except OscarError as exc:
            slog.error(f"{type(exc).__name__}: {exc.message}")
            status = JobStatus.FAILED
        except Exception as exc:  # a bug or an unexpected OS error: the job must still end, as Failed
            log.exception("job %s failed unexpectedly", request.job_id)
            slog.error(f"internal error: {type(exc).__name__}: {exc}")
            status = JobStatus.FAILED
        return JobOutcome(
            status=status,
            exit_code=exit_code,
            log=slog.text(),
            finished_at=datetime.now(UTC),
            log_times=slog.times(),
        )

    # --- sync runs ---------------------------------------------------------------------------------

    async def run_sync(self, request: SyncRequest) -> SyncAnswer:
        slog = SupervisorLog(request.service.log_level)
        workspace = self._runner.workspace(prefix="run-")
        # One deadline for staging in, the script, staging out and the response; a sync slot is held only
        # while the script runs, so a provider that never answers cannot starve other services' runs.
        deadline = Deadline(request.timeout)
        try:
            run = await self._runner.run(
                service=request.service,
                body=request.body,
                job_id=f"{request.service.name}-run",
                workspace=workspace,
                slog=slog,
                deadline=deadline,
                any_bucket=request.any_bucket,
                slots=self._sync_slots,
            )
            if run.result.timed_out:
                raise RunTimeout(f"the script did not finish within {request.timeout:g} s and was killed")
            if not run.succeeded:
                tail = run.result.output[-2000:].decode("utf-8", errors="replace")
                bounds = "".join(f" ({reason})" for reason in run.bounds_hit)
                raise ScriptFailed(f"the script exited with code {run.result.exit_code}{bounds}: {tail}")
            await stage_out(
                service=request.service,
                invocation=run.invocation,
                stores=run.stores.sink,
                workspace=workspace,
                log=slog,
                deadline=deadline,
            )
            # The answer keeps its file open: it is sent after the workspace is gone.
            return await run_blocking(
                functools.partial(
                    render_response,
                    invocation=run.invocation,
                    workspace=workspace,
                    script_output=run.result.output,
                    limit=request.max_response_bytes,
                    log=slog,
                ),
                discard=SyncAnswer.close,
            )
        except StagingTimeout as exc:
            raise RunTimeout(exc.message) from None
        finally:
            await asyncio.to_thread(workspace.cleanup)
