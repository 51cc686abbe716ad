"""Task plugins for tests/test_dask.py, in a module the Dask workers can import.

A LocalCluster's worker processes are spawned with the driver's ``sys.path``, which holds
``tests/`` under pytest, so plugins registered from here load on the workers by their
``module:function`` reference, as an installed package's entry points would.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

from goatclaw.plugin import TaskContext, task


def _primes_below(n: int) -> int:
    """Trial division on purpose: pure Python work that holds the GIL."""
    count = 0
    for k in range(2, n):
        d = 2
        while d * d <= k:
            if k % d == 0:
                break
            d += 1
        else:
            count += 1
    return count


@task(cpu_bound=True)
def burn(ctx: TaskContext, *, n: int, rounds: int = 20_000) -> dict[str, Any]:
    """CPU-bound: count primes below ``n`` and hash ``n`` ``rounds`` times; says where it ran."""
    ctx.emit("test.where", pid=os.getpid())
    digest = hashlib.sha256(str(n).encode()).digest()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return {"n": n, "primes": _primes_below(n), "digest": digest.hex()[:16]}


def where(ctx: TaskContext) -> int:
    """The process this task ran in (also as an event)."""
    ctx.emit("test.where", pid=os.getpid())
    return os.getpid()


def die_once(ctx: TaskContext, *, marker: str) -> dict[str, Any]:
    """First attempt: write this process's pid to ``marker`` and wait (to be killed); later ones succeed."""
    if ctx.attempt == 1:
        Path(marker).write_text(str(os.getpid()))
        time.sleep(60)
        return {"attempt": ctx.attempt, "killed": False}
    return {"attempt": ctx.attempt, "killed": True}


def spin(ctx: TaskContext, *, beat: str) -> None:
    """Busy-loop forever, writing a growing count to ``beat`` (so a test can see when it stops)."""
    i = 0
    path = Path(beat)
    while True:
        i += 1
        if i % 20_000 == 0:
            path.write_text(str(i))


def masked_forms(ctx: TaskContext) -> int:
    """How many secret forms this task's redactor knows where it runs (the audit key must not be one)."""
    return len(ctx.redactor._names) if ctx.redactor is not None else -1
