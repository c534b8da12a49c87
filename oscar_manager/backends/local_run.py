"""One run of a service's script on this machine, for the local executor's jobs and sync runs.

A run gets a fresh workspace (owned by the script's user when scripts run unprivileged), stages the
invocation's input in through the manager's own storage clients, chooses the service's image (or this
machine's tools) and runs the script in the sandbox, within what is left of the run's deadline. Staging
out is the caller's: a job and a sync run end differently.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from oscar_manager.backends.images.service_images import ServiceImages
from oscar_manager.backends.sandbox import Sandbox, ScriptResult, ScriptRun
from oscar_manager.domain.quantities import quantity_bytes, quantity_cores
from oscar_manager.domain.service import Service, wants_network
from oscar_manager.storage.providers import ServiceProviders, Stores
from oscar_manager.supervisor.deadline import Deadline
from oscar_manager.supervisor.log import SupervisorLog
from oscar_manager.supervisor.stage import Invocation, script_environment, stage_in
from oscar_manager.supervisor.workspace import SCRIPT_NAME, Workspace


@dataclass
class RunOutcome:
    """The outcome of staging in and running the script once."""

    invocation: Invocation
    result: ScriptResult
    bounds_hit: list[str]  # the job's bounds that stopped it, as log sentences
    stores: ServiceProviders  # the service's providers, for the uploads that follow a successful run

    @property
    def succeeded(self) -> bool:
        return not self.result.timed_out and self.result.exit_code == 0 and not self.bounds_hit


class LocalRunner:
    """Stages in and runs scripts in workspaces under ``work_root``, with the backend's sandbox and images."""

    def __init__(
        self,
        *,
        stores: Stores,
        sandbox: Sandbox,
        images: ServiceImages,
        work_root: Path,
        max_pids: int | None,
        disk_bytes: int | None,
    ) -> None:
        self._stores = stores
        self._sandbox = sandbox
        self._images = images
        self._work_root = work_root
        self._max_pids = max_pids
        self._disk_bytes = disk_bytes

    def workspace(self, prefix: str = "job-") -> Workspace:
        """A new workspace under ``work_root`` (its owner's to clean up)."""
        workspace = Workspace.create(self._work_root, prefix=prefix)
        owner = self._sandbox.runs_as
        if owner is not None:
            # Scripts run as an unprivileged user: their folders must be theirs (the manager reaches them
            # only through the descriptors the workspace holds, so what the script does there is its own).
            try:
                workspace.chown(*owner)
            except BaseException:
                workspace.cleanup()
                raise
        return workspace

    async def run(
        self,
        *,
        service: Service,
        body: bytes,
        job_id: str,
        workspace: Workspace,
        slog: SupervisorLog,
        deadline: Deadline,
        any_bucket: bool = False,
        slots: asyncio.Semaphore | None = None,
    ) -> RunOutcome:
        """Stage ``body``'s input into ``workspace`` and run the script once; with ``slots``, the script waits
        for one (held only while it runs)."""
        self._sandbox.check_allowed()  # at once, before anything is staged for a script that cannot run
        invocation = Invocation.read(body)
        async with self._images.chosen(service, log=slog, deadline=deadline) as chosen:
            stores = await self._stores.for_service(service)
            input_path = await stage_in(
                invocation=invocation,
                service=service,
                stores=stores,
                workspace=workspace,
                log=slog,
                any_bucket=any_bucket,
                deadline=deadline,
            )
            env = script_environment(
                service=service,
                invocation=invocation,
                input_path=input_path,
                workspace=workspace,
                job_id=job_id,
                visible_path=lambda path: self._sandbox.job_path(workspace.root, path),
            )
            env = chosen.environment(env, service)
            await asyncio.to_thread(workspace.write_script, service.script)
            owner = self._sandbox.runs_as
            if owner is not None:
                # Under the private umask (077) the staged files are the manager's alone: give them to the
                # script.
                await asyncio.to_thread(_hand_over, workspace, owner)
            async with contextlib.AsyncExitStack() as slot:
                if slots is not None:
                    await deadline.run("waiting for a free slot to run the script", slots.acquire())
                    slot.callback(slots.release)
                slog.info("Running the user script")
                script_run = ScriptRun(
                    workdir=workspace.root,
                    script=SCRIPT_NAME,
                    env=env,
                    timeout=deadline.remaining(),  # what staging in left of the job's time
                    memory_bytes=quantity_bytes(service.memory),
                    network=wants_network(service),
                    cpu_cores=quantity_cores(service.cpu),
                    max_pids=self._max_pids,
                    disk_bytes=self._disk_bytes,
                    image=chosen.root,
                )
                result = await self._sandbox.run(script_run)
            slog.output(result.output.decode("utf-8", errors="replace"), result.output_times)
            bounds_hit = result.bounds_hit(script_run)
            for reason in bounds_hit:
                slog.error(reason)
            if result.timed_out:
                slog.error(f"The script was killed after the {deadline.seconds:g} s timeout")
            elif result.exit_code != 0:
                slog.error(f"The script exited with code {result.exit_code}")
            return RunOutcome(invocation=invocation, result=result, bounds_hit=bounds_hit, stores=stores)


def _hand_over(workspace: Workspace, owner: tuple[int, int]) -> None:
    """Everything in the workspace (written by the manager, before the script runs) to the script's user,
    walked from the held root descriptor."""
    for _, dirs, files, dir_fd in os.fwalk(".", dir_fd=workspace.root_fd, follow_symlinks=False):
        for name in [*dirs, *files]:
            os.chown(name, *owner, dir_fd=dir_fd, follow_symlinks=False)
