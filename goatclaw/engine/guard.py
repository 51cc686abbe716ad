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

from goatclaw.errors import PluginError, Problem, TemplateError
from goatclaw.security.permissions import FIELDS, Grant, build_grant, root_problem, widenings
from goatclaw.security.pycalls import static_refusal
from goatclaw.security.taint import ALL_UPSTREAM, RUN_ERRORS, Flow, TaskFlows, follow
from goatclaw.spec.loader import dotted
from goatclaw.spec.model import NO_PERMISSIONS, Permissions, Pipeline, Task
from goatclaw.template import check_expression, check_value, has_template

__all__ = ["Guard", "grant_summary", "permission_problems", "permissions_table", "unmet_needs"]

_FIELD_PATH = {"shell": ("shell",), "network": ("network",), "files.read": ("files", "read"),
               "files.write": ("files", "write"), "env": ("env",), "python": ("python",)}
_NEEDS = {"shell": ("shell",), "network": ("network",), "python": ("python",), "env": ("env",),
          "files": ("files.read", "files.write"), "files.read": ("files.read",), "files.write": ("files.write",)}


def _where(pipeline: Pipeline, path: tuple[str | int, ...], what: str) -> dict[str, str]:
    """Per permission field: ``pipeline x.yaml:7:3``, where under ``path`` it was written."""
    out = {}
    for name, sub in _FIELD_PATH.items():
        loc = pipeline.locate((*path, *sub), key=True)
        out[name] = f"{what} {loc}" if loc is not None else what
    return out


def _tasks(pipeline: Pipeline) -> dict[str, Task]:
    return {**pipeline.tasks, **pipeline.on_failure, **pipeline.finally_}


class Guard:
    """The grants and refused flows of one pipeline, computed when first asked and kept."""

    def __init__(self, pipeline: Pipeline, workspace: Path, registry: Any, store: Path | None = None) -> None:
        self.pipeline = pipeline
        self.workspace = Path(workspace)
        self.registry = registry
        project = pipeline.project
        # the run's store and the project's (wherever store.path puts them) are protected like .env
        self.stores = (store, getattr(project, "store_path", None) if project is not None else None)
        self._grants: dict[str, Grant] = {}
        self._base: Grant | None = None
        self._flows: dict[str, list[Flow]] | None = None

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
        grant = self._grants.get(task.id)
        if grant is None:
            if task.permissions is NO_PERMISSIONS or task.permissions == NO_PERMISSIONS:
                grant = self.base()
            else:
                where = _where(self.pipeline, (*task.path, "permissions"), f"task {task.id}")
                grant = build_grant([*self.layers(), (task.permissions, where)], self.workspace, store=self.stores)
            self._grants[task.id] = grant
        return grant

    # -- untrusted flows -------------------------------------------------------------

    def flows(self, task_id: str) -> list[Flow]:
        """The untrusted flows into ``task_id``'s sinks that no ``trust:`` allows."""
        return self.all_flows().get(task_id, [])

    def all_flows(self) -> dict[str, list[Flow]]:
        """Every refused flow, by task (computed once)."""
        if self._flows is None:
            self._flows = self._follow()
        return self._flows

    def spec(self, task: Task) -> Any:
        """The task's plugin spec, or ``None`` when the plugin cannot be loaded (reported elsewhere)."""
        return self.spec_of(task.uses)

    def spec_of(self, uses: str) -> Any:
        """The spec of the plugin named ``uses``, or ``None`` when it cannot be loaded."""
        try:
            return self.registry.task(uses).spec
        except PluginError:
            return None

    def _follow(self) -> dict[str, list[Flow]]:
        p = self.pipeline
        tasks = _tasks(p)
        by_plugin = {uses: self.spec_of(uses) for uses in {t.uses for t in tasks.values()}}
        if not any(s is not None and s.untrusted_output for s in by_plugin.values()):
            return {}
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
        main = set(p.tasks)

        def upstream(tid: str) -> Iterable[str]:
            return main if tid not in main else _ancestors(p, tid)

        return follow(order, infos, upstream)[1]


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
    tasks = _tasks(pipeline)
    for task in tasks.values():
        spec = guard.spec(task) if task.uses else None
        if spec is not None:
            problems += _need_problems(pipeline, task, spec, guard.grant(task))
    problems += _tool_problems(pipeline, guard, tasks.values())
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
    owners += [((*t.path, "permissions"), t.permissions) for t in _tasks(pipeline).values()]
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
    for task in _tasks(pipeline).values():
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
    for task in _tasks(pipeline).values():
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
        entries = task.with_.get("tools") if task.uses == "llm" else None
        for i, entry in enumerate(entries if isinstance(entries, list) else ()):
            uses = entry.get("uses") if isinstance(entry, Mapping) else None
            if not isinstance(uses, str):
                continue  # the schema says what is wrong with it
            path = (*task.path, "with", "tools", i)
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
            for _, fields in unmet_needs(plugin.spec, guard.grant(task)):
                granted = " or ".join(f"permissions.{f}" for f in fields)
                problems.append(Problem(pipeline.locate((*path, "uses")), dotted((*path, "uses")),
                                        f"tool '{uses}' needs {granted}, which task {task.id} is not granted; "
                                        "it is never offered to the model", severity="warn"))
    return problems


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


def permissions_table(pipeline: Pipeline, workspace: Path, registry: Any) -> list[dict[str, Any]]:
    """Per task: its plugin, what the plugin declares it needs, what it is granted and its refused flows."""
    guard = Guard(pipeline, workspace, registry)
    rows = []
    for tid, task in _tasks(pipeline).items():
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
