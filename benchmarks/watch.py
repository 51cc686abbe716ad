"""Watch mode latency: from saving a pipeline file to its task starting.

Run: ``python benchmarks/watch.py [--saves 20] [--debounce 50] [--smoke]``

In a throwaway project, a pipeline has an ``echo`` task whose value each save changes and a
``python`` task calling ``time:time`` (so its output is the moment its body started). Each
save rewrites the pipeline file and waits for the run to finish before the next one.
Measured, each over the same number of saves, in one process:

- the baseline: raw ``watchfiles.awatch`` on the same folder with the same settings, from
  the write to the batch arriving (what any watcher built on it pays first);
- ``goatclaw.watch`` in this process: the write to the ``task.started`` event of the changed
  task, and to the ``time:time`` task's body starting;
- ``goatclaw watch`` as a subprocess (what a user runs): the write to the task body starting;
- for comparison, re-running by hand: ``goatclaw apply`` started as a new process, to its
  task body starting.

The target is under 300 ms from save to task start.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import goatclaw
from goatclaw.store import Store

PROJECT = "version: 1\npermissions: {python: true}\n"
PIPELINE = """version: 1
name: latency
tasks:
  edited:
    uses: echo
    with: {{value: {n}}}
  stamp:
    uses: python
    with: {{function: "time:time"}}
"""
TARGET_MS = 300


def save(path: Path, n: int) -> float:
    """Write the pipeline with counter ``n``; the wall-clock time just before the write."""
    text = PIPELINE.format(n=n)
    t = time.time()
    path.write_text(text)
    return t


async def raw_watchfiles(folder: Path, saves: int, debounce_ms: int) -> list[float]:
    """The baseline: write a file, wait for watchfiles to hand over the batch."""
    from watchfiles import awatch

    stop = asyncio.Event()
    batches = awatch(folder, watch_filter=None, debounce=1600, step=debounce_ms, stop_event=stop, recursive=False)
    out = []
    path = folder / "raw.yaml"
    for n in range(saves):
        upcoming = asyncio.ensure_future(anext(batches))
        await asyncio.sleep(0.05)
        t = save(path, n)
        await upcoming
        out.append(time.time() - t)
    stop.set()
    upcoming = asyncio.ensure_future(anext(batches))
    try:
        await upcoming
    except StopAsyncIteration:
        pass
    return out


async def in_process(folder: Path, saves: int, debounce_ms: int) -> tuple[list[float], list[float]]:
    """goatclaw.watch in this process: write → task.started of the edited task, and → the stamp task's body."""
    path = folder / "latency.yaml"
    save(path, -1)
    bus = goatclaw.Bus()
    events: asyncio.Queue[Any] = asyncio.Queue()
    started: dict[str, float] = {}
    bus.subscribe("watch.*", events.put_nowait)
    bus.subscribe("task.started", lambda ev: started.setdefault(ev.task or "", ev.ts))
    stop = asyncio.Event()
    session = asyncio.create_task(goatclaw.watch(path, bus=bus, stop=stop, debounce=debounce_ms / 1000))
    await _until(events, "watch.finished")
    to_event, to_body = [], []
    for n in range(saves):
        await asyncio.sleep(0.1)
        started.clear()
        t = save(path, n)
        done = await _until(events, "watch.finished")
        result = done.data["result"]
        assert result is not None and result.ok, done.data
        assert done.data["ran"] == ["edited", "stamp"], done.data
        to_event.append(started["edited"] - t)
        to_body.append(result.tasks["stamp"].output - t)
    stop.set()
    await session
    return to_event, to_body


async def _until(events: asyncio.Queue[Any], topic: str) -> Any:
    async with asyncio.timeout(30):
        while (ev := await events.get()).topic != topic:
            if ev.topic in ("watch.invalid", "watch.error"):
                raise RuntimeError(ev.data)
    return ev


def subprocess_watch(folder: Path, saves: int, debounce_ms: int) -> list[float]:
    """`goatclaw watch` as a user runs it: write → the stamp task's body starting (read back from the store)."""
    path = folder / "latency.yaml"
    save(path, -1)
    proc = subprocess.Popen([sys.executable, "-m", "goatclaw", "watch", path.name, "--debounce", f"{debounce_ms}ms",
                             "--output", "plain"], cwd=folder, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    runs: list[str] = []

    def next_run() -> str:
        assert proc.stdout is not None
        for line in proc.stdout:
            if m := re.match(r"✓ run (\S+) succeeded", line):
                return m.group(1)
            if line.startswith(("✗", "error")):
                raise RuntimeError(line)
        raise RuntimeError("goatclaw watch exited")

    out = []
    try:
        next_run()
        with Store.open(folder / ".goatclaw" / "goatclaw.db") as db:
            for n in range(saves):
                time.sleep(0.1)
                t = save(path, n)
                run_id = next_run()
                runs.append(run_id)
                stamp = next(r for r in db.tasks(run_id) if r.task_id == "stamp")
                out.append(stamp.output - t)
    finally:
        proc.send_signal(2)
        proc.wait(timeout=30)
        proc.stdout.close()
    return out


def apply_by_hand(folder: Path, runs: int) -> list[float]:
    """The manual loop: `goatclaw apply` as a new process, from its start to the stamp task's body."""
    path = folder / "latency.yaml"
    out = []
    with_store = folder / ".goatclaw" / "goatclaw.db"
    for n in range(runs):
        save(path, 10_000 + n)
        t = time.time()
        done = subprocess.run([sys.executable, "-m", "goatclaw", "apply", path.name, "--output", "plain"], cwd=folder,
                              capture_output=True, text=True, check=True)
        run_id = re.search(r"✓ run (\S+) succeeded", done.stdout)
        assert run_id, done.stdout
        with Store.open(with_store) as db:
            stamp = next(r for r in db.tasks(run_id.group(1)) if r.task_id == "stamp")
        out.append(stamp.output - t)
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saves", type=int, default=20)
    parser.add_argument("--debounce", type=int, default=50, help="quiet time in ms (goatclaw watch's default: 50)")
    parser.add_argument("--smoke", action="store_true", help="a few saves: checks the benchmark runs (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.saves = 2
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp).resolve()
        (folder / "goatclaw.yaml").write_text(PROJECT)
        os.chdir(folder)  # the project is the current folder, as for a user
        raw = asyncio.run(raw_watchfiles(folder, args.saves, args.debounce))
        to_event, to_body = asyncio.run(in_process(folder, args.saves, args.debounce))
        cli = subprocess_watch(folder, args.saves, args.debounce)
        by_hand = apply_by_hand(folder, max(5, args.saves // 4))
    rows = [("raw `watchfiles.awatch` notification (baseline)", raw),
            ("`goatclaw.watch` in process: save → `task.started`", to_event),
            ("`goatclaw.watch` in process: save → task body", to_body),
            ("`goatclaw watch` subprocess: save → task body", cli),
            ("`goatclaw apply` by hand (new process) → task body", by_hand)]
    base = statistics.median(rows[0][1])
    print(f"\nsave-to-task-start latency, debounce {args.debounce} ms, {args.saves} saves "
          f"(Python {sys.version.split()[0]}; target < {TARGET_MS} ms)\n")
    print("| path | n | p50 | p95 | max | p50 / baseline |")
    print("|------|--:|----:|----:|----:|---------------:|")
    for name, values in rows:
        ms = [v * 1000 for v in values]
        print(f"| {name} | {len(ms)} | {statistics.median(ms):.0f} ms | {percentile(ms, 95):.0f} ms | "
              f"{max(ms):.0f} ms | {statistics.median(values) / base:.1f}x |")
    worst = max(percentile(rows[i][1], 95) for i in (1, 2, 3)) * 1000
    print(f"\nwatch p95 (worst of the three): {worst:.0f} ms: target {'met' if worst < TARGET_MS else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
