"""Task plugins that benchmarks/dask.py times, in a module the Dask workers import by name."""

from __future__ import annotations

import time

from goatclaw.plugin import TaskContext, task


@task(cacheable=False)
def noop(ctx: TaskContext, *, i: int) -> int:
    """Return ``i``: all the time a call takes is overhead."""
    return i


@task(cacheable=False, cpu_bound=True)
def spin(ctx: TaskContext, *, i: int, ms: float = 20.0) -> int:
    """Hold a CPU for ``ms`` milliseconds (a busy loop holding the GIL), then return ``i``."""
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass
    return i
