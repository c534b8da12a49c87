"""Following a started script to its end: its output, its stdin, its timeout, its disk use, and what it
leaves behind."""

from __future__ import annotations

import asyncio
import functools
import signal
import time
from collections.abc import Awaitable, Callable
from typing import BinaryIO, Final

from oscar_manager.backends.cgroups import CgroupUsage, JobCgroup
from oscar_manager.backends.diskguard import DiskWatch
from oscar_manager.backends.output import BoundedOutput
from oscar_manager.backends.processes import feed, kill_group
from oscar_manager.backends.script import ScriptResult, ScriptRun

# After the script exits, how long to wait for the end of its output (only a process that escaped the
# process group can hold the pipe open that long).
DRAIN_SECONDS: Final = 1.0


async def supervise(
    proc: asyncio.subprocess.Process,
    *,
    run: ScriptRun,
    reader: BinaryIO,
    started: float,
    group: JobCgroup | None,
    max_output: int,
    stop: Callable[[asyncio.subprocess.Process], Awaitable[None]],
    sandboxed: bool,
) -> ScriptResult:
    """Wait for ``proc`` (started at ``started``) to end: its output read from ``reader`` (``max_output``
    bytes kept), ``run.stdin`` fed, ``run.timeout`` kept (then ``stop``), the job folder's disk use
    watched, what it left running killed (``sandboxed``: bubblewrap's pid namespace does that), and its
    cgroup removed."""
    loop = asyncio.get_running_loop()
    output = BoundedOutput(max_output, loop.create_future())
    transport: asyncio.BaseTransport | None = None
    feeder: asyncio.Task[None] | None = None
    timed_out = False
    over_disk = False
    usage: CgroupUsage | None = None
    disk = None
    if run.disk_bytes is not None:
        kill = functools.partial(kill_group, proc.pid, signal.SIGKILL)
        disk = DiskWatch(run.workdir, run.disk_bytes, kill=kill, group=group)
    try:
        transport, _ = await loop.connect_read_pipe(lambda: output, reader)
        if proc.stdin is not None:
            feeder = asyncio.create_task(feed(proc.stdin, run.stdin))
        if disk is not None:
            disk.start()
        try:
            async with asyncio.timeout(run.timeout):
                await proc.wait()
        except TimeoutError:
            timed_out = True
            await stop(proc)
        if not sandboxed:
            # Like a container whose main process ends, whatever the script left running goes too
            # (bubblewrap's pid namespace does that by itself). The group id cannot have been reused
            # while any of its members is left.
            kill_group(proc.pid, signal.SIGKILL)
        duration = time.monotonic() - started
        if disk is not None:
            over_disk = await disk.stop()
        await asyncio.wait([output.closed], timeout=DRAIN_SECONDS)
    finally:
        if disk is not None:
            await disk.stop()
        if group is not None:
            usage = await asyncio.shield(asyncio.to_thread(group.finish))
        if proc.returncode is None:
            kill_group(proc.pid, signal.SIGKILL)
            await asyncio.shield(proc.wait())
        if transport is None:
            reader.close()
        else:
            transport.close()
        if feeder is not None:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
    code = proc.returncode
    exit_code = None if timed_out or code is None else (128 - code if code < 0 else code)
    return ScriptResult(
        exit_code=exit_code,
        timed_out=timed_out,
        output=output.result(),
        output_times=output.times(),
        duration=duration,
        usage=usage,
        over_disk=over_disk,
    )
