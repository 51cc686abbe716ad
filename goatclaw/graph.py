"""Pipeline → DAG: dependency checks, cycles, template references, and the plan.

The only module that imports networkx. Checking and planning run on a plain adjacency
table (:class:`Dag`: Kahn's algorithm finds the levels and whether there is a cycle in
linear time, several times faster than building a networkx graph for 10k tasks);
networkx names the cycles when there are some, and :attr:`Plan.graph` is the plan as a
networkx ``DiGraph``, built on first use, for analysis and export. The engine's hot loop
runs on the plain ``needs``/``dependents`` tables of the :class:`Plan`.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from goatclaw.errors import Location, Problem, SpecError, TemplateError
from goatclaw.spec.loader import dotted
from goatclaw.spec.model import Pipeline, Task
from goatclaw.template import TemplateRefs, check_expression, check_value, has_template

__all__ = ["Dag", "Plan", "build_plan", "check_templates", "compile_plan", "graph_problems", "knowledge_graph",
           "plan_data", "render_knowledge", "render_plan"]

#: Names every task template may read.
TASK_NAMES = frozenset({"vars", "env", "secrets", "run", "tasks"})
FOREACH_NAMES = frozenset({"item", "index"})
RULE_NAMES = frozenset({"output"})
#: Jinja2 globals (range, dict, lipsum, cycler, joiner, namespace) are always defined.
JINJA_GLOBALS = frozenset({"range", "dict", "lipsum", "cycler", "joiner", "namespace", "true", "false", "none"})


class Dag:
    """A directed graph as plain tables: nodes in file order, successors and predecessors."""

    __slots__ = ("_ancestors", "_descendants", "_level_of", "_levels", "_spent", "pred", "succ")

    def __init__(self, nodes: Iterable[str]) -> None:
        self.succ: dict[str, list[str]] = {n: [] for n in nodes}
        self.pred: dict[str, list[str]] = {n: [] for n in self.succ}
        self._ancestors: dict[str, frozenset[str]] = {}
        self._levels: list[list[str]] | bool | None = False  # False: not computed yet
        self._level_of: dict[str, int] | None = None
        self._descendants: dict[str, frozenset[str]] = {}  # of the nodes :meth:`reaches` is often asked about
        self._spent: dict[str, int] = {}  # nodes :meth:`reaches` visited searching for each node so far

    def add_edge(self, src: str, dst: str) -> None:
        """``src`` must finish before ``dst`` (a repeated edge is kept once)."""
        if dst not in self.succ[src]:
            self.succ[src].append(dst)
            self.pred[dst].append(src)
            self._levels = False
            self._level_of = None
            self._ancestors.clear()
            self._descendants.clear()
            self._spent.clear()

    def __contains__(self, node: object) -> bool:
        return node in self.succ

    def __len__(self) -> int:
        return len(self.succ)

    @property
    def edges(self) -> list[tuple[str, str]]:
        """Every edge ``(src, dst)``, in node order."""
        return [(a, b) for a, succ in self.succ.items() for b in succ]

    def successors(self, node: str) -> list[str]:
        """The nodes that need ``node``."""
        return self.succ[node]

    def generations(self) -> list[list[str]] | None:
        """Kahn's algorithm: the nodes level by level, or ``None`` when there is a cycle (computed once)."""
        if self._levels is False:
            self._levels = self._kahn()
        return self._levels  # type: ignore[return-value]

    def _kahn(self) -> list[list[str]] | None:
        indegree = {n: len(p) for n, p in self.pred.items()}
        level = [n for n, d in indegree.items() if d == 0]
        levels = []
        seen = 0
        while level:
            levels.append(level)
            seen += len(level)
            following = []
            for n in level:
                for d in self.succ[n]:
                    indegree[d] -= 1
                    if indegree[d] == 0:
                        following.append(d)
            level = following
        return levels if seen == len(self.succ) else None

    def ancestors(self, node: str) -> frozenset[str]:
        """Every node ``node`` depends on, directly or transitively (memoised)."""
        found = self._ancestors.get(node)
        if found is None:
            seen: set[str] = set()
            stack = list(self.pred.get(node, ()))
            while stack:
                n = stack.pop()
                if n not in seen:
                    seen.add(n)
                    stack.extend(self.pred[n])
            found = self._ancestors[node] = frozenset(seen)
        return found

    def reaches(self, ref: str, node: str) -> bool:
        """Whether ``node`` depends on ``ref``, directly or transitively (``ref in ancestors(node)``).

        Asked once per template reference, so it must not cost a walk of every ancestor
        each time (a 10k-task chain would be quadratic). A direct need answers at once;
        otherwise a search back from ``node`` stops at ``ref`` and never goes below
        ``ref``'s level (an ancestor of ``ref``'s level or lower cannot lead to it). When the
        searches for one ``ref`` have visited as many nodes as the graph has, its
        descendants are computed once (one linear walk) and answer every later question.
        So a ``ref`` costs at most about twice the graph's size however often it is named.
        In a cyclic graph (already reported) the answer comes from :meth:`ancestors`.
        """
        pred = self.pred
        if ref not in pred or node not in pred:
            return False
        preds = pred[node]
        if ref in preds:
            return True
        down = self._descendants.get(ref)
        if down is not None:
            return node in down
        level = self._levels_by_node()
        if level is None:
            return ref in self.ancestors(node)
        floor = level[ref]
        if floor >= level[node]:
            return False
        seen: set[str] = set()
        stack = [p for p in preds if level[p] > floor]
        found = False
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            up = pred[n]
            if ref in up:
                found = True
                break
            stack.extend(p for p in up if level[p] > floor and p not in seen)
        spent = self._spent[ref] = self._spent.get(ref, 0) + len(seen)
        if spent >= len(pred):
            self._descendants[ref] = self._reachable_from(ref)
        return found

    def _levels_by_node(self) -> dict[str, int] | None:
        """Each node's level (its longest chain of needs), or ``None`` when there is a cycle."""
        if self._level_of is None:
            generations = self.generations()
            if generations is None:
                return None
            self._level_of = {n: i for i, gen in enumerate(generations) for n in gen}
        return self._level_of

    def _reachable_from(self, node: str) -> frozenset[str]:
        """Every node that depends on ``node``, directly or transitively."""
        seen: set[str] = set()
        stack = list(self.succ[node])
        while stack:
            n = stack.pop()
            if n not in seen:
                seen.add(n)
                stack.extend(self.succ[n])
        return frozenset(seen)

    def to_networkx(self) -> Any:
        """The same graph as a networkx ``DiGraph``."""
        import networkx as nx  # only when asked: importing it costs more than checking 10k tasks

        graph = nx.DiGraph()
        graph.add_nodes_from(self.succ)
        graph.add_edges_from(self.edges)
        return graph


@dataclass(frozen=True)
class Plan:
    """The compiled, frozen plan of a pipeline's main graph."""

    pipeline: Pipeline
    order: tuple[str, ...]
    levels: tuple[tuple[str, ...], ...]
    needs: Mapping[str, tuple[str, ...]]
    dependents: Mapping[str, tuple[str, ...]]
    dag: Dag = field(repr=False, compare=False)
    _nx: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    #: What every run of the plan derives alike (the runner's: its selection, the needs counts), made once.
    memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def graph(self) -> Any:
        """The plan as a networkx ``DiGraph`` (built on first use)."""
        if "graph" not in self._nx:
            self._nx["graph"] = self.dag.to_networkx()
        return self._nx["graph"]

    def ancestors(self, task_id: str) -> set[str]:
        """Every task ``task_id`` depends on, directly or transitively."""
        return set(self.dag.ancestors(task_id)) if task_id in self.dag else set()


def compile_plan(pipeline: Pipeline) -> Plan:
    """Compile ``pipeline``'s graph into a plan; :class:`SpecError` if the graph is broken.

    Templates are checked by :func:`check_templates` when the pipeline is loaded.
    """
    cached = pipeline.memo.get("plan")
    if isinstance(cached, Plan):
        return cached
    problems, graph = _graph_problems(pipeline)
    if problems:
        raise SpecError(problems)
    plan = build_plan(pipeline, graph)
    pipeline.memo["plan"] = plan
    return plan


def graph_problems(pipeline: Pipeline) -> tuple[list[Problem], Dag]:
    """Unknown needs, self-dependencies, cycles and bad ``fallback`` names, plus the graph."""
    return _graph_problems(pipeline)


def _graph_problems(pipeline: Pipeline) -> tuple[list[Problem], Dag]:
    tasks = pipeline.tasks
    graph = Dag(tasks)
    problems: list[Problem] = []
    for task in tasks.values():
        for i, need in enumerate(task.needs):
            if need in tasks and need != task.id:
                graph.add_edge(need, task.id)
            elif need == task.id:
                problems.append(_problem(pipeline, _need_path(pipeline, task, i),
                                         f"task '{task.id}' cannot need itself"))
            else:
                problems.append(_problem(pipeline, _need_path(pipeline, task, i),
                                         f"unknown task '{need}'{_did_you_mean(need, tasks)}"))
        if task.fallback is not None and task.fallback not in tasks:
            problems.append(_problem(pipeline, (*task.path, "fallback"),
                                     f"unknown task '{task.fallback}'{_did_you_mean(task.fallback, tasks)}"))
    for group in (pipeline.on_failure, pipeline.finally_):
        for task in group.values():
            for i, need in enumerate(task.needs):
                if need not in group:
                    problems.append(_problem(pipeline, (*task.path, "needs", i),
                                             f"unknown task '{need}' in {task.group}{_did_you_mean(need, group)}"))
    if graph.generations() is None:
        problems += _cycle_problems(pipeline, graph.to_networkx())
    return problems, graph


def _need_path(pipeline: Pipeline, task: Task, i: int) -> tuple[str | int, ...]:
    """``tasks.x.needs[i]`` when needs is a list in the file, ``tasks.x.needs`` when a string."""
    path = (*task.path, "needs", i)
    src = pipeline.source
    return path if src is None or path in src.locations else (*task.path, "needs")


def _cycle_problems(pipeline: Pipeline, graph: Any) -> list[Problem]:
    problems = []
    seen: set[frozenset[str]] = set()
    import networkx as nx

    for component in nx.strongly_connected_components(graph):
        if len(component) < 2 or frozenset(component) in seen:
            continue
        seen.add(frozenset(component))
        cycle = nx.find_cycle(graph.subgraph(component))
        ids = [edge[0] for edge in cycle]
        start = min(ids, key=lambda t: pipeline.tasks[t].order)
        k = ids.index(start)
        ids = ids[k:] + ids[:k]
        text = " -> ".join([*ids, ids[0]])
        problems.append(_problem(pipeline, (*pipeline.tasks[start].path, "needs"), f"dependency cycle: {text}"))
    return problems


def check_templates(pipeline: Pipeline, graph: Dag) -> list[Problem]:
    """Template syntax errors and references to unknown or non-upstream tasks or names."""
    problems: list[Problem] = []
    for task in pipeline.tasks.values():
        problems += _task_template_problems(pipeline, task, _Upstream(graph, task.id), pipeline.tasks)
    for group in (pipeline.on_failure, pipeline.finally_):
        for task in group.values():
            problems += _task_template_problems(pipeline, task, set(pipeline.tasks) | set(task.needs),
                                                {**pipeline.tasks, **group})
    return problems


class _Upstream:
    """``ref in upstream``: whether ``ref`` is an ancestor of a task, searched only when asked (:meth:`Dag.reaches`)."""

    def __init__(self, graph: Dag, task_id: str) -> None:
        self.graph = graph
        self.task_id = task_id

    def __contains__(self, ref: object) -> bool:
        return isinstance(ref, str) and self.graph.reaches(ref, self.task_id)


def _task_template_problems(pipeline: Pipeline, task: Task, upstream: Any,
                            known: Mapping[str, Task]) -> list[Problem]:
    names = TASK_NAMES | (FOREACH_NAMES if task.foreach is not None else frozenset())
    found: list[tuple[tuple[str | int, ...], TemplateRefs | TemplateError, frozenset[str]]] = []
    found += [((*task.path, "with", *p), r, names) for p, r in check_value(dict(task.with_))]
    if task.approval is not None and task.approval.message is not None:  # rendered when the request is made
        found += [((*task.path, "approval"), r, TASK_NAMES) for _, r in check_value(task.approval.message)]
    if isinstance(task.if_, str):
        found.append(((*task.path, "if"), check_expression(task.if_), names))
    if isinstance(task.foreach, str):
        refs = check_value(task.foreach) if has_template(task.foreach) else [((), check_expression(task.foreach))]
        found += [((*task.path, "foreach", *p), r, TASK_NAMES) for p, r in refs]
    for rule in task.validate:
        if rule.kind == "expr" and isinstance(rule.arg, str):
            found.append(((*rule.path, "expr"), check_expression(rule.arg), names | RULE_NAMES))
    problems = []
    for path, refs, allowed in found:
        if isinstance(refs, TemplateError):
            problems.append(_problem(pipeline, path, refs.message))
            continue
        for name in sorted(refs.names - allowed - JINJA_GLOBALS):
            problems.append(_problem(pipeline, path, f"unknown name '{name}'{_did_you_mean(name, allowed)}"))
        for ref in refs.tasks:
            if ref not in known:
                problems.append(_problem(pipeline, path, f"unknown task '{ref}'{_did_you_mean(ref, known)}"))
            elif ref not in upstream:
                problems.append(_problem(pipeline, path, f"task '{ref}' is not upstream of '{task.id}': "
                                                         f"add it to needs"))
        problems += [_problem(pipeline, path, m) for m in _field_problems(pipeline, refs, known)]
    return problems


#: What a template sees of a finished task (``tasks.<id>.<field>``); ``outputs`` only for a ``foreach``.
TASK_FIELDS = frozenset({"status", "output", "error"})


def _field_problems(pipeline: Pipeline, refs: TemplateRefs, known: Mapping[str, Task]) -> list[str]:
    """Typos the run would only meet as an undefined value: ``vars.nme``, ``tasks.a.outputs`` without foreach.

    A variable that is not declared is reported only when it is close to one that is (a
    variable may also come from ``--var`` alone).
    """
    out = []
    for name in dict.fromkeys(refs.vars):
        if name not in pipeline.vars:
            close = difflib.get_close_matches(name, list(pipeline.vars), n=1, cutoff=0.6)
            if close:
                out.append(f"unknown variable 'vars.{name}' (did you mean 'vars.{close[0]}'?)")
    for tid, name in dict.fromkeys(refs.task_fields):
        if tid not in known:
            continue
        fields = TASK_FIELDS | ({"outputs"} if known[tid].foreach is not None else frozenset()) | (
            {"approval"} if known[tid].approval is not None else frozenset())
        if name == "outputs" and name not in fields:
            out.append(f"task '{tid}' has no foreach, so it has no 'outputs' (did you mean 'tasks.{tid}.output'?)")
        elif name not in fields:
            out.append(f"task '{tid}' has no field '{name}'" + (_did_you_mean(name, sorted(fields)) or
                                                                 f"; a task has {', '.join(sorted(fields))}"))
    return out


def _problem(pipeline: Pipeline, path: tuple[str | int, ...], message: str) -> Problem:
    loc = pipeline.locate(path)
    return Problem(loc if isinstance(loc, Location) else None, dotted(path), message)


def _did_you_mean(name: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def build_plan(pipeline: Pipeline, graph: Dag) -> Plan:
    """The plan of a pipeline whose graph has been checked (see :func:`graph_problems`)."""
    order_of = {tid: t.order for tid, t in pipeline.tasks.items()}
    generations = graph.generations()
    if generations is None:
        raise ValueError("build_plan needs an acyclic graph: check it with graph_problems first")
    levels = tuple(tuple(sorted(gen, key=order_of.__getitem__)) for gen in generations)
    return Plan(
        pipeline=pipeline,
        order=tuple(t for level in levels for t in level),
        levels=levels,
        needs=MappingProxyType({tid: tuple(dict.fromkeys(t.needs)) for tid, t in pipeline.tasks.items()}),
        dependents=MappingProxyType({tid: tuple(graph.successors(tid)) for tid in pipeline.tasks}),
        dag=graph,
    )


# -- documents -------------------------------------------------------------------------


def render_plan(plan: Plan, fmt: str) -> str:
    """The plan as ``mermaid``, ``dot`` or ``json`` text."""
    if fmt == "mermaid":
        return _mermaid(plan)
    if fmt == "dot":
        return _dot(plan)
    if fmt == "json":
        return json.dumps(plan_data(plan), indent=2)
    raise ValueError(f"unknown plan format '{fmt}' (use text, mermaid, dot or json)")


def plan_data(plan: Plan) -> dict[str, Any]:
    """The plan as plain data: levels and every task's needs and plugin."""
    p = plan.pipeline
    return {
        "pipeline": p.name,
        "levels": [list(level) for level in plan.levels],
        "tasks": {
            tid: {"uses": t.uses, "needs": list(t.needs), "foreach": t.foreach is not None,
                  "if": t.if_, "priority": t.priority}
            for tid, t in p.tasks.items()
        },
        "on_failure": list(p.on_failure),
        "finally": list(p.finally_),
    }


def _mermaid(plan: Plan) -> str:
    ids = {tid: f"t{i}" for i, tid in enumerate(plan.order)}
    lines = ["flowchart TD"]
    for tid in plan.order:
        task = plan.pipeline.tasks[tid]
        label = f"{tid}<br/><small>{task.uses}{' (foreach)' if task.foreach is not None else ''}</small>"
        lines.append(f'    {ids[tid]}["{label}"]')
    for src, dst in plan.dag.edges:
        lines.append(f"    {ids[src]} --> {ids[dst]}")
    return "\n".join(lines) + "\n"


def _dot(plan: Plan) -> str:
    lines = [f"digraph {json.dumps(plan.pipeline.name)} {{", "    rankdir=LR;", "    node [shape=box];"]
    for tid in plan.order:
        label = json.dumps(f"{tid}\n{plan.pipeline.tasks[tid].uses}")
        lines.append(f"    {json.dumps(tid)} [label={label}];")
    for src, dst in plan.dag.edges:
        lines.append(f"    {json.dumps(src)} -> {json.dumps(dst)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- the memory's knowledge graph ----------------------------------------------------------


def knowledge_graph(entities: Iterable[Mapping[str, Any]], relations: Iterable[Mapping[str, Any]]) -> Any:
    """A networkx ``MultiDiGraph`` of the memory's entities (nodes ``kind:name``) and relations (edges).

    Nodes carry ``kind`` and ``name``; edges ``relation``, ``count``, ``first_seen`` and
    ``last_seen`` (see :mod:`goatclaw.memory.knowledge`).
    """
    import networkx as nx

    graph = nx.MultiDiGraph()
    names = {}
    for e in entities:
        names[e["id"]] = f"{e['kind']}:{e['name']}"
        graph.add_node(names[e["id"]], kind=e["kind"], name=e["name"])
    for r in relations:
        graph.add_edge(names[r["source"]], names[r["target"]], key=r["relation"], relation=r["relation"],
                       count=r["count"], first_seen=r["first_seen"], last_seen=r["last_seen"])
    return graph


def render_knowledge(graph: Any, fmt: str) -> str:
    """The knowledge graph as ``mermaid``, ``graphml`` or ``json`` (node-link) text."""
    import networkx as nx

    if fmt == "graphml":
        return "\n".join(nx.generate_graphml(graph)) + "\n"
    if fmt == "json":
        return json.dumps(nx.node_link_data(graph, edges="edges"), indent=2, default=str) + "\n"
    ids = {node: f"n{i}" for i, node in enumerate(graph.nodes)}
    lines = ["graph LR"]
    lines += [f'    {ids[n]}["{n.replace(chr(34), chr(39))}"]' for n in graph.nodes]
    for a, b, data in graph.edges(data=True):
        lines.append(f"    {ids[a]} -->|{data['relation']} ×{data['count']}| {ids[b]}")
    return "\n".join(lines) + "\n"
