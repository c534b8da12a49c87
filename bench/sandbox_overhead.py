"""Per-run overhead of ``Sandbox.run`` against running ``sh script.sh`` directly.

Usage: ``python bench/sandbox_overhead.py [-n RUNS]``. Each variant runs a trivial script RUNS times
(interleaved, after a warm-up) and reports p50/p99 and the difference and ratio to the baseline at p50.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from oscar_manager.backends.sandbox import Sandbox, ScriptRun

MEMORY = 256 << 20  # the default service memory


async def _direct_sh(workdir: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh", "script.sh", cwd=workdir, stdin=asyncio.subprocess.DEVNULL
    )
    if await proc.wait() != 0:
        raise RuntimeError("the baseline script failed")


def _sandboxed(sandbox: Sandbox, workdir: Path, **options: bool | int) -> Callable[[], Awaitable[None]]:
    run = ScriptRun(
        workdir=workdir,
        script="script.sh",
        env={"PATH": "/usr/bin:/bin"},
        timeout=30,
        memory_bytes=int(options["memory"]) if "memory" in options else None,
        network=bool(options.get("network", False)),
    )

    async def once() -> None:
        result = await sandbox.run(run)
        if result.exit_code != 0:
            raise RuntimeError(f"the script failed: {result.output!r}")

    return once


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(int(len(ordered) * fraction), len(ordered) - 1)]


async def main(runs: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="oscar-bench-"))
    try:
        (workdir / "script.sh").write_text("true\n")
        variants: dict[str, Callable[[], Awaitable[None]]] = {
            "sh script.sh (baseline)": lambda: _direct_sh(workdir)
        }
        fallback = Sandbox(bwrap=None, allow_unsandboxed=True)
        variants["fallback"] = _sandboxed(fallback, workdir)
        variants["fallback + memory limit"] = _sandboxed(fallback, workdir, memory=MEMORY)
        bwrap = Sandbox()
        if bwrap.sandboxed:
            variants["bwrap, no network"] = _sandboxed(bwrap, workdir)
            variants["bwrap, network"] = _sandboxed(bwrap, workdir, network=True)
            variants["bwrap, no network + memory limit"] = _sandboxed(bwrap, workdir, memory=MEMORY)
        else:
            print("bubblewrap is unusable here: only the fallback is measured")
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for round_ in range(runs + 5):
            for name, once in variants.items():
                started = time.perf_counter()
                await once()
                if round_ >= 5:
                    samples[name].append(time.perf_counter() - started)
        base = statistics.median(samples["sh script.sh (baseline)"])
        print(f"{runs} runs each, milliseconds")
        print(f"{'variant':36} {'p50':>7} {'p99':>7} {'p50-base':>9} {'p50/base':>9}")
        for name, values in samples.items():
            p50, p99 = statistics.median(values), _percentile(values, 0.99)
            print(f"{name:36} {p50 * 1e3:7.2f} {p99 * 1e3:7.2f} {(p50 - base) * 1e3:+9.2f} {p50 / base:9.2f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", "--runs", type=int, default=200)
    asyncio.run(main(parser.parse_args().runs))
