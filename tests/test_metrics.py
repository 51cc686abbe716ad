"""Run metrics: the critical path of a run, and stats per plugin with LLM tokens and cost."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from typer.testing import CliRunner

import goatclaw
from goatclaw import history
from goatclaw.cli.app import app
from goatclaw.engine.metrics import critical_path
from goatclaw.store import Store


def t(start: float | None, end: float | None) -> SimpleNamespace:
    return SimpleNamespace(started_at=start, finished_at=end)


def test_critical_path_walks_back_from_the_last_task_through_what_it_waited_for() -> None:
    needs = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c"), "x": ()}
    tasks = {"a": t(0, 1), "b": t(1, 4), "c": t(1.5, 2), "d": t(4.5, 5), "x": t(0, 3)}
    path = critical_path(needs, tasks)
    assert [s["task"] for s in path] == ["a", "b", "d"]
    assert path[2] == {"task": "d", "duration": 0.5, "wait": 0.5}  # ready at 4, started at 4.5
    assert path[1]["wait"] == 0.0


def test_tasks_that_did_not_run_are_not_on_the_path() -> None:
    needs = {"a": (), "b": ("a",), "c": ("b",)}
    assert [s["task"] for s in critical_path(needs, {"a": t(0, 1), "b": t(1, 2), "c": t(None, None)})] == ["a", "b"]
    assert critical_path(needs, {"a": t(None, None)}) == []


def _critical_path_as_it_was(needs: dict, tasks: dict) -> list[dict]:
    """The first implementation (spans of every task built first), kept to compare the one-pass one with."""
    spans = {}
    last, last_end = None, 0.0
    for tid, task in tasks.items():
        if task.started_at is None or task.finished_at is None or tid not in needs:
            continue
        spans[tid] = (task.started_at, task.finished_at)
        if last is None or task.finished_at > last_end or (task.finished_at == last_end and tid > last):
            last, last_end = tid, task.finished_at
    path, current = [], last
    while current is not None:
        start, end = spans[current]
        previous, previous_end = None, 0.0
        for n in needs[current]:
            span = spans.get(n)
            if span is None or span[1] > start + 1e-9:
                continue
            if previous is None or span[1] > previous_end or (span[1] == previous_end and n > previous):
                previous, previous_end = n, span[1]
        ready_at = previous_end if previous is not None else start
        path.append({"task": current, "duration": round(end - start, 6), "wait": round(max(0.0, start - ready_at), 6)})
        current = previous
    return path[::-1]


def test_the_one_pass_critical_path_is_the_path_of_the_first_implementation() -> None:
    import random

    rng = random.Random(5)
    for case in range(400):
        n = rng.randint(0, 30)
        ids = [f"t{i}" for i in range(n)]
        rng.shuffle(ids)  # ids out of order: ties between equal ends are broken by id, not by position
        needs = {tid: tuple(rng.sample(ids[:i], min(i, rng.randint(0, 3)))) for i, tid in enumerate(ids)}
        tasks = {}
        for tid in ids:
            if rng.random() < 0.15:
                tasks[tid] = t(None, None)  # did not run
                continue
            start = float(rng.randint(0, 20))  # whole seconds: many equal ends
            tasks[tid] = t(start, start + rng.randint(0, 5))
        if ids and rng.random() < 0.3:
            tasks["extra"] = t(0, 99)  # a task outside the main graph (finally:) never counts
        assert critical_path(needs, tasks) == _critical_path_as_it_was(needs, tasks), case


SLEEPS = """
version: 1
name: sleeps
concurrency: 4
tasks:
  a: {uses: shell, with: {run: [sleep, "0.1"]}}
  b: {uses: shell, needs: [a], with: {run: [sleep, "0.4"]}}
  c: {uses: shell, needs: [a], with: {run: [sleep, "0.05"]}}
  d: {uses: echo, needs: [b, c], with: {value: done}}
"""


def test_a_run_stores_and_shows_its_critical_path(write_pipeline: Callable[..., Path], store_path: Path) -> None:
    result = goatclaw.run(write_pipeline(SLEEPS))
    assert result.ok
    assert [s["task"] for s in result.critical_path] == ["a", "b", "d"]
    assert result.critical_path[1]["duration"] >= 0.4
    shown = CliRunner().invoke(app, ["runs", "show", result.run_id], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    line = next(x for x in shown.output.splitlines() if "critical path:" in x)
    assert line.index(" a ") < line.index(" b ") < line.index(" d ") and " c " not in line
    data = json.loads(CliRunner().invoke(app, ["runs", "show", result.run_id, "--json"]).output)
    assert [s["task"] for s in data["run"]["summary"]["critical_path"]] == ["a", "b", "d"]


def test_stats_per_plugin_with_llm_tokens_and_cost(write_pipeline: Callable[..., Path], store_path: Path,
                                                    srv) -> None:
    path = write_pipeline(f"""
        version: 1
        name: mixed
        tasks:
          ask:
            uses: llm
            with: {{model: openai/gpt-4o-mini, prompt: hi, api_base: {srv.api_base}, api_key: sk-test}}
          show: {{uses: echo, needs: [ask], with: {{value: 1}}}}
        """)
    assert goatclaw.run(path, cache=False).ok
    assert goatclaw.run(path, cache=False).ok
    data = history.stats(store_path)
    plugins = {p["plugin"]: p for p in data["plugins"]}
    assert set(plugins) == {"llm", "echo"}
    assert plugins["llm"]["count"] == 2 and plugins["llm"]["success_rate"] == 1.0
    assert plugins["llm"]["llm_calls"] == 2
    assert plugins["llm"]["prompt_tokens"] == 22 and plugins["llm"]["completion_tokens"] == 14
    assert plugins["llm"]["cost_usd"] > 0
    assert plugins["echo"]["llm_calls"] == 0 and plugins["echo"]["cost_usd"] == 0
    ask = next(x for x in data["tasks"] if x["task"] == "ask")
    assert ask["plugin"] == "llm" and ask["prompt_tokens"] == 22
    shown = CliRunner().invoke(app, ["stats"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "per plugin" in shown.output and "per task" in shown.output and "$0" in shown.output


def test_shell_tasks_report_cpu_and_peak_memory(write_pipeline: Callable[..., Path], store_path: Path) -> None:
    import sys

    # 80 MB touched page by page, then held for a few samples (memory is sampled every 100 ms at most)
    burn = ("import time; x = bytearray(80_000_000); x[::4096] = b'1' * len(x[::4096]); "
            "s = sum(range(4_000_000)); time.sleep(0.35)")
    path = write_pipeline(f"""
        version: 1
        name: heavy
        tasks:
          burn: {{uses: shell, with: {{run: [{sys.executable}, -c, "{burn}"]}}}}
          light: {{uses: shell, with: {{run: [sleep, "0.05"]}}}}
        """)
    result = goatclaw.run(path)
    assert result.ok, result.tasks["burn"].error
    with Store.open(store_path) as db:
        usage = history.resources(db.events(result.run_id))
    assert usage["burn"]["cpu_s"] > 0.05 and usage["burn"]["max_rss_mb"] >= 80
    assert usage["light"]["max_rss_mb"] < 40 and usage["light"]["processes"] == 1  # the fork's memory is not counted
    shown = CliRunner().invoke(app, ["runs", "show", result.run_id], env={"COLUMNS": "200"})
    assert "resources: " in shown.output and "burn cpu" in shown.output
    heavy = next(t for t in history.stats(store_path)["tasks"] if t["task"] == "burn")
    assert heavy["cpu_s"] > 0.05 and heavy["max_rss_mb"] >= 80


@goatclaw.task(cpu_bound=True)
def crunch(ctx: goatclaw.TaskContext, n: int = 0, fail: bool = False) -> int:
    """Burn CPU in a pool worker (and fail on request)."""
    total = sum(i * i for i in range(n))
    if fail:
        raise ValueError("crunch was asked to fail")
    return total


def test_cpu_bound_tasks_report_the_worker_cpu_they_used(write_pipeline: Callable[..., Path],
                                                         store_path: Path) -> None:
    from goatclaw.registry import Registry

    registry = Registry()
    registry.register_task("crunch", crunch)
    path = write_pipeline("""
        version: 1
        name: pool
        tasks:
          busy: {uses: crunch, with: {n: 3000000}}
          broken: {uses: crunch, retry: {attempts: 1}, with: {n: 10, fail: true}}
        """)
    result = goatclaw.run(path, registry=registry)
    assert result.tasks["busy"].output == sum(i * i for i in range(3000000))
    assert result.tasks["broken"].error == "ValueError: crunch was asked to fail"
    with Store.open(store_path) as db:
        events = [e for e in db.events(result.run_id) if e["topic"] == "task.resources"]
    busy = next(e["data"] for e in events if e["task"] == "busy")
    assert busy["process"] == "pool" and busy["cpu_user_s"] + busy["cpu_system_s"] > 0.05
    assert busy["max_rss_mb"] > 5
    assert any(e["task"] == "broken" for e in events)  # a failed call used CPU too


def _spin(ctx: goatclaw.TaskContext, n: int = 0, sleep: float = 0.0) -> int:
    """A blocking plugin (run in a thread of its own): burn CPU, or wait without using any."""
    time.sleep(sleep)
    return sum(i * i for i in range(n))


def test_blocking_tasks_report_the_cpu_their_thread_used(write_pipeline: Callable[..., Path],
                                                        store_path: Path) -> None:
    from goatclaw.registry import Registry

    registry = Registry()
    registry.register_task("spin", _spin)
    path = write_pipeline("""
        version: 1
        name: threads
        concurrency: 2
        tasks:
          busy: {uses: spin, with: {n: 3000000}}
          idle: {uses: spin, with: {sleep: 0.3}}
        """)
    result = goatclaw.run(path, registry=registry)
    assert result.ok, {t: r.error for t, r in result.tasks.items()}
    with Store.open(store_path) as db:
        events = {e["task"]: e["data"] for e in db.events(result.run_id) if e["topic"] == "task.resources"}
        usage = history.resources(db.events(result.run_id))
    assert events["busy"]["process"] == "thread" and events["busy"]["cpu_user_s"] > 0.05
    # the idle task ran beside the busy one in the same process: its thread's CPU is its own, not the process's
    assert events["idle"]["cpu_user_s"] + events["idle"]["cpu_system_s"] < 0.02
    assert usage["busy"]["cpu_s"] > 0.05
