"""The graph: unknown needs, self-dependencies, cycles, plan levels and the plan documents."""

from __future__ import annotations

import itertools
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import networkx as nx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import goatclaw
from goatclaw.cli.app import app
from goatclaw.errors import Location, SpecError

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def problems_of(path: Path) -> list[str]:
    _, found = goatclaw.check(path)
    return [str(p).removeprefix(f"{path}:") for p in found]


# -- needs ------------------------------------------------------------------------------------


def test_unknown_needs_say_did_you_mean(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          fetch: {uses: echo}
          parse:
            uses: echo
            needs: [fetch, fecth, zzz]
          report:
            uses: echo
            needs: parsee
        """)
    assert problems_of(path) == [
        "6:20: tasks.parse.needs[1]: unknown task 'fecth' (did you mean 'fetch'?)",
        "6:27: tasks.parse.needs[2]: unknown task 'zzz'",
        "9:12: tasks.report.needs: unknown task 'parsee' (did you mean 'parse'?)",
    ]


def test_self_dependency(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          a: {uses: echo}
          b:
            uses: echo
            needs: [a, b]
        """)
    assert problems_of(path) == ["6:16: tasks.b.needs[1]: task 'b' cannot need itself"]


def test_a_cycle_is_reported_whole_at_the_first_tasks_needs(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          start: {uses: echo}
          c:
            uses: echo
            needs: [b]
          a:
            uses: echo
            needs: [start, c]
          b:
            uses: echo
            needs: a
        """)
    assert problems_of(path) == ["6:12: tasks.c.needs: dependency cycle: c -> a -> b -> c"]
    with pytest.raises(SpecError) as info:
        goatclaw.load(path)
    assert info.value.location == Location(str(path), 6, 12)


def test_each_separate_cycle_is_reported_once(project: Path) -> None:
    shutil.copy(FIXTURES / "invalid" / "graph_errors.yaml", project / "g.yaml")
    assert problems_of(project / "g.yaml") == [
        "5:12: tasks.lonely.needs: task 'lonely' cannot need itself",
        "8:12: tasks.a.needs: dependency cycle: a -> b -> c -> a",
        "17:12: tasks.x.needs: dependency cycle: x -> y -> x",
        "23:13: tasks.z.needs[0]: unknown task 'bb' (did you mean 'b'?)",
        "23:17: tasks.z.needs[1]: unknown task 'zz' (did you mean 'z'?)",
    ]


def test_unknown_fallback_is_reported(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("version: 1\ntasks:\n  a: {uses: echo, fallback: bakup}\n  backup: {uses: echo}\n")
    assert problems_of(path) == ["3:29: tasks.a.fallback: unknown task 'bakup' (did you mean 'backup'?)"]


# -- the plan ---------------------------------------------------------------------------------------


DIAMOND_EDGES = {("fetch", "parse"), ("fetch", "stats"), ("parse", "report"), ("stats", "report")}


@pytest.fixture
def diamond(project: Path) -> Path:
    path = project / "diamond.yaml"
    shutil.copy(FIXTURES / "valid" / "diamond.yaml", path)
    return path


def test_plan_levels(diamond: Path) -> None:
    plan = goatclaw.plan(goatclaw.load(diamond))
    assert plan.levels == (("fetch",), ("parse", "stats"), ("report",))
    assert plan.order == ("fetch", "parse", "stats", "report")
    assert set(plan.needs["report"]) == {"parse", "stats"}
    assert set(plan.dependents["fetch"]) == {"parse", "stats"}
    assert plan.ancestors("report") == {"fetch", "parse", "stats"}


def test_plan_levels_keep_file_order_within_a_level(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("version: 1\ntasks:\n  z: {uses: echo}\n  m: {uses: echo}\n  a: {uses: echo, needs: [z, m]}\n"
                          "  b: {uses: echo}\n")
    assert goatclaw.plan(goatclaw.load(path)).levels == (("z", "m", "b"), ("a",))


def test_plan_command_prints_a_tree_of_levels(diamond: Path) -> None:
    result = CliRunner().invoke(app, ["plan", "diamond.yaml"])
    assert result.exit_code == 0, result.output
    lines = [line.strip("│├└─ ") for line in result.stdout.splitlines()]
    assert lines == [
        "diamond: 4 tasks in 3 levels",
        "level 1",
        "fetch  echo",
        "level 2",
        "parse  echo  ← fetch",
        "stats  echo  ← fetch",
        "level 3",
        "report  echo  ← parse, stats",
    ]


def test_plan_json(diamond: Path) -> None:
    result = CliRunner().invoke(app, ["plan", "diamond.yaml", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["pipeline"] == "diamond"
    assert data["levels"] == [["fetch"], ["parse", "stats"], ["report"]]
    assert {(n, t) for t, spec in data["tasks"].items() for n in spec["needs"]} == DIAMOND_EDGES
    assert data["tasks"]["report"]["uses"] == "echo"


def mermaid_edges(text: str) -> set[tuple[str, str]]:
    names = {m.group(1): m.group(2) for m in re.finditer(r'^\s*(\w+)\["([^<"]+)', text, re.M)}
    return {(names[a], names[b]) for a, b in re.findall(r"^\s*(\w+) --> (\w+)\s*$", text, re.M)}


def dot_edges(text: str) -> set[tuple[str, str]]:
    return {(json.loads(a), json.loads(b)) for a, b in re.findall(r'^\s*("[^"]*") -> ("[^"]*");$', text, re.M)}


def test_plan_mermaid_has_every_edge(diamond: Path) -> None:
    result = CliRunner().invoke(app, ["plan", "diamond.yaml", "--format", "mermaid"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("flowchart TD\n")
    assert mermaid_edges(result.stdout) == DIAMOND_EDGES


def test_plan_dot_has_every_edge(diamond: Path) -> None:
    result = CliRunner().invoke(app, ["plan", "diamond.yaml", "-f", "dot"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith('digraph "diamond" {')
    assert result.stdout.rstrip().endswith("}")
    assert dot_edges(result.stdout) == DIAMOND_EDGES


def test_plan_of_an_invalid_file_exits_2_with_located_problems(project: Path) -> None:
    shutil.copy(FIXTURES / "invalid" / "graph_errors.yaml", project / "g.yaml")
    result = CliRunner().invoke(app, ["plan", "g.yaml"])
    assert result.exit_code == 2
    assert "g.yaml:8:12: tasks.a.needs: dependency cycle: a -> b -> c -> a" in result.output.splitlines()
    assert result.stdout == ""


# -- property: random graphs --------------------------------------------------------------------------


@st.composite
def digraphs(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]]]:
    """Up to 30 nodes and random edges ``(need, task)``, self-loops and back-edges included."""
    n = draw(st.integers(1, 30))
    node = st.integers(0, n - 1)
    edges = draw(st.lists(st.tuples(node, node), max_size=3 * n, unique=True))
    return n, edges


def write_graph(path: Path, n: int, edges: list[tuple[int, int]]) -> dict[str, int]:
    """Write the graph as a pipeline of echo tasks; return the line of each task's ``needs``."""
    needs: dict[int, list[int]] = {i: [] for i in range(n)}
    for need, task in edges:
        needs[task].append(need)
    lines = ["version: 1", "tasks:"]
    needs_line: dict[str, int] = {}
    for i in range(n):
        lines += [f"  t{i}:", "    uses: echo"]
        if needs[i]:
            lines.append(f"    needs: [{', '.join(f't{j}' for j in needs[i])}]")
            needs_line[f"t{i}"] = len(lines)
    path.write_text("\n".join(lines) + "\n")
    return needs_line


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graph=digraphs())
def test_cycles_are_reported_iff_the_graph_is_not_a_dag(project: Path,
                                                        graph: tuple[int, list[tuple[int, int]]]) -> None:
    n, edges = graph
    path = project / "random.yaml"
    needs_line = write_graph(path, n, edges)
    g = nx.DiGraph()
    g.add_nodes_from(f"t{i}" for i in range(n))
    g.add_edges_from((f"t{a}", f"t{b}") for a, b in edges if a != b)
    self_loops = {f"t{a}" for a, b in edges if a == b}

    _, problems = goatclaw.check(path)
    event("acyclic" if nx.is_directed_acyclic_graph(g) else "cyclic")
    cycles = [p for p in problems if "dependency cycle" in p.message]
    selves = [p for p in problems if "cannot need itself" in p.message]
    assert len(cycles) + len(selves) == len(problems), problems

    assert bool(cycles) == (not nx.is_directed_acyclic_graph(g))
    assert {p.path.split(".")[1] for p in selves} == self_loops
    components = [c for c in nx.strongly_connected_components(g) if len(c) > 1]
    assert len(cycles) == len(components)
    for problem in cycles:
        ids = problem.message.removeprefix("dependency cycle: ").split(" -> ")
        assert ids[0] == ids[-1] and len(set(ids)) == len(ids) - 1
        assert all(g.has_edge(a, b) for a, b in itertools.pairwise(ids))
        first = ids[0]
        assert first == min(ids, key=lambda t: int(t[1:]))  # the first in file order
        assert problem.location is not None and problem.location.line == needs_line[first]

    if not problems:
        plan = goatclaw.plan(goatclaw.load(path))
        level = {t: i for i, tasks in enumerate(plan.levels) for t in tasks}
        assert sorted(level) == sorted(g.nodes)
        assert sum(len(tasks) for tasks in plan.levels) == n
        assert all(level[a] < level[b] for a, b in g.edges)
        for t in g.nodes:  # each task sits just after its latest need
            assert level[t] == max((level[p] + 1 for p in g.predecessors(t)), default=0)
        for tasks in plan.levels:
            assert list(tasks) == sorted(tasks, key=lambda t: int(t[1:]))
