"""Checks that must stay linear at scale, counted in operations rather than timed.

A template that names an upstream task asks the graph whether that task is an ancestor.
Walking every ancestor for each reference made a chain of n templated tasks cost n²/2
visits (11 s and 1.4 GB at 8k tasks). These tests count the lookups of a node's
predecessors the check makes (each visit of an ancestor is one) on 5k-task chains.
"""

from __future__ import annotations

import gc
import itertools
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
    events = itertools.count()
    # gc.get_freeze_count() walks the frozen objects: asked at every 500th event only
    bus.subscribe("task.*", lambda event: next(events) % 500 or seen.append(gc.get_freeze_count()))
    result = goatclaw.run(pipeline, bus=bus, store=False)
    assert result.ok
    assert seen and min(seen) >= frozen  # frozen the whole run
    assert gc.get_freeze_count() == 0  # and thawed after it


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, int]:
    """How many times Jinja2 compiled each source (into Python code), counted from here on (no code cache yet)."""
    import jinja2

    monkeypatch.setenv("GOATCLAW_CACHE_DIR", str(tmp_path / "code-cache"))  # goatclaw/codecache.py: empty

    real = jinja2.Environment.compile
    counts: dict[str, int] = {}

    def counting(self: Any, source: Any, *args: Any, **kwargs: Any) -> Any:
        key = source if isinstance(source, str) else repr(source)
        counts[key] = counts.get(key, 0) + 1
        return real(self, source, *args, **kwargs)

    monkeypatch.setattr(jinja2.Environment, "compile", counting)
    return counts


def test_each_template_is_compiled_once_for_check_and_run(project: Path, compiles: dict[str, int]) -> None:
    """The run reuses what the check compiled; a plain ``tasks.x.output`` path is never compiled at all."""
    lines = ["version: 1", "name: templated", "tasks:", "  t0: {uses: echo, with: {value: 1, text: x}}"]
    for i in range(1, 40):
        lines.append(f"  t{i}:\n    uses: echo\n    needs: [t{i - 1}]\n    if: tasks.t{i - 1}.output.value > 0\n"
                     f"    with: {{value: '${{{{ tasks.t{i - 1}.output.value }}}}', "
                     f"text: 'n=${{{{ tasks.t{i - 1}.output.value + 1 }}}}'}}")
    path = project / "templated.yaml"
    path.write_text("\n".join(lines) + "\n")
    result = goatclaw.run(goatclaw.load(path), store=False)
    assert result.ok, [t.error for t in result.tasks.values() if t.error][:1]
    assert result.tasks["t39"].output == {"value": 1, "text": "n=2"}
    twice = {source: n for source, n in compiles.items() if n > 1}
    assert twice == {}, f"compiled more than once: {twice}"
    assert len(compiles) >= 39  # each `text:` template (and the if: expressions that are not a plain path)
    assert not any(".output.value }}" in source and "+" not in source for source in compiles)


def test_a_dotted_path_fails_as_jinja_does() -> None:
    """The fast path for ``a.b.c`` leaves every case it does not resolve to Jinja2: same values, same errors."""
    from goatclaw.errors import TemplateError
    from goatclaw.template import compile_expression, environment

    context = {"tasks": {"a": {"output": {"items": 3, "n": None}}}, "vars": {}}
    assert compile_expression("tasks.a.output.items").evaluate(context) == 3  # keys win over methods
    assert compile_expression("tasks.a.output.n").evaluate(context) is None
    assert compile_expression("range").evaluate(context) is environment().globals["range"]
    for source in ("tasks.a.nope", "tasks.b.output", "nothing", "tasks.a.output.n.x", "vars.x"):
        with pytest.raises(TemplateError) as fast:
            compile_expression(source).evaluate(context)
        expected = environment().compile_expression(source, undefined_to_none=False)
        with pytest.raises(Exception) as slow:
            value = expected(context)
            getattr(value, "_fail_with_undefined_error", lambda: None)()
        assert str(slow.value) in fast.value.message, (source, fast.value.message, slow.value)
