"""What each task of a pipeline is granted, and which untrusted data reaches its sinks.

The glue between the pipeline (its ``permissions:`` layers, its templates, its plugins)
and :mod:`goatclaw.security`: the runner asks for a task's :class:`Grant` and refused
flows, ``goatclaw validate`` for the problems (a task widening its pipeline's
permissions is an error; a plugin that needs a permission nobody granted, and an
untrusted flow without ``trust:``, are warnings: the task will fail when it runs), and
``goatclaw plan --permissions`` for a table of who may do what.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from goatclaw.errors import PluginError, Problem, TaskError, TemplateError
from goatclaw.security.permissions import FIELDS, Grant, build_grant, model_hosts, root_problem, widenings, within
from goatclaw.security.pycalls import static_refusal
from goatclaw.security.taint import ALL_UPSTREAM, RUN_ERRORS, Flow, RuntimeTaint, TaskFlows, follow
from goatclaw.spec.loader import dotted
from goatclaw.spec.model import NO_PERMISSIONS, Permissions, Pipeline, Task
from goatclaw.template import check_expression, check_value, has_template
from goatclaw.tools.plugins import model_sinks, trust_of

__all__ = ["Guard", "grant_summary", "permission_problems", "permissions_table", "sink_vars", "unmet_needs",
           "untrusted_sink_reason"]

_FIELD_PATH = {"shell": ("shell",), "network": ("network",), "files.read": ("files", "read"),
               "files.write": ("files", "write"), "env": ("env",), "python": ("python",), "mcp": ("mcp",)}
_NEEDS = {"shell": ("shell",), "network": ("network",), "python": ("python",), "env": ("env",), "mcp": ("mcp",),
          "files": ("files.read", "files.write"), "files.read": ("files.read",), "files.write": ("files.write",)}


def _where(pipeline: Pipeline, path: tuple[str | int, ...], what: str) -> dict[str, str]:
    """Per permission field: ``pipeline x.yaml:7:3``, where under ``path`` it was written."""
    out = {}
    for name, sub in _FIELD_PATH.items():
        loc = pipeline.locate((*path, *sub), key=True)
        out[name] = f"{what} {loc}" if loc is not None else what
    return out


class Guard:
    """The grants and refused flows of one pipeline, computed when first asked and kept."""

    def __init__(self, pipeline: Pipeline, workspace: Path, registry: Any, store: Path | None = None,
                 ceiling: Grant | None = None) -> None:
        self.pipeline = pipeline
        self.ceiling = ceiling  # a child run (a pipeline tool): no task is granted more than its caller
        self.workspace = Path(workspace)
        self.registry = registry
        project = pipeline.project
        # the run's store and the project's (wherever store.path puts them) are protected like .env
        self.stores = (store, getattr(project, "store_path", None) if project is not None else None)
        self._grants: dict[str, Grant] = {}
        self._base: Grant | None = None
        self._flows: dict[str, list[Flow]] | None = None
        self._origins: dict[str, frozenset[str]] = {}  # statically: what each task's output carries
        self._infos: dict[str, TaskFlows | None] = {}
        self._all = pipeline.all_tasks()
        #: What the run finds at run time (files and memories an untrusted flow wrote, read back).
        self.runtime = RuntimeTaint(self.info, self._upstream, tuple(pipeline.tasks))

    # -- grants ----------------------------------------------------------------------

    def layers(self) -> list[tuple[Any, Any]]:
        """The project's and the pipeline's ``permissions:``, outermost first, with where they were written."""
        p = self.pipeline
        project = p.project
        out: list[tuple[Any, Any]] = []
        if project is not None and getattr(project, "file", None) is not None:
            out.append((project.permissions, f"project {project.file}"))
        out.append((p.permissions, _where(p, ("permissions",), "pipeline")))
        return out

    def base(self) -> Grant:
        """What the pipeline grants its tasks (the project's and the pipeline's layers)."""
        if self._base is None:
            self._base = build_grant(self.layers(), self.workspace, store=self.stores)
        return self._base

    def grant(self, task: Task) -> Grant:
        """What ``task`` may do (a task without ``permissions:`` shares the pipeline's grant)."""
        if task.permissions is NO_PERMISSIONS and self.ceiling is None and self._base is not None:
            return self._base  # most tasks: the pipeline's grant, as it is
        grant = self._grants.get(task.id)
        if grant is None:
            if task.permissions is NO_PERMISSIONS or task.permissions == NO_PERMISSIONS:
                grant = self.base()
            else:
                where = _where(self.pipeline, (*task.path, "permissions"), f"task {task.id}")
                grant = build_grant([*self.layers(), (task.permissions, where)], self.workspace, store=self.stores)
            if self.ceiling is not None:
                grant = within(grant, self.ceiling)
            self._grants[task.id] = grant
        return grant

    # -- untrusted flows -------------------------------------------------------------

    def flows(self, task_id: str) -> list[Flow]:
        """The untrusted flows into ``task_id``'s sinks that no ``trust:`` allows."""
        return self.all_flows().get(task_id, [])

    def all_flows(self) -> dict[str, list[Flow]]:
        """Every refused flow, by task (computed once)."""
        if self._flows is None:
            self._origins, self._flows = self._follow()
        return self._flows

    def output_origins(self, task_id: str) -> frozenset[str]:
        """The untrusted tasks whose data ``task_id``'s output (and error) carries, statically (itself included)."""
        self.all_flows()
        return self._origins.get(task_id, frozenset())

    def untrusted_in_sight(self) -> bool:
        """Whether any task's output carries untrusted data statically (no flow, no origin: most pipelines)."""
        self.all_flows()
        return bool(self._origins or self._flows)

    def carried(self, task_id: str) -> frozenset[str]:
        """The untrusted tasks whose data ``task_id``'s inputs carry (after its ``trust:``), static and run-time."""
        self.all_flows()
        if not self._origins and not self.runtime:  # nothing untrusted in sight (most runs): nothing to look at
            return frozenset()
        # statically a task carries its own id only when its plugin is untrusted: that is its output, not its inputs
        return (self._origins.get(task_id, frozenset()) - {task_id}) | self.runtime.inputs(task_id)

    def info(self, task_id: str) -> TaskFlows | None:
        """What the taint analysis knows of ``task_id`` (its reads, sinks, ``trust:``), or ``None``."""
        if task_id not in self._infos:
            task = self._all.get(task_id)
            spec = self.spec(task) if task is not None else None
            self._infos[task_id] = None if task is None else TaskFlows(
                _reads(task), bool(spec and spec.untrusted_output), tuple(spec.sinks) if spec else (), task.trust)
        return self._infos[task_id]

    def _upstream(self, tid: str) -> Iterable[str]:
        p = self.pipeline
        return set(p.tasks) if tid not in p.tasks else _ancestors(p, tid)

    def spec(self, task: Task) -> Any:
        """The task's plugin spec, or ``None`` when the plugin cannot be loaded (reported elsewhere)."""
        return self.spec_of(task.uses)

    def spec_of(self, uses: str) -> Any:
        """The spec of the plugin named ``uses``, or ``None`` when it cannot be loaded."""
        try:
            return self.registry.task(uses).spec
        except PluginError:
            return None

    def _follow(self) -> tuple[dict[str, frozenset[str]], dict[str, list[Flow]]]:
        p = self.pipeline
        tasks = p.all_tasks()
        by_plugin = {uses: self.spec_of(uses) for uses in p.plugin_names()}
        if not any(s is not None and s.untrusted_output for s in by_plugin.values()):
            return {}, {}
        specs = {tid: by_plugin[t.uses] for tid, t in tasks.items()}
        untrusted = [tid for tid, s in specs.items() if s is not None and s.untrusted_output]
        affected = _downstream(p, untrusted) | set(p.on_failure) | set(p.finally_)
        after = [*p.on_failure, *p.finally_]
        # run.errors, which on_failure and finally tasks read, carries the error text of any failed task
        order = [*(t for t in _order(p) if t in affected), *([RUN_ERRORS] if after else []), *after]
        infos = {tid: TaskFlows(_reads(tasks[tid]), bool(specs[tid] and specs[tid].untrusted_output),
                                tuple(specs[tid].sinks) if specs[tid] else (), tasks[tid].trust)
                 for tid in order if tid != RUN_ERRORS}
        infos[RUN_ERRORS] = TaskFlows({"errors": ALL_UPSTREAM})
        return follow(order, infos, self._upstream)


def _order(pipeline: Pipeline) -> list[str]:
    plan = pipeline.memo.get("plan")
    if plan is not None:
        return list(plan.order)
    order: list[str] = []
    placed: set[str] = set()
    remaining = list(pipeline.tasks)
    while remaining:  # needs first (a cycle is reported elsewhere; then file order)
        ready = [t for t in remaining if all(n in placed or n not in pipeline.tasks for n in pipeline.tasks[t].needs)]
        for t in ready or remaining[:1]:
            order.append(t)
            placed.add(t)
            remaining.remove(t)
    return order


def _downstream(pipeline: Pipeline, roots: Iterable[str]) -> set[str]:
    dependents: dict[str, list[str]] = {}
    for tid, t in pipeline.tasks.items():
        for n in t.needs:
            dependents.setdefault(n, []).append(tid)
    seen = set(roots)
    stack = list(seen)
    while stack:
        for d in dependents.get(stack.pop(), ()):
            if d not in seen:
                seen.add(d)
                stack.append(d)
    return seen


def _ancestors(pipeline: Pipeline, tid: str) -> set[str]:
    seen: set[str] = set()
    stack = list(pipeline.tasks[tid].needs) if tid in pipeline.tasks else []
    while stack:
        n = stack.pop()
        if n in seen or n not in pipeline.tasks:
            continue
        seen.add(n)
        stack.extend(pipeline.tasks[n].needs)
    return seen


def _refs_of(value: Any) -> tuple[frozenset[str], bool]:
    """Task ids a templated value names (:data:`RUN_ERRORS` for ``run.errors``), and whether it reads ``item``."""
    tasks: set[str] = set()
    item = False
    for _, refs in check_value(value):
        if isinstance(refs, TemplateError):
            continue
        tasks.update(refs.tasks)
        if "tasks" in refs.names and not refs.tasks:
            tasks |= ALL_UPSTREAM  # tasks[...] with a computed key, or tasks itself
        if refs.run_errors:
            tasks.add(RUN_ERRORS)
        item = item or bool(refs.names & {"item", "index"})
    return frozenset(tasks), item


def untrusted_sink_reason(name: str, uses: str, sinks: Iterable[str]) -> str:
    """Why a tool whose model-filled arguments would reach a sink is never offered, and the two ways out."""
    args = ", ".join("every argument" if s == "*" else s for s in sinks)
    fix = "trust: true" if "*" in sinks else f"trust: [{', '.join(sinks)}]"
    return (f"tool '{name}' ({uses}) would let the model choose {args}, which "
            f"{'is a sink' if ',' not in args else 'are sinks'} (a URL, a path or a command: a model's text, "
            f"which a prompt injection controls, never becomes one without trust); fix "
            f"{'it' if ',' not in args else 'them'} in the entry's with:, or add {fix} to the entry if the model "
            "may choose")


def _var_refs(value: Any) -> tuple[frozenset[str], frozenset[str], bool]:
    """The vars a templated value names, the task ids it names, and whether it reads ``item``.

    ``*`` among the vars: ``vars`` taken whole, or indexed by a computed key.
    """
    names: set[str] = set()
    for _, refs in check_value(value):
        if isinstance(refs, TemplateError):
            continue
        names.update(refs.vars)
        if "vars" in refs.names and not refs.vars:
            names.add("*")
    tasks, item = _refs_of(value)
    return frozenset(names), tasks, item


def sink_vars(pipeline: Pipeline, registry: Any) -> dict[str, str]:
    """The vars of ``pipeline`` that reach a sink argument of one of its tasks, each with the first such place.

    For a pipeline offered as a tool: a var the model fills must not become a URL, a path or a
    command without ``trust:``. A var reaches a sink when the sink's template names it, or names
    a task whose inputs read it (transitively); ``*`` stands for every var (``vars`` taken whole).
    Statically, like the taint analysis: a condition that would keep the flow from happening
    at run time is not seen, so this errs on the side of refusing.
    """
    tasks = pipeline.all_tasks()
    reads: dict[str, dict[str, tuple[frozenset[str], frozenset[str]]]] = {}
    for tid, task in tasks.items():
        fvars, ftasks, _ = _var_refs(task.foreach) if task.foreach is not None else (frozenset(), frozenset(), False)
        args: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
        for name, value in task.with_.items():
            names, refs, item = _var_refs(value)
            args[str(name)] = (names | fvars, refs | ftasks) if item else (names, refs)
        reads[tid] = args
    carried: dict[str, frozenset[str]] = {tid: frozenset() for tid in tasks}
    changed = True
    while changed:  # a fixed point: pipelines offered as tools are small
        changed = False
        for tid, args in reads.items():
            now = frozenset().union(*(names | _carried_by(refs, carried) for names, refs in args.values()))
            if now != carried[tid]:
                carried[tid], changed = now, True
    found: dict[str, str] = {}
    for tid, args in reads.items():
        try:
            sinks = registry.task(tasks[tid].uses).spec.sinks
        except PluginError:
            continue  # the child run reports it
        for name, (names, refs) in args.items():
            if "*" in sinks or name in sinks:
                for var in sorted(names | _carried_by(refs, carried)):
                    found.setdefault(var, f"{tid}.with.{name}")
    if "*" in found:  # vars taken whole: each of them
        for var in pipeline.vars:
            found.setdefault(var, found["*"])
        del found["*"]
    return found


def _carried_by(refs: frozenset[str], carried: Mapping[str, frozenset[str]]) -> frozenset[str]:
    if refs & ALL_UPSTREAM:
        return frozenset().union(*carried.values())
    return frozenset().union(*(carried.get(r, frozenset()) for r in refs))


def _reads(task: Task) -> dict[str, frozenset[str]]:
    """Per ``with:`` argument (and ``foreach``), the task ids its templates name."""
    foreach: frozenset[str] = frozenset()
    if isinstance(task.foreach, str):
        refs = check_value(task.foreach) if has_template(task.foreach) else [((), check_expression(task.foreach))]
        for _, r in refs:
            if not isinstance(r, TemplateError):
                foreach |= frozenset(r.tasks) | (ALL_UPSTREAM if "tasks" in r.names and not r.tasks else frozenset())
    elif task.foreach is not None:
        foreach = _refs_of(task.foreach)[0]
    reads: dict[str, frozenset[str]] = {"foreach": foreach} if foreach else {}
    for name, value in task.with_.items():
        refs, item = _refs_of(value)
        refs = refs | foreach if item else refs
        if refs:
            reads[str(name)] = refs
    return reads


# -- validate and plan ---------------------------------------------------------------------


def permission_problems(pipeline: Pipeline, workspace: Path, registry: Any) -> list[Problem]:
    """Widened permissions (errors); permissions a plugin needs that nobody granted, untrusted flows (warnings)."""
    guard = Guard(pipeline, workspace, registry)
    problems = _root_problems(pipeline, workspace) + _widening_problems(pipeline, guard, workspace)
    problems += _call_problems(pipeline, guard, workspace)
    tasks = pipeline.all_tasks()
    denied: dict[str, tuple[str, ...]] = {}  # task id -> the permission fields it needs and is not granted
    for task in tasks.values():
        spec = guard.spec(task) if task.uses else None
        if spec is not None:
            needs = _need_problems(pipeline, task, spec, guard.grant(task))
            problems += needs
            if needs:
                denied[task.id] = tuple(f for n in spec.permissions for f in _NEEDS.get(n, ())
                                        if not getattr(guard.grant(task), f.replace(".", "_")))
    problems += _tool_problems(pipeline, guard, tasks.values())
    problems += _block_problems(pipeline, denied)
    for tid, flows in guard.all_flows().items():
        task = tasks[tid]
        for flow in flows:
            path = (*task.path, "with", flow.field) if flow.field in task.with_ else (*task.path, "foreach")
            problems.append(Problem(pipeline.locate(path), dotted(path), flow.message + " (it will fail with "
                                    "permission_denied)", severity="warn"))
    return problems


def _root_problems(pipeline: Pipeline, workspace: Path) -> list[Problem]:
    """File grants that reach nothing: a relative root outside the workspace, a glob with ``..``."""
    base = Path(workspace).resolve()
    problems = []
    owners = [(("permissions",), pipeline.permissions)]
    owners += [((*t.path, "permissions"), t.permissions) for t in pipeline.all_tasks().values()]
    for path, perms in owners:
        for name in ("files.read", "files.write"):
            for n, root in enumerate(getattr(perms, name.replace(".", "_"), None) or ()):
                why = root_problem(root, base)
                if why is not None:
                    where = (*path, *_FIELD_PATH[name], n)
                    problems.append(Problem(pipeline.locate(where), dotted(where), why))
    return problems


#: Plugins whose argument names a Python callable that ``permissions.python`` must allow.
_CALLS = {"python": "function"}


def _call_problems(pipeline: Pipeline, guard: Guard, workspace: Path) -> list[Problem]:
    """A constant ``module:name`` that is certain to be refused because it walks out of the granted module."""
    problems = []
    for task in pipeline.all_tasks().values():
        ref = task.with_.get(_CALLS.get(task.uses or "", ""))
        if not isinstance(ref, str) or has_template(ref) or ref.count(":") != 1 or not all(ref.split(":")):
            continue
        module, attr = ref.split(":")
        grant = guard.grant(task)
        granted = grant.granting(module, attr) if grant.python is not True else []
        if not granted or any(p.startswith("_") for p in attr.split(".")):
            continue  # python: true, or refused anyway when it runs (with the rule's own message)
        why = static_refusal(module, attr, granted, workspace)
        if why is not None:
            where = (*task.path, "with", _CALLS[task.uses])
            problems.append(Problem(pipeline.locate(where), dotted(where),
                                    f"'{ref}' {why}: permissions.python {', '.join(granted)} allows only what "
                                    f"that module defines ({grant.sources.get('python', 'embedded default')})"))
    return problems


def _widening_problems(pipeline: Pipeline, guard: Guard, workspace: Path) -> list[Problem]:
    problems = []
    project = pipeline.project
    if project is not None and getattr(project, "file", None) is not None:
        ceiling = build_grant([(project.permissions, f"project {project.file}")], workspace)
        said = {f for f in FIELDS if getattr(project.permissions, f.replace(".", "_"), None) is not None}
        for name, extra in widenings(ceiling, pipeline.permissions, workspace):
            if name in said:
                path = ("permissions", *_FIELD_PATH[name])
                problems.append(Problem(pipeline.locate(path), dotted(path),
                                        f"asks for {', '.join(extra)}, more than permissions.{name} of the "
                                        f"project {project.file} grants; a pipeline may only narrow it"))
    base = guard.base()
    nothing = Permissions()
    for task in pipeline.all_tasks().values():
        if task.permissions == nothing:  # most tasks say nothing: nothing to widen
            continue
        for name, extra in widenings(base, task.permissions, workspace):
            path = (*task.path, "permissions", *_FIELD_PATH[name])
            where = base.sources.get(name, "embedded default")
            problems.append(Problem(pipeline.locate(path), dotted(path),
                                    f"asks for {', '.join(extra)}, more than permissions.{name} grants the "
                                    f"pipeline ({where}); a task may only narrow its pipeline's permissions"))
    return problems


def unmet_needs(spec: Any, grant: Grant) -> list[tuple[str, tuple[str, ...]]]:
    """The permissions a plugin declares that ``grant`` gives none of: (need, the fields that would grant it)."""
    unmet = []
    for need in spec.permissions:
        fields = _NEEDS.get(need, ())
        if fields and not any(getattr(grant, f.replace(".", "_")) for f in fields):
            unmet.append((need, fields))
    return unmet


def _tool_problems(pipeline: Pipeline, guard: Guard, tasks: Iterable[Task]) -> list[Problem]:
    """``tools:`` of llm tasks: unknown plugins, bad fixed ``with:`` (errors); tools never offered (warnings)."""
    problems = []
    for task in tasks:
        entries = task.with_.get("tools") if task.uses in ("llm", "agent") else None
        for i, entry in enumerate(entries if isinstance(entries, list) else ()):
            path = (*task.path, "with", "tools", i)
            if isinstance(entry, Mapping) and "mcp" in entry:
                problems += _mcp_tool_problems(pipeline, guard, task, entry["mcp"], (*path, "mcp"))
            if isinstance(entry, Mapping) and isinstance(entry.get("pipeline"), str):
                problems += _pipeline_tool_problem(pipeline, guard, (*path, "pipeline"), entry["pipeline"])
                continue
            uses = entry.get("uses") if isinstance(entry, Mapping) else None
            if not isinstance(uses, str):
                continue  # the schema says what is wrong with it
            try:
                plugin = guard.registry.task(uses)
            except PluginError as exc:
                problems.append(Problem(pipeline.locate((*path, "uses")), dotted((*path, "uses")), exc.message))
                continue
            fixed = entry.get("with") if isinstance(entry.get("with"), Mapping) else {}
            for arg, message in plugin.check_args(fixed):
                if arg is not None:  # a missing argument is the model's to give
                    where = (*path, "with", arg)
                    problems.append(Problem(pipeline.locate(where, key=True), dotted(where), message))
            try:
                sinks = model_sinks(plugin.spec.sinks, plugin.params, fixed, trust_of(entry, "tools"),
                                    plugin.accepts_any)
            except TaskError:
                sinks = ()  # the schema says what is wrong with trust:
            if sinks:
                name = entry.get("name") if isinstance(entry.get("name"), str) else uses
                problems.append(Problem(pipeline.locate((*path, "uses")), dotted((*path, "uses")),
                                        untrusted_sink_reason(name, uses, sinks) + "; it is never offered to the model",
                                        severity="warn"))
            for _, fields in unmet_needs(plugin.spec, guard.grant(task)):
                granted = " or ".join(f"permissions.{f}" for f in fields)
                problems.append(Problem(pipeline.locate((*path, "uses")), dotted((*path, "uses")),
                                        f"tool '{uses}' needs {granted}, which task {task.id} is not granted; "
                                        "it is never offered to the model", severity="warn"))
    return problems


def _mcp_tool_problems(pipeline: Pipeline, guard: Guard, task: Task, spec: Any,
                       path: tuple[str | int, ...]) -> list[Problem]:
    """A ``{mcp: server}`` tool entry: a server goatclaw.yaml does not name (error), one never offered (warning)."""
    server = spec if isinstance(spec, str) else spec.get("server") if isinstance(spec, Mapping) else None
    if not isinstance(server, str) or has_template(server):
        return []
    project = pipeline.project
    known = getattr(project, "mcp_servers", None) or {}
    if server not in known:
        where = getattr(project, "file", None) or "goatclaw.yaml (none found)"
        return [Problem(pipeline.locate(path), dotted(path), f"no MCP server '{server}' in mcp_servers: of {where} "
                        f"(servers: {', '.join(sorted(known)) or 'none'})")]
    grant = guard.grant(task)
    if not grant.allows_mcp(server):
        return [Problem(pipeline.locate(path), dotted(path),
                        f"the tools of MCP server '{server}' need permissions.mcp, which task {task.id} is not granted "
                        f"({grant.sources.get('mcp', 'embedded default')}); they are never offered to the model",
                        severity="warn")]
    return []


def _pipeline_tool_problem(pipeline: Pipeline, guard: Guard, path: tuple[str | int, ...], file: str) -> list[Problem]:
    """A ``pipeline:`` tool names a file inside the project that is there (the run checks the file itself)."""
    root = guard.workspace.resolve()
    try:
        target = (root / file).resolve()
        there = target.is_file()
    except (OSError, ValueError):  # a NUL byte, a name too long
        target, there = root / "\0", False
    if not target.is_relative_to(root):
        message = f"pipeline tool '{file}' must be a file inside the project folder"
    elif not there:
        message = f"pipeline tool '{file}' does not exist (paths start at the project folder)"
    else:
        return []
    return [Problem(pipeline.locate(path), dotted(path), message)]


def _need_problems(pipeline: Pipeline, task: Task, spec: Any, grant: Grant) -> list[Problem]:
    problems = []
    for _, fields in unmet_needs(spec, grant):
        path = (*task.path, "uses")
        granted = " or ".join(f"permissions.{f}" for f in fields)
        problems.append(Problem(pipeline.locate(path), dotted(path),
                                f"'{task.uses}' needs {granted}, which nothing grants "
                                f"({grant.sources.get(fields[0], 'embedded default')}); it will fail with "
                                "permission_denied", severity="warn"))
    return problems


def _block_problems(pipeline: Pipeline, denied: Mapping[str, tuple[str, ...]]) -> list[Problem]:
    """The run's verdict, predicted: tasks certain to be denied add up to the threat score that blocks it.

    Each denial scores like it will when the run meets it (:class:`~goatclaw.security.threat.ThreatScore`).
    Only denials that are certain count: a task that runs whatever happens (no ``if:``, a literal
    ``foreach`` or none, its needs certain to succeed), so that the prediction never cries wolf.
    """
    certain = _certain_denials(pipeline, denied)
    if not certain:
        return []
    from goatclaw.engine.sentry import Sentry  # the run's screen (asyncio, the store): only when it is asked
    from goatclaw.security.threat import ThreatScore

    score = ThreatScore(Sentry.threshold_of(pipeline))
    for tid in certain:
        score.denied(f"task {tid}")
    if not score.blocked:
        return []
    fields = sorted({f for tid in certain for f in denied[tid]}, key=list(_FIELD_PATH).index)
    grant = _suggested_grant(pipeline, {tid: denied[tid] for tid in certain}, fields)
    path = ("permissions",) if "permissions" in _source_keys(pipeline) else ("tasks",)
    names = ", ".join(certain[:5]) + (", …" if len(certain) > 5 else "")
    return [Problem(pipeline.locate(path, key=True), dotted(path),
                    f"the run would be blocked by its threat score: {len(certain)} tasks ({names}) will "
                    f"fail with permission_denied, a score of {score.score:g} that reaches the threshold "
                    f"{score.threshold:g}; grant what they need: {grant}")]


def _source_keys(pipeline: Pipeline) -> Iterable[str]:
    data = getattr(pipeline.source, "data", None)
    return data.keys() if isinstance(data, dict) else ()


def _certain_denials(pipeline: Pipeline, denied: Mapping[str, tuple[str, ...]]) -> list[str]:
    """The main tasks, in run order, that will certainly run and be denied."""
    succeeds: set[str] = set()  # certain to run and to let its dependents run
    out = []
    for tid in _order(pipeline):
        task = pipeline.tasks[tid]
        certain = task.if_ in (None, True) and (task.foreach is None or (isinstance(task.foreach, list)
                                                                         and bool(task.foreach)))
        if not certain or not all(n in succeeds for n in task.needs):
            continue
        if tid in denied:
            out.append(tid)
            if task.continue_on_error:
                succeeds.add(tid)
        else:
            succeeds.add(tid)  # it may fail for other reasons: then fewer denials, and the count is a floor
    return out


def _suggested_grant(pipeline: Pipeline, denied: Mapping[str, tuple[str, ...]], fields: Iterable[str]) -> str:
    """The narrowest ``permissions:`` that lets the denied tasks start (id -> fields), as one line of YAML."""
    wanted: dict[str, set[str] | None] = {f: set() for f in fields}  # None: what the arguments do not say
    for tid, names in denied.items():
        task = pipeline.tasks[tid]
        for name in names:
            values = _what_it_needs(pipeline, task, name)
            current = wanted[name]
            wanted[name] = None if values is None or current is None else current | set(values)
    parts: list[str] = []
    files: list[str] = []
    for name, value in wanted.items():
        if name.startswith("files."):
            files.append(f"{name.split('.')[1]}: [{', '.join(sorted(value)) if value is not None else '.'}]")
        else:
            parts.append(f"{name}: {'[' + ', '.join(sorted(value)) + ']' if value is not None else 'true'}")
    if files:
        parts.append("files: {" + ", ".join(files) + "}")
    return "permissions: {" + ", ".join(parts) + "}"


def _what_it_needs(pipeline: Pipeline, task: Task, name: str) -> list[str] | None:
    """The programs, hosts or modules a task's constant arguments name for ``name``; ``None`` if they do not say."""
    args = task.with_
    if name == "shell" and task.uses == "shell":
        run, shell = args.get("run"), args.get("shell", "bash")
        if isinstance(run, list) and run and isinstance(run[0], str) and not has_template(run[0]):
            return [run[0]]
        if "script" in args and isinstance(shell, str) and not has_template(shell):
            return [shell]
    if name == "network" and task.uses == "http":
        url = args.get("url")
        host = urlsplit(url).hostname if isinstance(url, str) and not has_template(url) else None
        return [host] if host else None
    if name == "network" and task.uses in ("llm", "agent"):
        return _model_hosts(pipeline, args)
    if name in ("files.read", "files.write") and task.uses.startswith("file."):
        path = args.get("path")
        return [path] if isinstance(path, str) and path and not has_template(path) else None
    if name == "python" and task.uses == "python":
        ref = args.get("function")
        if isinstance(ref, str) and not has_template(ref) and ":" in ref and ref.split(":")[0]:
            return [ref.split(":")[0]]
    return None


def _model_hosts(pipeline: Pipeline, args: Mapping[str, Any]) -> list[str] | None:
    """The hosts an ``llm`` task's constant models are called on (its own, else the project's model)."""
    project_model = getattr(pipeline.project, "model", None)
    models = args.get("model", project_model)
    api_base = args.get("api_base")
    hosts = []
    for model in models if isinstance(models, list) else [models]:
        name = model.get("name") if isinstance(model, Mapping) else model
        base = model.get("api_base") if isinstance(model, Mapping) else api_base
        if not isinstance(name, str) or has_template(name) or (base is not None and not isinstance(base, str)):
            return None
        url = model_hosts(name, base)
        host = urlsplit(url).hostname if url else None
        if host is None:
            return None
        hosts.append(host)
    return hosts or None


def permissions_table(pipeline: Pipeline, workspace: Path, registry: Any) -> list[dict[str, Any]]:
    """Per task: its plugin, what the plugin declares it needs, what it is granted and its refused flows."""
    guard = Guard(pipeline, workspace, registry)
    rows = []
    for tid, task in pipeline.all_tasks().items():
        spec = guard.spec(task)
        rows.append({"task": tid, "uses": task.uses, "needs": list(spec.permissions) if spec else [],
                     "untrusted_output": bool(spec and spec.untrusted_output),
                     "trust": list(task.trust), "granted": guard.grant(task).describe(),
                     "refused_flows": [f.message for f in guard.flows(tid)]})
    return rows


def grant_summary(granted: Mapping[str, Any]) -> str:
    """One line: ``shell [bash]; network -; files.read [.]; …``."""
    parts = []
    for name in FIELDS:
        v = granted[name]["value"]
        shown = "all" if v is True else "-" if v is False or v == [] else "[" + ", ".join(v) + "]"
        parts.append(f"{name} {shown}")
    return "; ".join(parts)
