"""Per-task overhead of the dask executor, next to the local executor and raw ``client.submit``.

Run: ``python benchmarks/dask.py [--workers 2] [--tasks 200] [--ms 20] [--repeat 3] [--smoke]``

One LocalCluster (``--workers`` processes, one thread each) serves the whole run. Each
row runs the same plugin function over ``--tasks`` items, with the same number in
flight, three ways:

* ``local``: ``goatclaw.run`` on the local executor (a thread for ``noop``, the process
  pool for the CPU-bound ``spin``);
* ``dask``: ``goatclaw.run`` with ``executor="dask"`` on the cluster's address;
* ``raw submit``: the function itself, ``client.submit(fn, ctx, i=i)`` on the same cluster,
  awaited with the same in-flight limit: what Dask costs without goatclaw.

Both goatclaw runs keep a store (events, attempts, outputs), as a user's run does. The
executors and the raw client are started once and kept warm across rows; what a run pays
once (connecting to a scheduler, or starting its own LocalCluster) is a second table.
``noop`` shows pure per-call cost; ``spin`` holds a CPU for ``--ms`` per task. Each time
is the best of ``--repeat`` runs (the machine may be shared); ``dask - raw`` is what
goatclaw adds to Dask per task.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# This file is named dask.py: its folder must not come before site-packages on sys.path, or
# `import dask` would import this file. It goes last, so that dask_plugins (and nothing else
# here) is still importable, by this process and by the workers it spawns with this sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import dask_plugins  # noqa: E402
import distributed  # noqa: E402

import goatclaw  # noqa: E402
from goatclaw.engine.dask import DaskExecutor  # noqa: E402
from goatclaw.engine.executor import Executor, LocalExecutor  # noqa: E402
from goatclaw.plugin import TaskContext  # noqa: E402
from goatclaw.registry import Registry  # noqa: E402

PIPELINE = """version: 1
name: dask-bench
vars: {{n: {n}}}
tasks:
  work:
    uses: {fn}
    foreach: ${{{{ range(vars.n) | list }}}}
    concurrency: {inflight}
    with: {{i: "${{{{ item }}}}"{extra}}}
"""


def registry() -> Registry:
    reg = Registry(entry_points=False)
    reg.register_task("noop", dask_plugins.noop)
    reg.register_task("spin", dask_plugins.spin)
    return reg


async def goatclaw_run(folder: Path, fn: str, n: int, inflight: int, ms: float, executor: Executor) -> float:
    extra = f", ms: {ms}" if fn == "spin" else ""
    path = folder / f"{fn}-{inflight}.yaml"
    path.write_text(PIPELINE.format(n=n, fn=fn, inflight=inflight, extra=extra))
    store = folder / f"{fn}-{inflight}-{executor.name}-{time.monotonic_ns()}.db"
    started = time.perf_counter()
    result = await goatclaw.arun(path, registry=registry(), store=store, cache=False, executor=executor)
    elapsed = time.perf_counter() - started
    assert result.ok, result.tasks["work"].error
    assert result.outputs["work"] == list(range(n))
    return elapsed


async def raw_submit(client: distributed.Client, fn: Callable[..., Any], n: int, inflight: int, ms: float) -> float:
    """The same function through Dask alone: submit, await, at most ``inflight`` at a time."""
    ctx = TaskContext("bench", "work")
    kwargs = {"ms": ms} if fn is dask_plugins.spin else {}
    gate = asyncio.Semaphore(inflight)

    async def one(i: int) -> int:
        async with gate:
            return await client.submit(fn, ctx, i=i, pure=False, **kwargs)

    started = time.perf_counter()
    out = await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.perf_counter() - started
    assert out == list(range(n))
    return elapsed


async def one_time_costs(address: str, workers: int) -> list[tuple[str, float]]:
    """What a run pays once: connecting to a scheduler, or starting (and closing) its own LocalCluster."""
    costs = []
    for label, ex in ((f"connect to a running scheduler ({address})", DaskExecutor(address)),
                      (f"start a LocalCluster of {workers} workers", DaskExecutor(workers=workers))):
        started = time.perf_counter()
        await ex.start()
        costs.append((label, time.perf_counter() - started))
        started = time.perf_counter()
        await ex.close()
        costs.append((label.replace("connect to", "disconnect from").replace("start", "close"),
                      time.perf_counter() - started))
    return costs


async def measure(address: str, folder: Path, n: int, workers: int, ms: float, repeat: int) -> list[tuple[Any, ...]]:
    """Each row: the same function over the same items through the three paths, warm (pools and clients ready)."""
    local, remote = LocalExecutor(processes=workers), DaskExecutor(address)
    await remote.start()
    rows = []
    try:
        async with distributed.Client(address, asynchronous=True, set_as_default=False) as client:
            for fn_name, inflight in (("noop", 1), ("noop", 4 * workers), ("spin", 1), ("spin", 4 * workers)):
                fn = getattr(dask_plugins, fn_name)
                count = n if fn_name == "noop" else max(workers, n // 4)
                for ex in (local, remote):  # warm: worker imports, the process pool
                    await goatclaw_run(folder, fn_name, min(count, 4 * workers), inflight, ms, ex)
                times = {"local": [], "dask": [], "raw": []}
                for _ in range(repeat):
                    times["local"].append(await goatclaw_run(folder, fn_name, count, inflight, ms, local))
                    times["dask"].append(await goatclaw_run(folder, fn_name, count, inflight, ms, remote))
                    times["raw"].append(await raw_submit(client, fn, count, inflight, ms))
                rows.append((fn_name, inflight, count, min(times["local"]), min(times["dask"]), min(times["raw"])))
    finally:
        await remote.close()
        await local.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--ms", type=float, default=20.0, help="CPU time of one spin task")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs of each measurement")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, once: checks the benchmark runs (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.workers, args.tasks, args.ms, args.repeat = 1, 4, 1.0, 1
    n, workers, ms = args.tasks, args.workers, args.ms
    with tempfile.TemporaryDirectory() as tmp, distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
            silence_logs=logging.CRITICAL, scheduler_kwargs={"dashboard": False}) as cluster:
        address = cluster.scheduler_address
        rows = asyncio.run(measure(address, Path(tmp), n, workers, ms, args.repeat))
        costs = asyncio.run(one_time_costs(address, workers))
    print(f"\ndask executor overhead: LocalCluster of {workers} worker processes x 1 thread, {os.cpu_count()} cores, "
          f"store on, Python {sys.version.split()[0]}, dask {distributed.__version__}")
    print(f"wall time / tasks, best of {args.repeat}; spin = {ms:g} ms of CPU per task; executors and client warm\n")
    print("| function | in flight | tasks | local ms/task | dask ms/task | raw submit ms/task | dask - raw ms/task "
          "| dask / raw | dask / local |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for fn_name, inflight, count, local, remote, raw in rows:
        per = {k: v / count * 1000 for k, v in (("local", local), ("dask", remote), ("raw", raw))}
        print(f"| {fn_name} | {inflight} | {count} | {per['local']:.2f} | {per['dask']:.2f} | {per['raw']:.2f} | "
              f"{per['dask'] - per['raw']:+.2f} | {remote / raw:.2f}x | {remote / local:.2f}x |")
    print("\n| once per run (dask executor) | time |")
    print("|---|--:|")
    for label, seconds in costs:
        print(f"| {label} | {seconds * 1000:,.0f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
