"""Engine overhead: no-op DAGs through goatclaw (store on) next to a bare asyncio ready-queue.

Run: ``python benchmarks/engine.py [--sizes 1000,10000,100000] [--concurrency 4] [--repeat 3]
[--templated 10000] [--smoke]``

For each size, a random DAG where each task needs about three earlier ones is run
three ways in the same process:

- the **bare loop**: an asyncio ready-queue (in-degree counts, ``concurrency`` workers
  awaiting a no-op coroutine), the least a DAG runner can do;
- the **records floor**: the bare loop plus what goatclaw keeps of every task (a task
  result, a task context, the ``echo`` plugin's call, its output as JSON, a task row and
  two event rows committed to the SQLite store), and nothing else;
- **goatclaw**: ``goatclaw.run`` with the store on (then again with the task cache on).

``goatclaw / floor`` is the engine's own cost (scheduling, permissions, the threat
screen, durability during the run); ``floor / bare`` is what storing the run costs at
the least. The floor's timer starts after it opened its store and committed the run's
row and stops before it closes the store, where ``goatclaw.run`` times all of it: a
second table adds what the floor's timer leaves out, measured in the same runs, and
compares like for like. A second table times a 10k-task pipeline from the YAML file to a stored run
(load + schema + graph + run + store), the issue's 2 s target.

The fan-out table runs one ``foreach`` over 10k, 100k and 1M items given as a var (the
shape of an eval over a dataset), then a task reading ``tasks.each.outputs``, each size in
a fresh process, next to a bare asyncio pool doing the same items (a no-op coroutine per
item, outputs and their JSON kept in lists) in its own fresh process. Memory is the
process's peak resident set: its growth during the run per item (the items list itself
is built before), and the whole peak per item. Issue 24's target: ≤ 1 KiB per finished
item and a flat cost per item from 10k to 1M.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import goatclaw
from goatclaw.engine.state import TaskResult, TaskState, to_json
from goatclaw.plugin import TaskContext
from goatclaw.registry import default_registry
from goatclaw.store import Store


def make_dag(n: int, *, seed: int = 7, fan_in: int = 3, window: int = 50) -> list[tuple[str, list[str]]]:
    """Task ids with their needs: each task needs up to ``fan_in`` of the ``window`` before it."""
    rng = random.Random(seed)
    tasks = []
    for i in range(n):
        k = min(i, fan_in)
        needs = sorted(rng.sample(range(max(0, i - window), i), k)) if k else []
        tasks.append((f"t{i}", [f"t{j}" for j in needs]))
    return tasks


def write_yaml(tasks: list[tuple[str, list[str]]], path: Path, *, templated: bool = False) -> None:
    """The DAG as a pipeline of ``echo`` tasks; ``templated``: each reads its first need's output."""
    lines = ["version: 1", "name: bench", "concurrency: 4", "tasks:"]
    for tid, needs in tasks:
        lines.append(f"  {tid}:")
        lines.append("    uses: echo")
        if needs:
            lines.append(f"    needs: [{', '.join(needs)}]")
        if templated and needs:
            lines.append(f"    with: {{value: '${{{{ tasks.{needs[0]}.output }}}}'}}")
        else:
            lines.append(f"    with: {{value: {tid[1:]}}}")
    path.write_text("\n".join(lines) + "\n")


def templated_table(n: int, concurrency: int, repeat: int) -> None:
    """``n`` tasks each reading an upstream output (``with: {value: '${{ tasks.x.output }}'}``) against constant ones.

    The same DAG both ways, each loaded and checked once and run ``repeat`` times,
    interleaved (constant, templated, constant, ...); the best run of each is shown.
    """
    dag = make_dag(n)
    best: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        pipelines = {}
        for way in ("constant", "templated"):
            path = Path(tmp) / f"{way}.yaml"
            write_yaml(dag, path, templated=way == "templated")
            check_s, pipelines[way] = timed(goatclaw.load, path)
            best[way] = (check_s, float("inf"))
        for r in range(repeat):
            for way, pipeline in pipelines.items():
                store = Path(tmp) / f"{way}{r}.db"
                Store.open(store).close()
                took, result = timed(goatclaw.run, pipeline, store=store, concurrency=concurrency, cache=False)
                assert result.ok, result.error  # type: ignore[attr-defined]
                best[way] = (best[way][0], min(best[way][1], took))
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\n{n:,} tasks reading an upstream output next to constant ones, store on, best of {repeat} ({load})\n")
    print("| tasks | with: | load + check | check µs/task | run | run µs/task | run / constant |")
    print("|------:|-------|------:|------:|------:|------:|------:|")
    for way, (check_s, run_s) in best.items():
        print(f"| {n:,} | {way} | {check_s * 1000:,.0f} ms | {check_s / n * 1e6:,.0f} | {run_s * 1000:,.0f} ms "
              f"| {run_s / n * 1e6:,.1f} | **{run_s / best['constant'][1]:.2f}x** |")


async def bare_loop(tasks: list[tuple[str, list[str]]], concurrency: int) -> None:
    """The baseline: the least a DAG runner can do."""
    dependents: dict[str, list[str]] = {tid: [] for tid, _ in tasks}
    pending: dict[str, int] = {}
    for tid, needs in tasks:
        pending[tid] = len(needs)
        for n in needs:
            dependents[n].append(tid)
    ready = deque(tid for tid, needs in tasks if not needs)
    total = len(tasks)
    done = 0
    waiters: deque[asyncio.Future[None]] = deque()

    async def noop(value: str) -> str:
        return value

    async def worker() -> None:
        nonlocal done
        loop = asyncio.get_running_loop()
        while True:
            if ready:
                tid = ready.popleft()
                await noop(tid)
                done += 1
                for d in dependents[tid]:
                    pending[d] -= 1
                    if pending[d] == 0:
                        ready.append(d)
                        if waiters:
                            waiters.popleft().set_result(None)
                if done == total:
                    while waiters:
                        waiters.popleft().set_result(None)
                continue
            if done >= total:
                return
            fut = loop.create_future()
            waiters.append(fut)
            await fut

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def floor_loop(tasks: list[tuple[str, list[str]]], concurrency: int,
                     store_path: Path) -> tuple[float, float, float]:
    """The least a runner can do that keeps what goatclaw keeps: the bare loop plus the records.

    Per task: a :class:`TaskResult`, a :class:`TaskContext`, the ``echo`` plugin called with
    its ``with:``, the output as JSON, one task row and two event rows (started, succeeded).
    The rows are committed in one transaction at the end, with no durability during the run
    (the cheapest way to store them), through the same :meth:`Store.write_batch`. No
    permissions, threat screen, priorities, skips, retries, cancellation or live view.
    Returns the seconds of the loop (records kept in memory), of the commit, and of what the
    floor's timer leaves out: opening the store, committing the run's row, closing the store
    (SQLite's WAL file lifecycle: the first commit creates the WAL and syncs it, the close
    checkpoints it into the database and deletes it), which ``goatclaw.run`` does inside its own.
    """
    dependents: dict[str, list[str]] = {tid: [] for tid, _ in tasks}
    pending: dict[str, int] = {}
    for tid, needs in tasks:
        pending[tid] = len(needs)
        for n in needs:
            dependents[n].append(tid)
    withs = {tid: {"value": int(tid[1:])} for tid, _ in tasks}
    results = {tid: TaskResult(tid) for tid, _ in tasks}
    plugin = default_registry().task("echo").fn
    workspace = Path.cwd()
    ready = deque(tid for tid, needs in tasks if not needs)
    total = len(tasks)
    done = 0
    seq = 0
    events: list[tuple[object, ...]] = []
    rows: list[tuple[object, ...]] = []
    waiters: deque[asyncio.Future[None]] = deque()

    async def worker() -> None:
        nonlocal done, seq
        loop = asyncio.get_running_loop()
        while True:
            if ready:
                tid = ready.popleft()
                res = results[tid]
                res.status = TaskState.RUNNING
                res.started_at = started = time.time()
                seq += 1
                events.append(("floor", seq, started, "task.started", tid, None))
                ctx = TaskContext("floor", tid, 1, None, None, workspace)
                res.output = output = await plugin(ctx, **withs[tid])
                res.output_json = text = to_json(output)
                res.attempts, res.status = 1, TaskState.SUCCEEDED
                res.finished_at = finished = time.time()
                rows.append(("floor", tid, "succeeded", 1, started, finished, text, None, None, "echo", None, None))
                seq += 1
                events.append(("floor", seq, finished, "task.succeeded", tid,
                               f'{{"attempts": 1, "duration": {finished - started:.6f}}}'))
                done += 1
                for d in dependents[tid]:
                    pending[d] -= 1
                    if pending[d] == 0:
                        ready.append(d)
                        if waiters:
                            waiters.popleft().set_result(None)
                if done == total:
                    while waiters:
                        waiters.popleft().set_result(None)
                continue
            if done >= total:
                return
            fut = loop.create_future()
            waiters.append(fut)
            await fut

    o0 = time.perf_counter()
    store = Store.open(store_path)
    try:
        store.create_run("floor", "floor", file=None, digest=None, vars={}, started_at=time.time())
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        t1 = time.perf_counter()
        store.write_batch(events=events, tasks=rows)
        t2 = time.perf_counter()
    finally:
        store.close()
    o1 = time.perf_counter()
    return t1 - t0, t2 - t1, (t0 - o0) + (o1 - t2)


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    gc.collect()
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def e2e(n: int = 10_000) -> None:
    """An ``n``-task pipeline from its file to a stored run: in-process steps, and the CLI as a user runs it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "e2e.yaml"
        write_yaml(make_dag(n), path)
        t0 = time.perf_counter()
        pipeline = goatclaw.load(path)
        t1 = time.perf_counter()
        result = goatclaw.run(pipeline, store=Path(tmp) / "e2e.db", cache=False)
        t2 = time.perf_counter()
        assert result.ok
        cli = [sys.executable, "-m", "goatclaw", "apply", str(path), "--no-cache", "--output", "json",
               "--store", str(Path(tmp) / "cli.db")]
        c0 = time.perf_counter()
        subprocess.run(cli, check=True, stdout=subprocess.DEVNULL)
        c1 = time.perf_counter()
    print(f"\n{n:,}-task pipeline, file to stored run (target < 2 s at 10,000)\n")
    print("| step | time |")
    print("|------|-----:|")
    print(f"| load + check (YAML, schema, graph, templates, plugins) | {(t1 - t0) * 1000:,.0f} ms |")
    print(f"| compile + run + store | {(t2 - t1) * 1000:,.0f} ms |")
    print(f"| **total, in process** | **{(t2 - t0) * 1000:,.0f} ms** |")
    print(f"| `goatclaw apply` as a new process (imports and JSON output included) | {(c1 - c0) * 1000:,.0f} ms |")


FANOUT_YAML = """version: 1
name: fanout
vars: {items: []}
tasks:
  each: {uses: echo, foreach: '${{ vars.items }}', with: {value: '${{ item }}'}}
  count: {uses: echo, needs: each, with: {value: '${{ tasks.each.outputs | length }}'}}
"""


def _rss() -> int:
    """This process's resident set now, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    """This process's peak resident set, in bytes (``VmHWM``).

    Not ``getrusage``'s ``ru_maxrss``: Linux keeps that across ``exec``, so a process
    started from a parent with a large heap reports the parent's peak.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def _bare_fanout(items: list[Any], concurrency: int) -> tuple[list[Any], str]:
    """The least a fan-out can do: ``concurrency`` workers, a no-op coroutine per item, outputs and JSON kept."""
    outputs: list[Any] = [None] * len(items)
    texts = ["null"] * len(items)
    indexes = iter(range(len(items)))

    async def noop(value: Any) -> Any:
        return value

    async def worker() -> None:
        for i in indexes:
            outputs[i] = await noop(items[i])
            texts[i] = to_json(outputs[i])

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outputs, "[" + ",".join(texts) + "]"


def fanout_one(way: str, n: int, concurrency: int) -> dict[str, float]:
    """One fan-out of ``n`` items (``way``: goatclaw or bare), in this (fresh) process: times and memory."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fanout.yaml"
        path.write_text(FANOUT_YAML)
        pipeline = goatclaw.load(path)
        items = list(range(n))
        gc.collect()
        before = _rss()
        c0, t0 = time.process_time(), time.perf_counter()
        if way == "bare":
            outputs, _ = asyncio.run(_bare_fanout(items, concurrency))
            count = len(outputs)
        else:
            result = goatclaw.run(pipeline, vars={"items": items}, store=Path(tmp) / "fanout.db", cache=False,
                                  concurrency=concurrency)
            assert result.ok, result.error
            count = result.tasks["count"].output
        t1, c1 = time.perf_counter(), time.process_time()
        peak = _peak_rss()
    assert count == n, count
    return {"wall": t1 - t0, "cpu": c1 - c0, "peak": peak, "before": before}


def fanout_table(sizes: list[int], concurrency: int) -> None:
    """The fan-out rows: goatclaw and the bare pool at each size, each in a fresh interpreter."""
    rows = []
    for n in sizes:
        got = {}
        for way in ("bare", "goatclaw"):
            out = subprocess.run([sys.executable, __file__, "--fanout-one", f"{way}:{n}", "--concurrency",
                                  str(concurrency)], check=True, capture_output=True, text=True).stdout
            got[way] = json.loads(out.strip().splitlines()[-1])
        rows.append((n, got))
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\none foreach over N items from a var, then a task reading its outputs; echo, store on, concurrency "
          f"{concurrency}; each in a fresh process ({load})\n")
    print("| items | goatclaw wall | goatclaw CPU µs/item | bare pool CPU µs/item | goatclaw / bare "
          "| peak RSS | RSS growth / item | peak RSS / item | bare: growth / item |")
    print("|------:|------:|------:|------:|------:|------:|------:|------:|------:|")
    first = rows[0][1]["goatclaw"]["cpu"] / rows[0][0]
    for n, got in rows:
        g, b = got["goatclaw"], got["bare"]
        print(f"| {n:,} | {g['wall']:,.2f} s | {g['cpu'] / n * 1e6:.1f} | {b['cpu'] / n * 1e6:.1f} "
              f"| {g['cpu'] / b['cpu']:.1f}x | {g['peak'] / 2**20:,.0f} MiB "
              f"| {(g['peak'] - g['before']) / n:,.0f} B | {g['peak'] / n:,.0f} B "
              f"| {(b['peak'] - b['before']) / n:,.0f} B |")
    last = rows[-1][1]["goatclaw"]["cpu"] / rows[-1][0]
    print(f"\ngoatclaw's CPU per item at {rows[-1][0]:,} items / at {rows[0][0]:,}: **{last / first:.2f}x** "
          "(1.00x is flat)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measure; the best is shown")
    parser.add_argument("--e2e", action="store_true", help="only the 10k file-to-stored-run timing")
    parser.add_argument("--templated", type=int, default=10_000, metavar="N",
                        help="tasks of the templated-against-constant table (0: skip it)")
    parser.add_argument("--foreach", default="10000,100000,1000000", metavar="SIZES",
                        help="items of the fan-out table ('' : skip it)")
    parser.add_argument("--fanout-one", metavar="WAY:N", help=argparse.SUPPRESS)  # one fan-out, in a fresh process
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, once: checks the benchmark runs (CI)")
    args = parser.parse_args()
    if args.fanout_one:
        way, _, n = args.fanout_one.partition(":")
        print(json.dumps(fanout_one(way, int(n), args.concurrency)))
        return 0
    if args.smoke:
        args.sizes, args.repeat, args.templated, args.foreach = "200", 1, 200, "200,400"
    if args.e2e:
        e2e(200 if args.smoke else 10_000)
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            dag = make_dag(n)
            path = Path(tmp) / f"bench{n}.yaml"
            write_yaml(dag, path)
            pipeline = goatclaw.load(path)
            best: dict[str, float] = {}
            for r in range(args.repeat):
                # every store file exists before it is timed: a project's store outlives its first run
                stores = {k: Path(tmp) / f"{k}{n}-{r}.db" for k in ("floor", "engine", "cached")}
                for store in stores.values():
                    Store.open(store).close()
                took = {"bare": timed(asyncio.run, bare_loop(dag, args.concurrency))[0]}
                took["floor_loop"], took["floor_commit"], took["floor_store"] = asyncio.run(
                    floor_loop(dag, args.concurrency, stores["floor"]))
                # the engine alone (task cache off), then with the task cache writing every output
                took["engine"], result = timed(goatclaw.run, pipeline, store=stores["engine"],
                                               concurrency=args.concurrency, cache=False)
                assert result.ok, result.error  # type: ignore[attr-defined]
                took["cached"], result = timed(goatclaw.run, pipeline, store=stores["cached"],
                                               concurrency=args.concurrency)
                assert result.ok, result.error  # type: ignore[attr-defined]
                best = {k: min(v, best.get(k, v)) for k, v in took.items()}
            rows.append((n, best))
        version = sys.version.split()[0]
        print(f"\nno-op DAGs, ~3 needs per task, concurrency {args.concurrency}, store on, best of {args.repeat} "
              f"(Python {version})\n")
        print("| tasks | bare loop | floor: records in memory | floor: + commit | goatclaw | bare µs/task "
              "| floor µs/task (memory + commit) | goatclaw µs/task | goatclaw / bare | floor in memory / bare "
              "| goatclaw / floor | + task cache µs/task |")
        print("|------:|----------:|----------:|----------:|---------:|------:|------:|------:|------:|------:"
              "|------:|------:|")
        for n, t in rows:
            bare, memory, engine = t["bare"], t["floor_loop"], t["engine"]
            floor = memory + t["floor_commit"]
            print(f"| {n:,} | {bare * 1000:,.1f} ms | {memory * 1000:,.0f} ms | {floor * 1000:,.0f} ms "
                  f"| {engine * 1000:,.0f} ms | {bare / n * 1e6:.1f} | {memory / n * 1e6:.1f} + "
                  f"{t['floor_commit'] / n * 1e6:.1f} | {engine / n * 1e6:.1f} | **{engine / bare:.1f}x** "
                  f"| {memory / bare:.1f}x | {engine / floor:.1f}x | {t['cached'] / n * 1e6:.1f} |")
        print("\nLike for like: the floor with what its timer leaves out and goatclaw's includes (opening its "
              "store, committing the run's row, closing the store), measured in the same runs\n")
        print("| tasks | floor | floor's store open + run row + close | floor with them | goatclaw "
              "| goatclaw / floor with them |")
        print("|------:|------:|------:|------:|------:|------:|")
        for n, t in rows:
            floor = t["floor_loop"] + t["floor_commit"]
            print(f"| {n:,} | {floor * 1000:,.1f} ms | {t['floor_store'] * 1000:,.1f} ms "
                  f"| {(floor + t['floor_store']) * 1000:,.1f} ms | {t['engine'] * 1000:,.1f} ms "
                  f"| {t['engine'] / (floor + t['floor_store']):.2f}x |")

    if args.templated:
        templated_table(args.templated, args.concurrency, args.repeat)
    if args.foreach:
        fanout_table([int(n) for n in args.foreach.split(",")], args.concurrency)
    # file to stored run, in a fresh interpreter (a user's process never starts with a 100k-task heap)
    subprocess.run([sys.executable, __file__, "--e2e", *(["--smoke"] if args.smoke else [])], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
