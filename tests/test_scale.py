"""Checks that must stay linear at scale, counted in operations rather than timed.

A template that names an upstream task asks the graph whether that task is an ancestor.
Walking every ancestor for each reference made a chain of n templated tasks cost n²/2
visits (11 s and 1.4 GB at 8k tasks). These tests count the lookups of a node's
predecessors the check makes (each visit of an ancestor is one) on 5k-task chains.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import goatclaw
import goatclaw.api
from goatclaw.graph import Dag

N = 5_000


class CountingDict(dict[str, list[str]]):
    """A node's predecessors, counting each lookup."""

    lookups = 0

    def __getitem__(self, key: str) -> list[str]:
        CountingDict.lookups += 1
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        CountingDict.lookups += 1
        return super().get(key, default)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """Count the predecessor lookups of the template checks in ``goatclaw.check``."""
    real = goatclaw.api._check_templates

    def counting(pipeline: Any, graph: Dag) -> Any:
        graph.pred = CountingDict(graph.pred)
        CountingDict.lookups = 0
        try:
            return real(pipeline, graph)
        finally:
            graph.pred = dict(graph.pred)

    monkeypatch.setattr(goatclaw.api, "_check_templates", counting)
    return lambda: CountingDict.lookups


def chain(path: Path, reads: Callable[[int], int]) -> Path:
    """``N`` echo tasks, each needing the one before and reading ``tasks.t<reads(i)>.output``."""
    lines = ["version: 1", "name: chain", "tasks:", "  t0: {uses: echo, with: {value: 0}}"]
    for i in range(1, N):
        ref = f"tasks.t{reads(i)}.output"
        lines.append(f"  t{i}: {{uses: echo, needs: [t{i - 1}], with: {{value: '${{{{ {ref} }}}}'}}}}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.parametrize(("shape", "reads"), [
    ("each reads the task it needs", lambda i: i - 1),
    ("each reads the first task", lambda i: 0),
    ("each reads the task two back", lambda i: max(0, i - 2)),
], ids=["previous", "first", "two-back"])
def test_template_checks_of_a_chain_are_linear(project: Path, counted: Callable[[], int], shape: str,
                                               reads: Callable[[int], int]) -> None:
    _, problems = goatclaw.check(chain(project / "chain.yaml", reads))
    assert [p for p in problems if p.severity == "error"] == []
    assert counted() <= 10 * N, f"{shape}: {counted():,} predecessor lookups for {N:,} tasks (quadratic?)"


def test_a_task_that_is_not_upstream_is_still_refused(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          a: {uses: echo, with: {value: 1}}
          b: {uses: echo, needs: [a], with: {value: 2}}
          c: {uses: echo, needs: [a], with: {value: "${{ tasks.b.output }}"}}
          d: {uses: echo, needs: [c], with: {value: "${{ tasks.a.output }}"}}
          e: {uses: echo, needs: [d], with: {value: "${{ tasks.f.output }}"}}
          f: {uses: echo, needs: [b]}
    """)
    _, problems = goatclaw.check(path)
    messages = sorted(p.message for p in problems if p.severity == "error")
    assert messages == ["task 'b' is not upstream of 'c': add it to needs",
                        "task 'f' is not upstream of 'e': add it to needs"]


def test_reaches_agrees_with_ancestors_on_random_dags() -> None:
    rng = random.Random(3)
    for _ in range(200):
        n = rng.randint(1, 30)
        dag = Dag(f"n{i}" for i in range(n))
        for j in range(1, n):
            for i in rng.sample(range(j), min(j, rng.randint(0, 3))):
                dag.add_edge(f"n{i}", f"n{j}")
        for _ in range(60):  # the same refs asked many times, so the memoised descendants answer too
            a, b = f"n{rng.randrange(n)}", f"n{rng.randrange(n)}"
            assert dag.reaches(a, b) == (a in dag.ancestors(b)), (a, b, dag.edges)


def test_what_the_check_built_is_frozen_for_the_run_and_unfrozen_after(project: Path) -> None:
    """The cyclic GC never scans the checked pipeline during its run, and can collect it again after."""
    path = project / "wide.yaml"
    tasks = (f"  t{i}: {{uses: echo, with: {{value: {i}}}}}" for i in range(2000))
    lines = ["version: 1", "name: wide", "tasks:", *tasks]
    path.write_text("\n".join(lines) + "\n")
    gc.unfreeze()
    pipeline = goatclaw.load(path)
    frozen = gc.get_freeze_count()
    assert frozen > 20 * len(pipeline.tasks)  # the check's objects, not left in generation 0 for its first collection
    seen: list[int] = []
    bus = goatclaw.Bus()
    bus.subscribe("task.*", lambda event: seen.append(gc.get_freeze_count()))
    result = goatclaw.run(pipeline, bus=bus, store=False)
    assert result.ok
    assert seen and min(seen) >= frozen  # frozen the whole run
    assert gc.get_freeze_count() == 0  # and thawed after it
