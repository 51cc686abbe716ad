"""``check``: host health (disk, memory, load) against thresholds, from the standard library and /proc."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from goatclaw.plugin import TaskContext, fail, task

__all__ = ["check"]


# cacheable=False: the host changes between calls
@task(cacheable=False, permissions=("files.read",), sinks=("path",))
def check(ctx: TaskContext, *, path: str = ".", min_free_disk_percent: float | None = None,
          min_free_disk_bytes: int | None = None, min_available_memory_percent: float | None = None,
          max_load_per_cpu: float | None = None) -> dict[str, Any]:
    """Measure disk (of ``path``, under the read grant), memory and load; fail ``unhealthy`` past a threshold.

    Returns the measurements and the list of ``failed`` thresholds (empty when healthy).
    """
    target = ctx.require_read(path)
    disk = shutil.disk_usage(target)
    cpus = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    memory = _memory()
    out: dict[str, Any] = {
        "disk": {"path": path, "total": disk.total, "free": disk.free,
                 "free_percent": round(100 * disk.free / disk.total, 2) if disk.total else 0.0},
        "memory": memory, "load": {"1m": load, "cpus": cpus,
                                   "per_cpu": round(load / cpus, 3) if load is not None else None},
    }
    failed = []
    if min_free_disk_percent is not None and out["disk"]["free_percent"] < min_free_disk_percent:
        failed.append(f"disk free {out['disk']['free_percent']}% < {min_free_disk_percent}%")
    if min_free_disk_bytes is not None and disk.free < min_free_disk_bytes:
        failed.append(f"disk free {disk.free:,} bytes < {min_free_disk_bytes:,}")
    if min_available_memory_percent is not None and memory.get("available_percent") is not None \
            and memory["available_percent"] < min_available_memory_percent:
        failed.append(f"memory available {memory['available_percent']}% < {min_available_memory_percent}%")
    per_cpu = out["load"]["per_cpu"]
    if max_load_per_cpu is not None and per_cpu is not None and per_cpu > max_load_per_cpu:
        failed.append(f"load per cpu {per_cpu} > {max_load_per_cpu}")
    out["failed"] = failed
    if failed:
        fail("unhealthy: " + "; ".join(failed), error_class="unhealthy", checks=out)
    return out


def _memory() -> dict[str, Any]:
    """Total and available memory from /proc/meminfo (Linux); empty values elsewhere."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        total = int(fields["MemTotal"].split()[0]) * 1024
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return {"total": None, "available": None, "available_percent": None}
    return {"total": total, "available": available, "available_percent": round(100 * available / total, 2)}
