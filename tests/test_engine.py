"""The engine through the front door: real pipeline files, plugins on a fresh Registry, real stores.

Plugins are registered with ``Registry.register_task`` on ``goatclaw.Registry(entry_points=False)``.
A recording plugin appends ``(task, "start"/"end", n)`` to a shared log with a monotonic
counter, so the order of events the engine produced can be checked after the run.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import goatclaw
from goatclaw import TaskState
from goatclaw.store import Store

# -- a CPU-bound plugin must be importable by a worker process: module top level ---------


@goatclaw.task(cpu_bound=True)
def whoami(ctx: goatclaw.TaskContext, n: int = 0) -> dict[str, int]:
    """Report the process that ran the body."""
    ctx.emit("test.crunched", pid=os.getpid())
    if n < 0:
        ctx.audit("test.refused", n=n)
        raise goatclaw.TaskError("no negative numbers", error_class="validation")
    return {"pid": os.getpid(), "square": n * n}


# -- helpers -------------------------------------------------------------------------


class Recording:
    """A recording plugin and its log: ``(task[, index], "start"/"end"/"cancelled", counter)``."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, int]] = []
        self._counter = itertools.count()

    def mark(self, who: str, what: str) -> None:
        self.log.append((who, what, next(self._counter)))

    async def plugin(self, ctx: goatclaw.TaskContext, spins: int = 0, fail: bool = False,
                     value: Any = None) -> dict[str, Any]:
        who = ctx.task_id if ctx.index is None else f"{ctx.task_id}[{ctx.index}]"
        self.mark(who, "start")
        try:
            for _ in range(spins):
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            self.mark(who, "cancelled")
            raise
        self.mark(who, "end")
        if fail:
            raise goatclaw.TaskError(f"{who} was told to fail", error_class="invalid_input")
        return {"task": ctx.task_id, "spins": spins, "value": value}

    def started(self) -> list[str]:
        return [who for who, what, _ in self.log if what == "start"]

    def times(self, what: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for who, kind, n in self.log:
            if kind == what:
                assert who not in out, f"{who} {what} twice"
                out[who] = n
        return out

    def max_in_flight(self) -> int:
        now = peak = 0
        for _, what, _ in sorted(self.log, key=lambda e: e[2]):
            now += 1 if what == "start" else -1
            peak = max(peak, now)
        return peak


def registry_with(**plugins: Callable[..., Any]) -> goatclaw.Registry:
    reg = goatclaw.Registry(entry_points=False)
    for name, fn in plugins.items():
        reg.register_task(name, fn)
    return reg


def write_json_pipeline(folder: Path, tasks: Mapping[str, Any], **top: Any) -> Path:
    """A pipeline file written as JSON (which is YAML) into ``folder`` with its project file."""
    (folder / "goatclaw.yaml").write_text("version: 1\n")
    path = folder / "p.yaml"
    path.write_text(json.dumps({"version": 1, "name": "prop", **top, "tasks": dict(tasks)}, indent=1))
    return path


def run_file(path: Path, reg: goatclaw.Registry, **options: Any) -> goatclaw.RunResult:
    pipeline = goatclaw.load(path, registry=reg)
    options.setdefault("store", False)
    return goatclaw.run(pipeline, registry=reg, **options)


def statuses(result: goatclaw.RunResult) -> dict[str, str]:
    return {tid: t.status.value for tid, t in result.tasks.items()}


@pytest.fixture
def rec() -> Recording:
    return Recording()


# -- random DAGs -----------------------------------------------------------------------


@st.composite
def dags(draw: st.DrawFn, max_tasks: int = 40) -> dict[str, Any]:
    """``n`` tasks; each needs a random subset of earlier ones; shuffled into the file."""
    n = draw(st.integers(2, max_tasks))
    needs = [sorted(draw(st.sets(st.integers(0, i - 1), max_size=min(i, 5)))) if i else [] for i in range(n)]
    priorities = draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n))
    spins = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    file_order = draw(st.permutations(range(n)))
    return {
        "n": n,
        "needs": {f"t{i:02d}": [f"t{j:02d}" for j in needs[i]] for i in range(n)},
        "priority": {f"t{i:02d}": priorities[i] for i in range(n)},
        "spins": {f"t{i:02d}": spins[i] for i in range(n)},
        "order": [f"t{i:02d}" for i in file_order],
        "concurrency": draw(st.integers(1, 8)),
    }


def dag_tasks(dag: Mapping[str, Any], failing: frozenset[str] = frozenset()) -> dict[str, Any]:
    tasks: dict[str, Any] = {}
    for tid in dag["order"]:
        task: dict[str, Any] = {"uses": "rec", "priority": dag["priority"][tid],
                                "with": {"spins": dag["spins"][tid], "fail": tid in failing}}
        if dag["needs"][tid]:
            task["needs"] = dag["needs"][tid]
        tasks[tid] = task
    return tasks


def descendants(needs: Mapping[str, list[str]], roots: set[str]) -> set[str]:
    children: dict[str, set[str]] = {t: set() for t in needs}
    for tid, ns in needs.items():
        for n in ns:
            children[n].add(tid)
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        for child in children[stack.pop()]:
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="goatclaw-dag-") as folder:
        yield Path(folder)


_examples = itertools.count()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dag=dags())
def test_random_dags_respect_needs_concurrency_and_run_each_task_once(scratch: Path, dag: dict[str, Any]) -> None:
    folder = scratch / f"ok{next(_examples)}"
    folder.mkdir()
    rec = Recording()
    path = write_json_pipeline(folder, dag_tasks(dag), concurrency=dag["concurrency"])
    store = folder / "store.db"
    result = run_file(path, registry_with(rec=rec.plugin), store=store)

    starts, ends = rec.times("start"), rec.times("end")
    assert sorted(starts) == sorted(ends) == sorted(dag["needs"]), "every task runs exactly once"
    for tid, needs in dag["needs"].items():
        for need in needs:
            assert ends[need] < starts[tid], f"{tid} started before its need {need} ended"
    assert rec.max_in_flight() <= dag["concurrency"]
    assert result.ok, result.to_dict()
    assert set(statuses(result).values()) == {"succeeded"}
    with Store.open(store) as db:
        rows = {row.task_id: row for row in db.tasks(result.run_id)}
        assert db.run(result.run_id).status == "succeeded"  # type: ignore[union-attr]
    assert set(rows) == set(dag["needs"])
    for tid, row in rows.items():
        assert row.status == "succeeded"
        assert row.output == {"task": tid, "spins": dag["spins"][tid], "value": None}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dag=dags(), data=st.data())
def test_random_failures_block_descendants_and_spare_independent_branches(
        scratch: Path, dag: dict[str, Any], data: st.DataObject) -> None:
    failing = frozenset(data.draw(st.sets(st.sampled_from(sorted(dag["needs"])), min_size=1, max_size=4)))
    folder = scratch / f"fail{next(_examples)}"
    folder.mkdir()
    rec = Recording()
    path = write_json_pipeline(folder, dag_tasks(dag, failing), concurrency=dag["concurrency"])
    result = run_file(path, registry_with(rec=rec.plugin))

    blocked = descendants(dag["needs"], set(failing))
    expected = {tid: "upstream_failed" if tid in blocked else "failed" if tid in failing else "succeeded"
                for tid in dag["needs"]}
    assert statuses(result) == expected
    assert not blocked & set(rec.started()), "a task downstream of a failure started"
    assert sorted(rec.started()) == sorted(set(dag["needs"]) - blocked), "every other task runs, once"
    assert result.status is goatclaw.RunStatus.FAILED
    for tid in blocked:
        assert result.tasks[tid].error_class == "upstream"


class _Watching:
    """A hook that does nothing: watching a run must not change what it does or stores."""

    def before_task(self, **_: Any) -> None:
        pass


@goatclaw.task(cacheable=True)  # pure: the third run of each kind reads the task cache
async def _step(ctx: goatclaw.TaskContext, fail: bool = False, flaky: bool = False, value: Any = None,
                spins: int = 0) -> dict[str, Any]:
    for _ in range(spins):
        await asyncio.sleep(0)
    if fail:
        raise goatclaw.TaskError(f"{ctx.task_id} was told to fail", error_class="invalid_input")
    if flaky and ctx.attempt == 1:
        raise goatclaw.TaskError("the first attempt fails", error_class="connection")
    return {"task": ctx.task_id, "attempt": ctx.attempt, "value": value}


def _stored(store: Path, run_id: str) -> dict[str, Any]:
    with Store.open(store) as s:
        return {
            "tasks": sorted((r.task_id, r.status, r.attempts, json.dumps(r.output), r.error, r.error_class)
                            for r in s.tasks(run_id)),
            "attempts": sorted((a["task_id"], a["attempt"], a["status"], a["error_class"])
                               for a in s.attempts(run_id)),
            "events": [(e["topic"], e["task"], {k: v for k, v in e["data"].items() if k != "duration"})
                       for e in s.events(run_id)],
            "dead": sorted((d.task_id, d.error_class) for d in s.dead_letters(run_id=run_id)),
        }


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dag=dags(max_tasks=16), data=st.data())
def test_a_watching_hook_changes_nothing_a_run_stores(
        scratch: Path, dag: dict[str, Any], data: st.DataObject) -> None:
    ids = sorted(dag["needs"])
    failing = data.draw(st.sets(st.sampled_from(ids), max_size=3))
    flaky = data.draw(st.sets(st.sampled_from(ids), max_size=4))
    tolerant = data.draw(st.sets(st.sampled_from(ids), max_size=3))
    templated = data.draw(st.sets(st.sampled_from([t for t in ids if dag["needs"][t]] or ids), max_size=4))
    tasks: dict[str, Any] = {}
    for tid in dag["order"]:
        needs = dag["needs"][tid]
        task: dict[str, Any] = {"uses": "step", "priority": dag["priority"][tid],
                                "with": {"fail": tid in failing, "flaky": tid in flaky, "spins": dag["spins"][tid],
                                         "value": tid}}
        if needs:
            task["needs"] = needs
            if tid in templated:  # an upstream output read by a template (an error when that need failed)
                task["with"]["value"] = "${{ tasks." + needs[0] + ".output.task }}"
        if tid in flaky:
            task["retry"] = {"attempts": 2, "delay": 0}
        if tid in tolerant:
            task["continue_on_error"] = True
        tasks[tid] = task
    folder = scratch / f"watched{next(_examples)}"
    folder.mkdir()
    path = write_json_pipeline(folder, tasks, concurrency=1)
    (folder / "goatclaw.yaml").write_text("version: 1\nmemory: {enabled: false}\n")  # failures are not learnt
    reg = registry_with(step=_step)
    seen = []
    for name, hooks in (("plain", ()), ("watched", (_Watching(),))):
        runs = []
        for cache in (False, True, True):  # without the task cache, then filling it, then reading it
            store = folder / f"{name}-{'cache' if cache else 'nocache'}.db"
            result = run_file(path, reg, store=store, hooks=list(hooks), cache=cache)
            results = {tid: (t.status, t.output, t.error, t.error_class, t.attempts)
                       for tid, t in result.tasks.items()}
            runs.append((result.status, _stored(store, result.run_id), results))
        seen.append(runs)
    assert seen[0] == seen[1]
    assert any(row[1] == "cached" for row in seen[0][2][1]["tasks"]) == any(
        status == "succeeded" for status, *_ in seen[0][0][2].values())


def test_concurrency_limit_is_reached_not_just_respected(write_pipeline: Callable[..., Path], rec: Recording) -> None:
    tasks = "".join(f"  t{i}:\n    uses: rec\n    with: {{spins: 5}}\n" for i in range(7))
    path = write_pipeline(f"version: 1\nconcurrency: 3\ntasks:\n{tasks}")
    result = run_file(path, registry_with(rec=rec.plugin))
    assert result.ok
    assert rec.max_in_flight() == 3


# -- scheduling semantics ------------------------------------------------------------


def test_concurrency_one_runs_sequentially_in_priority_then_file_order(
        write_pipeline: Callable[..., Path], rec: Recording) -> None:
    path = write_pipeline("""
        version: 1
        concurrency: 1
        tasks:
          e: {uses: rec, with: {spins: 2}}
          d: {uses: rec, priority: 5, with: {spins: 2}}
          c: {uses: rec, with: {spins: 2}}
          b: {uses: rec, priority: -1, with: {spins: 2}}
          a: {uses: rec, priority: 5, with: {spins: 2}}
          z: {uses: rec, needs: e, priority: 9, with: {spins: 2}}
        """)
    result = run_file(path, registry_with(rec=rec.plugin))
    assert result.ok
    assert rec.max_in_flight() == 1
    # z becomes ready when e ends and then outranks everything still waiting
    assert rec.started() == ["d", "a", "e", "z", "c", "b"]


def test_concurrency_from_the_command_line_beats_the_file(write_pipeline: Callable[..., Path],
                                                          rec: Recording) -> None:
    tasks = "".join(f"  t{i}:\n    uses: rec\n    with: {{spins: 5}}\n" for i in range(4))
    path = write_pipeline(f"version: 1\nconcurrency: 4\ntasks:\n{tasks}")
    assert run_file(path, registry_with(rec=rec.plugin), concurrency=1).ok
    assert rec.max_in_flight() == 1


def test_pipeline_concurrency_beats_the_project_default(project: Path, write_pipeline: Callable[..., Path],
                                                        rec: Recording) -> None:
    (project / "goatclaw.yaml").write_text("version: 1\nconcurrency: 4\n")
    tasks = "".join(f"  t{i}:\n    uses: rec\n    with: {{spins: 5}}\n" for i in range(4))
    path = write_pipeline(f"version: 1\nconcurrency: 1\ntasks:\n{tasks}")
    assert run_file(path, registry_with(rec=rec.plugin)).ok
    assert rec.max_in_flight() == 1


def test_if_false_skips_the_task_and_what_only_depends_on_it(write_pipeline: Callable[..., Path],
                                                            rec: Recording) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          a: {uses: rec, with: {value: 1}}
          off: {uses: rec, needs: a, if: false}
          expr_off: {uses: rec, needs: a, if: "tasks.a.output.value > 5"}
          expr_on: {uses: rec, needs: a, if: "tasks.a.output.task == 'a'"}
          only_skipped: {uses: rec, needs: [off, expr_off]}
          chain: {uses: rec, needs: only_skipped}
          mixed: {uses: rec, needs: [off, a]}
          sees: {uses: rec, needs: off, if: "true", with: {value: "${{ tasks.off.status }}"}}
        """)
    result = run_file(path, registry_with(rec=rec.plugin))
    assert result.ok
    assert statuses(result) == {"a": "succeeded", "off": "skipped", "expr_off": "skipped", "expr_on": "succeeded",
                                "only_skipped": "skipped", "chain": "skipped", "mixed": "succeeded",
                                "sees": "skipped"}
    assert sorted(rec.started()) == ["a", "expr_on", "mixed"]


def test_continue_on_error_lets_dependents_run_and_the_run_succeed(write_pipeline: Callable[..., Path],
                                                                   rec: Recording) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          flaky: {uses: rec, continue_on_error: true, with: {fail: true}}
          after: {uses: rec, needs: flaky, with: {value: "${{ tasks.flaky.status }}"}}
        """)
    result = run_file(path, registry_with(rec=rec.plugin))
    assert result.ok, result.to_dict()
    assert statuses(result) == {"flaky": "failed", "after": "succeeded"}
    assert result.tasks["flaky"].error_class == "invalid_input"
    assert result.outputs["after"]["value"] == "failed"


def test_foreach_outputs_come_back_in_item_order(write_pipeline: Callable[..., Path]) -> None:
    async def slow_first(ctx: goatclaw.TaskContext, word: str, position: int) -> dict[str, Any]:
        for _ in range(10 - position):  # early items finish last
            await asyncio.sleep(0)
        return {"word": word, "position": position, "index": ctx.index, "item": ctx.item}

    path = write_pipeline("""
        version: 1
        vars: {words: [alpha, beta, gamma, delta, epsilon]}
        tasks:
          fan:
            uses: slow_first
            foreach: ${{ vars.words }}
            with: {word: "${{ item }}", position: "${{ index }}"}
          gather:
            uses: echo
            needs: fan
            with:
              value: ${{ tasks.fan.outputs | map(attribute='word') | list }}
        """)
    result = run_file(path, registry_with(slow_first=slow_first))
    assert result.ok, result.to_dict()
    words = ["alpha", "beta", "gamma", "delta", "epsilon"]
    assert result.outputs["fan"] == [{"word": w, "position": i, "index": i, "item": w} for i, w in enumerate(words)]
    assert result.outputs["gather"] == words
    assert result.tasks["fan"].items == 5


def test_foreach_without_fail_fast_runs_every_item_and_counts_failures(
        write_pipeline: Callable[..., Path], rec: Recording) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          fan:
            uses: rec
            foreach: [1, 2, 3, 4, 5]
            fail_fast: false
            with: {fail: "${{ item % 2 == 0 }}", spins: "${{ 5 - index }}"}
        """)
    result = run_file(path, registry_with(rec=rec.plugin))
    assert not result.ok
    fan = result.tasks["fan"]
    assert fan.status is TaskState.FAILED
    assert fan.error is not None and fan.error.startswith("2 of 5 items failed"), fan.error
    assert sorted(rec.times("end")) == [f"fan[{i}]" for i in range(5)]


def test_a_whole_template_keeps_its_type(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        vars: {n: 3, ratio: 0.5, flag: true, nothing: null, items: [1, two], table: {k: [v]}}
        tasks:
          typed:
            uses: echo
            with:
              n: ${{ vars.n }}
              ratio: ${{ vars.ratio }}
              flag: ${{ vars.flag }}
              nothing: ${{ vars.nothing }}
              items: ${{ vars.items }}
              table: ${{ vars.table }}
              sum: ${{ vars.n + 1 }}
              text: n is ${{ vars.n }}
              twice: ${{ vars.n }}${{ vars.n }}
        """)
    result = run_file(path, registry_with())
    assert result.ok, result.to_dict()
    assert result.outputs["typed"] == {"n": 3, "ratio": 0.5, "flag": True, "nothing": None, "items": [1, "two"],
                                       "table": {"k": ["v"]}, "sum": 4, "text": "n is 3", "twice": "33"}


def test_only_runs_the_task_and_its_ancestors(write_pipeline: Callable[..., Path], rec: Recording) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          a: {uses: rec}
          b: {uses: rec, needs: a}
          c: {uses: rec, needs: b}
          side: {uses: rec}
          d: {uses: rec, needs: [b, side]}
          e: {uses: rec, needs: c}
        """)
    reg = registry_with(rec=rec.plugin)
    pipeline = goatclaw.load(path, registry=reg)
    result = asyncio.run(goatclaw.arun(pipeline, only=["c"], registry=reg, store=False))
    assert result.ok
    assert statuses(result) == {"a": "succeeded", "b": "succeeded", "c": "succeeded"}
    assert sorted(rec.started()) == ["a", "b", "c"]
    with pytest.raises(goatclaw.GoatclawError, match="nope"):
        asyncio.run(goatclaw.arun(pipeline, only=["nope"], registry=reg, store=False))


def test_retry_until_success_records_the_failed_attempts(write_pipeline: Callable[..., Path],
                                                         store_path: Path) -> None:
    calls: list[int] = []

    async def twice_then_ok(ctx: goatclaw.TaskContext) -> dict[str, int]:
        calls.append(ctx.attempt)
        if len(calls) < 3:
            raise goatclaw.TaskError(f"try {len(calls)} failed", error_class="server_error")
        return {"attempt": ctx.attempt}

    path = write_pipeline("""
        version: 1
        tasks:
          flaky: {uses: flaky, retry: {attempts: 3, delay: 0}}
        """)
    result = run_file(path, registry_with(flaky=twice_then_ok), store=store_path)
    assert result.ok, result.to_dict()
    flaky = result.tasks["flaky"]
    assert (flaky.status, flaky.attempts, flaky.output) == (TaskState.SUCCEEDED, 3, {"attempt": 3})
    assert calls == [1, 2, 3]
    with Store.open(store_path) as db:
        attempts = db.attempts(result.run_id)
        (row,) = db.tasks(result.run_id)
    assert [(a["task_id"], a["attempt"], a["status"], a["error_class"]) for a in attempts] == [
        ("flaky", 1, "failed", "server_error"), ("flaky", 2, "failed", "server_error")]
    assert (row.status, row.attempts) == ("succeeded", 3)


def test_auth_errors_are_not_retried(write_pipeline: Callable[..., Path]) -> None:
    calls: list[int] = []

    async def denied(ctx: goatclaw.TaskContext) -> None:
        calls.append(ctx.attempt)
        goatclaw.fail("bad key", error_class="auth")

    path = write_pipeline("""
        version: 1
        tasks:
          call: {uses: denied, retry: {attempts: 3, delay: 0}}
        """)
    result = run_file(path, registry_with(denied=denied))
    call = result.tasks["call"]
    assert (call.status, call.error_class, call.attempts) == (TaskState.FAILED, "auth", 1)
    assert calls == [1]


def test_task_timeout_fails_quickly_with_error_class_timeout(write_pipeline: Callable[..., Path]) -> None:
    async def sleepy(ctx: goatclaw.TaskContext) -> None:
        await asyncio.sleep(10)

    path = write_pipeline("""
        version: 1
        tasks:
          slow: {uses: sleepy, timeout: 0.2}
        """)
    began = time.monotonic()
    result = run_file(path, registry_with(sleepy=sleepy))
    assert time.monotonic() - began < 3
    slow = result.tasks["slow"]
    assert (slow.status, slow.error_class) == (TaskState.FAILED, "timeout")
    assert not result.ok


def test_blocking_plugins_run_in_threads(write_pipeline: Callable[..., Path]) -> None:
    def blocking(ctx: goatclaw.TaskContext) -> str:
        time.sleep(0.3)
        return ctx.task_id

    path = write_pipeline("""
        version: 1
        concurrency: 2
        tasks:
          one: {uses: blocking}
          two: {uses: blocking}
        """)
    reg = registry_with(blocking=blocking)
    pipeline = goatclaw.load(path, registry=reg)
    began = time.monotonic()
    result = goatclaw.run(pipeline, registry=reg, store=False)
    elapsed = time.monotonic() - began
    assert result.outputs == {"one": "one", "two": "two"}
    assert elapsed < 0.55, f"two 0.3 s blocking tasks took {elapsed:.2f}s: they did not overlap"


def test_a_timed_out_blocking_plugin_does_not_hold_the_run(write_pipeline: Callable[..., Path]) -> None:
    def stuck(ctx: goatclaw.TaskContext) -> None:
        time.sleep(1.5)

    path = write_pipeline("""
        version: 1
        tasks:
          stuck: {uses: stuck, timeout: 0.2}
        """)
    began = time.monotonic()
    result = run_file(path, registry_with(stuck=stuck))
    elapsed = time.monotonic() - began
    assert result.tasks["stuck"].error_class == "timeout"
    assert elapsed < 1.0, f"the run took {elapsed:.2f}s after a 0.2 s timeout"


def test_cpu_bound_plugin_runs_in_a_worker_process(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          crunch: {uses: whoami, with: {n: 12}}
        """)
    bus = goatclaw.Bus()
    seen: list[Any] = []
    bus.subscribe("*", lambda e: seen.append((e.topic, dict(e.data))))
    result = run_file(path, registry_with(whoami=whoami), bus=bus)
    assert result.ok, result.to_dict()
    assert result.outputs["crunch"]["square"] == 144
    assert result.outputs["crunch"]["pid"] != os.getpid()
    # what the plugin emitted in the worker process is an event of the run, as if emitted here
    assert [d["pid"] for t, d in seen if t == "test.crunched"] == [result.outputs["crunch"]["pid"]]


def test_a_cpu_bound_plugins_audit_rows_and_events_survive_its_failure(write_pipeline: Callable[..., Path],
                                                                       tmp_path: Path) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          crunch: {uses: whoami, with: {n: -1}}
        """)
    store = tmp_path / "s.db"
    result = run_file(path, registry_with(whoami=whoami), store=store)
    assert not result.ok and result.tasks["crunch"].error_class == "validation"
    from goatclaw.store import Store

    with Store.open(store) as db:
        topics = [e["topic"] for e in db.events(result.run_id)]
        actions = [row[0] for row in db.db.execute("SELECT action FROM audit WHERE run_id = ?", (result.run_id,))]
    assert "test.crunched" in topics and "test.refused" in actions


@pytest.mark.parametrize("bad", [{1, 2}, float("nan"), {"x": float("inf")}, object()], ids=repr)
def test_outputs_that_are_not_json_fail_the_task(write_pipeline: Callable[..., Path], bad: Any) -> None:
    async def weird(ctx: goatclaw.TaskContext) -> Any:
        return bad

    path = write_pipeline("""
        version: 1
        tasks:
          weird: {uses: weird}
          after: {uses: echo, needs: weird, with: {value: 1}}
        """)
    result = run_file(path, registry_with(weird=weird))
    assert result.tasks["weird"].status is TaskState.FAILED
    assert result.tasks["weird"].error_class == "invalid_output"
    assert result.tasks["after"].status is TaskState.UPSTREAM_FAILED


# -- cancellation --------------------------------------------------------------------


def test_cancelling_a_run_stops_in_flight_tasks_and_records_it(write_pipeline: Callable[..., Path],
                                                               store_path: Path) -> None:
    log: list[str] = []

    async def nap(ctx: goatclaw.TaskContext) -> None:
        log.append("start")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            log.append("cancelled")
            raise

    path = write_pipeline("""
        version: 1
        tasks:
          quick: {uses: echo, with: {value: 1}}
          nap: {uses: nap, needs: quick}
          later: {uses: echo, needs: nap, with: {value: 2}}
        """)
    reg = registry_with(nap=nap)
    pipeline = goatclaw.load(path, registry=reg)
    bus = goatclaw.Bus()

    async def main() -> None:
        napping = asyncio.Event()
        bus.subscribe("task.started", lambda ev: napping.set() if ev.task == "nap" else None)
        running = asyncio.create_task(goatclaw.arun(pipeline, registry=reg, store=store_path, bus=bus,
                                                    run_id="cancel-me"))
        await asyncio.wait_for(napping.wait(), 10)
        await asyncio.sleep(0.05)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    began = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - began < 10
    assert log == ["start", "cancelled"]
    with Store.open(store_path) as db:
        run = db.run("cancel-me")
        assert run is not None and run.status == "cancelled"
        tasks = {t.task_id: t.status for t in db.tasks("cancel-me")}
        assert db.integrity() == "ok"
        topics = [e["topic"] for e in db.events("cancel-me")]
    assert tasks["quick"] == "succeeded"
    assert tasks["nap"] == "cancelled"
    assert tasks["later"] == "cancelled"
    assert topics[-1] == "run.cancelled"
    assert not bus.errors


# -- events --------------------------------------------------------------------------


def test_bus_wildcards_deliver_matching_events_only(write_pipeline: Callable[..., Path], rec: Recording,
                                                    store_path: Path) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          a: {uses: rec}
          b: {uses: rec, needs: a}
          bad: {uses: rec, with: {fail: true}}
        """)
    bus = goatclaw.Bus()
    tasks_seen: list[tuple[str, str | None]] = []
    failures: list[tuple[str, str | None]] = []
    everything: list[goatclaw.Event] = []
    bus.subscribe("task.*", lambda ev: tasks_seen.append((ev.topic, ev.task)))
    bus.subscribe("*.failed", lambda ev: failures.append((ev.topic, ev.task)))
    bus.subscribe("*", everything.append)
    result = run_file(path, registry_with(rec=rec.plugin), bus=bus, store=store_path)

    assert not result.ok
    for tid in ("a", "b"):
        assert tasks_seen.count(("task.started", tid)) == 1
        assert tasks_seen.count(("task.succeeded", tid)) == 1
    assert tasks_seen.count(("task.failed", "bad")) == 1
    assert all(topic.startswith("task.") for topic, _ in tasks_seen)
    assert sorted(failures, key=str) == [("run.failed", None), ("task.failed", "bad")]
    assert not bus.errors

    with Store.open(store_path) as db:
        stored = db.events(result.run_id)
    seqs = [e["seq"] for e in stored]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert seqs == list(range(1, len(seqs) + 1))
    assert [(e["seq"], e["topic"], e["task"]) for e in stored] == [(e.seq, e.topic, e.task) for e in everything]
    assert stored[0]["topic"] == "run.started" and stored[-1]["topic"] == "run.failed"


def test_a_raising_subscriber_does_not_break_the_run(write_pipeline: Callable[..., Path], rec: Recording) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          a: {uses: rec}
          b: {uses: rec, needs: a}
        """)
    bus = goatclaw.Bus()
    seen: list[str] = []

    def broken(ev: goatclaw.Event) -> None:
        raise RuntimeError(f"subscriber broke on {ev.topic}")

    bus.subscribe("task.*", broken)
    bus.subscribe("task.succeeded", lambda ev: seen.append(str(ev.task)))
    result = run_file(path, registry_with(rec=rec.plugin), bus=bus)
    assert result.ok
    assert seen == ["a", "b"]
    assert bus.errors, "the subscriber's failure is kept"
    assert all(isinstance(exc, RuntimeError) for _, exc in bus.errors)
    assert {ev.topic for ev, _ in bus.errors} == {"task.started", "task.succeeded"}
