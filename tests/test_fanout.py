"""A ``foreach`` runs its items on a fixed pool of workers: bounded in flight, in order, resumable.

Real pipeline files, plugins registered on a fresh Registry, real SQLite stores. The
plugins count the asyncio tasks alive while an item runs: with one task per item a
fan-out over 2,000 items had 2,000 of them; with the pool it has ``concurrency``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import goatclaw
from goatclaw import TaskState
from goatclaw.store import Store

N = 2_000


def registry_with(**plugins: Callable[..., Any]) -> goatclaw.Registry:
    reg = goatclaw.Registry(entry_points=False)
    for name, fn in plugins.items():
        reg.register_task(name, fn)
    return reg


class Watch:
    """A plugin that records the items in flight and the asyncio tasks alive while each runs."""

    def __init__(self, fail: frozenset[int] = frozenset()) -> None:
        self.fail = fail
        self.flight = 0
        self.most_in_flight = 0
        self.most_tasks = 0
        self.started: list[int] = []

    async def plugin(self, ctx: goatclaw.TaskContext, n: int) -> dict[str, int]:
        self.started.append(n)
        self.flight += 1
        self.most_in_flight = max(self.most_in_flight, self.flight)
        self.most_tasks = max(self.most_tasks, len(asyncio.all_tasks()))
        try:
            await asyncio.sleep(0)
            if n in self.fail:
                goatclaw.fail(f"item {n} refused", error_class="invalid_input")
            return {"n": n, "square": n * n}
        finally:
            self.flight -= 1


def fan_pipeline(write_pipeline: Callable[..., Path], *, fail_fast: bool = True, concurrency: int = 3) -> Path:
    return write_pipeline(f"""
        version: 1
        vars: {{items: []}}
        concurrency: {concurrency}
        tasks:
          fan:
            uses: watch
            foreach: ${{{{ vars.items }}}}
            fail_fast: {str(fail_fast).lower()}
            with: {{n: "${{{{ item }}}}"}}
          total:
            uses: echo
            needs: fan
            with: {{value: "${{{{ tasks.fan.outputs | map(attribute='square') | sum }}}}"}}
        """)


def test_a_big_fan_out_holds_only_its_concurrency_in_flight(write_pipeline: Callable[..., Path],
                                                             tmp_path: Path) -> None:
    watch = Watch()
    reg = registry_with(watch=watch.plugin)
    pipeline = goatclaw.load(fan_pipeline(write_pipeline), registry=reg)
    result = goatclaw.run(pipeline, registry=reg, vars={"items": list(range(N))}, store=tmp_path / "s.db")
    assert result.ok, result.to_dict()
    assert watch.most_in_flight == 3
    assert watch.most_tasks < 20, watch.most_tasks  # a few workers and the run's own tasks, not one per item
    assert watch.started == list(range(N))  # items start in order
    assert result.outputs["fan"] == [{"n": i, "square": i * i} for i in range(N)]
    assert result.outputs["total"] == sum(i * i for i in range(N))
    with Store.open(tmp_path / "s.db") as db:  # the stored output is the whole list, readable on demand
        row = {t.task_id: t for t in db.tasks(result.run_id)}["fan"]
    assert row.output == result.outputs["fan"]


def test_fail_fast_starts_no_item_after_the_first_failure(write_pipeline: Callable[..., Path]) -> None:
    watch = Watch(fail=frozenset({10}))
    reg = registry_with(watch=watch.plugin)
    pipeline = goatclaw.load(fan_pipeline(write_pipeline), registry=reg)
    result = goatclaw.run(pipeline, registry=reg, vars={"items": list(range(N))}, store=False)
    fan = result.tasks["fan"]
    assert fan.status is TaskState.FAILED
    assert fan.error is not None and fan.error.startswith("item 10: item 10 refused"), fan.error
    # the workers stop at their next step: a few items past the failure, not the 2,000 of them
    assert max(watch.started) < 10 + 2 * 3, watch.started
    assert result.tasks["total"].status is TaskState.UPSTREAM_FAILED


def test_without_fail_fast_every_item_runs_and_the_first_failure_is_named(write_pipeline: Callable[..., Path]) -> None:
    watch = Watch(fail=frozenset({7, 3, 1500}))
    reg = registry_with(watch=watch.plugin)
    pipeline = goatclaw.load(fan_pipeline(write_pipeline, fail_fast=False), registry=reg)
    result = goatclaw.run(pipeline, registry=reg, vars={"items": list(range(N))}, store=False)
    fan = result.tasks["fan"]
    assert fan.status is TaskState.FAILED
    assert fan.error is not None and fan.error.startswith("3 of 2000 items failed; item 3: item 3 refused"), fan.error
    assert sorted(watch.started) == list(range(N))
    assert watch.most_in_flight == 3


def test_a_fan_out_that_finished_is_not_run_again_on_resume(write_pipeline: Callable[..., Path],
                                                           tmp_path: Path) -> None:
    """The fan-out succeeds, the task after it fails; the resume runs only that task, from the stored outputs."""
    calls: list[int] = []

    async def watch(ctx: goatclaw.TaskContext, n: int) -> dict[str, int]:
        calls.append(n)
        return {"n": n, "square": n * n}

    flag = tmp_path / "fixed"

    async def after(ctx: goatclaw.TaskContext, total: int) -> int:
        if not flag.exists():
            goatclaw.fail("not yet", error_class="invalid_input")
        return total

    reg = registry_with(watch=watch, after=after)
    path = write_pipeline("""
        version: 1
        vars: {items: []}
        tasks:
          fan: {uses: watch, foreach: "${{ vars.items }}", with: {n: "${{ item }}"}}
          last:
            uses: after
            needs: fan
            with: {total: "${{ tasks.fan.outputs | map(attribute='square') | sum }}"}
        """)
    pipeline = goatclaw.load(path, registry=reg)
    store = tmp_path / "s.db"
    first = goatclaw.run(pipeline, registry=reg, vars={"items": list(range(500))}, store=store, cache=False)
    assert first.tasks["fan"].status is TaskState.SUCCEEDED and first.tasks["last"].status is TaskState.FAILED
    assert len(calls) == 500
    flag.write_text("ok")
    again = goatclaw.run(pipeline, registry=reg, store=store, resume=True, cache=False)
    assert again.ok, again.to_dict()
    assert again.run_id == first.run_id
    assert len(calls) == 500  # no item ran twice
    assert again.outputs["last"] == sum(i * i for i in range(500))
    assert json.loads(json.dumps(again.outputs["fan"])) == [{"n": i, "square": i * i} for i in range(500)]
