"""The Python API: load, check, plan and run pipelines. The CLI only calls this.

::

    import goatclaw

    pipeline = goatclaw.load("pipelines/quickstart.yaml")   # SpecError if invalid
    result = goatclaw.run(pipeline, vars={"topics": ["go"]})
    print(result.status, result.outputs)
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from goatclaw.engine.gates import approval_problems
from goatclaw.engine.guard import permission_problems, sink_vars, untrusted_sink_reason
from goatclaw.engine.inputs import input_problems
from goatclaw.engine.state import RunResult, RunStatus, TaskResult, TaskState
from goatclaw.errors import GoatclawError, PluginError, Problem, SpecError
from goatclaw.graph import Plan, build_plan, compile_plan, graph_problems
from goatclaw.graph import check_templates as _check_templates
from goatclaw.liveness import Liveness, current_owner, owner_pid, owner_state
from goatclaw.providers import choose_model, model_problems, read_dotenv
from goatclaw.registry import Registry, default_registry, reference_problems
from goatclaw.security.auditkey import audit_key
from goatclaw.security.secrets import Redactor
from goatclaw.spec.loader import dotted, dump_yaml, gc_frozen, gc_paused, load_file, load_text
from goatclaw.spec.model import Pipeline, build_pipeline
from goatclaw.spec.project import Project, find_project_file, load_project, pipeline_files
from goatclaw.spec.schema import check_document, schema_text
from goatclaw.tools.plugins import model_sinks, trust_of
from goatclaw.validation import budget_problems, llm_problems, rule_problem

if TYPE_CHECKING:  # imported where a run needs them: `goatclaw validate` never loads the engine or the LLM room
    from concurrent.futures import ThreadPoolExecutor

    from goatclaw import llm as llm_room
    from goatclaw.engine.executor import Executor
    from goatclaw.events import Bus
    from goatclaw.store import Store
    from goatclaw.tools import mcp as mcp_room

__all__ = ["adecide", "afork", "append_run_events", "approvals", "arun", "check", "choose_model", "decide",
           "diff_runs", "dump_yaml", "expire_approvals", "fork", "load", "load_project_for", "mcp_pool", "mcp_tools",
           "parse_var", "past_runs", "permissions_of", "pipeline_files", "pipeline_schema", "plan", "project_at",
           "registry_for", "run", "scheduled_pipelines", "schedules", "schema_text", "store_path_of"]


_TEMPLATED = {"type": "string", "pattern": "\\$\\{\\{", "description": "A ${{ }} template, known at run time."}


def pipeline_schema(registry: Registry | None = None, *, tasks: bool = True) -> dict[str, Any]:
    """The pipeline file's JSON Schema for editors: the core schema plus each task's ``with:`` keys.

    Every task ``registry`` knows (default: the built-ins and the installed plugins) that has no
    hand-written branch gets one, marked :data:`~goatclaw.spec.schema.GENERATED`: under
    ``uses: <name>``, ``with`` holds that plugin's arguments (the JSON Schema ``validate`` and the
    tool loop use), each of which may be a ``${{ }}`` template instead, so yaml-language-server
    completes and checks them. A built-in that cannot load here (its extra is missing) keeps the
    branch of the shipped file; a plugin that cannot load gets none. The shipped
    ``schemas/pipeline.schema.json`` is this schema over the built-ins alone
    (``goatclaw schema pipeline --builtins``); ``tasks=False`` gives the core, as validation reads it.
    """
    import json

    from goatclaw.spec.schema import without_generated

    shipped = json.loads(schema_text("pipeline"))
    schema = without_generated(shipped)
    if not tasks:
        return schema
    task = schema["$defs"]["task"]
    written = {_branch_task(b) for b in task.get("allOf", [])}  # llm and agent: hand-written in the file
    fallback = {_branch_task(b): b for b in shipped["$defs"]["task"].get("allOf", [])}
    reg = registry or default_registry()
    branches = [b for name in sorted(set(reg.names()) - written)
                if (b := _with_branch(reg, name) or fallback.get(name)) is not None]
    return {**schema, "$defs": {**schema["$defs"], "task": {**task, "allOf": [*task.get("allOf", []), *branches]}}}


def _branch_task(branch: Mapping[str, Any]) -> str | None:
    """The task an ``if: {uses: const}`` branch of the task schema is for."""
    return branch.get("if", {}).get("properties", {}).get("uses", {}).get("const")


def _with_branch(reg: Registry, name: str) -> dict[str, Any] | None:
    """The generated ``if uses: name then with: <its arguments>`` branch, or None when the plugin cannot load."""
    from goatclaw.spec.schema import GENERATED
    from goatclaw.tools import parameters_of

    try:
        plugin = reg.task(name)
        params = parameters_of(plugin)
    except PluginError:
        return None  # an extra or a package is missing: validate says why
    params["properties"] = {k: {"anyOf": [v, _TEMPLATED], **({"description": v["description"]}
                                                            if "description" in v else {})}
                            for k, v in params.get("properties", {}).items()}
    return {"$comment": GENERATED, "if": {"properties": {"uses": {"const": name}}, "required": ["uses"]},
            "then": {"properties": {"with": {**params, "description": f"{name}: {plugin.doc}"}}}}


def load_project_for(path: str | os.PathLike[str] | None = None) -> Project:
    """The project (``goatclaw.yaml``) that governs ``path``, or the embedded defaults."""
    starts = [Path(path).resolve().parent] if path is not None else []
    found = find_project_file(*starts, Path.cwd())
    return load_project(found, root=Path.cwd())


def check(path: str | os.PathLike[str], *, project: Project | None = None,
          registry: Registry | None = None, llm: str | None = None) -> tuple[Pipeline | None, list[Problem]]:
    """Every problem in a pipeline file (none means it is valid), and the pipeline if built.

    Steps: load the YAML (a fatal problem stops here), check it against the schema, build
    the model, then check the graph, the templates and each task's plugin arguments.
    ``llm`` is the LLM mode the run will use (as in :func:`arun`): in ``replay`` no model needs a key.
    """
    with gc_paused():  # checking makes many objects and no cycles: the cyclic GC would only rescan them
        return _check(path, project, registry, llm)


def _check(path: str | os.PathLike[str], project: Project | None,
           registry: Registry | None, llm: str | None = None) -> tuple[Pipeline | None, list[Problem]]:
    try:
        project = project or load_project_for(path)
        doc = load_file(path)
    except SpecError as exc:
        return None, exc.problems
    problems = list(doc.problems) + check_document(doc, "pipeline")
    pipeline = build_pipeline(doc, default_name=Path(path).stem, project_defaults=project.defaults,
                              file=Path(path), project=project)
    found, graph = graph_problems(pipeline)
    problems += found + _check_templates(pipeline, graph)
    if not found:
        pipeline.memo["plan"] = build_plan(pipeline, graph)
    problems += _plugin_problems(pipeline, registry or _registry_for(project))
    problems += _rule_problems(pipeline, project.model)
    problems += _budget_problems(pipeline, (pipeline.budget or project.budget) is not None)
    llm_settings = project.data.get("llm") if isinstance(project.data.get("llm"), dict) else {}
    tape = project.root / str(llm_settings["cassette"]) if llm_settings.get("cassette") else None
    mode = llm or os.environ.get("GOATCLAW_LLM") or llm_settings.get("mode") or "live"
    problems += model_problems(pipeline, project.root, tape, mode=str(mode))
    problems += permission_problems(pipeline, project.root, registry or _registry_for(project))
    problems += input_problems(pipeline)  # inputs: globs stay inside the project folder
    problems += approval_problems(pipeline)  # approval: only in tasks:, inputs a JSON Schema of an object
    if pipeline.schedules or pipeline.webhook is not None:  # cron and time zones (cronsim: only for such files)
        from goatclaw.schedule import schedule_problems, webhook_problems

        problems += schedule_problems(pipeline) + webhook_problems(pipeline)
        problems += _webhook_sinks(pipeline, registry or _registry_for(project))
    problems += _pipeline_tool_problems(pipeline, project, registry, llm)
    return pipeline, sorted(set(problems), key=Problem.sort_key)


def _webhook_sinks(pipeline: Pipeline, registry: Registry) -> list[Problem]:
    """Warnings for webhook vars (the sender's data) that reach a command, a path or a URL unconstrained.

    A var whose payload field the webhook's ``schema`` pins down (``enum``, ``const`` or a
    ``pattern``) is taken as checked.
    """
    hook = pipeline.webhook
    if hook is None or not hook.vars:
        return []
    from goatclaw.schedule import constrained

    reach = sink_vars(pipeline, registry)
    problems = []
    for name, field in hook.vars.items():
        where = reach.get(name) or reach.get("*")
        if where and not constrained(hook.schema, field):
            path = (*hook.path, "vars", name)
            problems.append(Problem(pipeline.locate(path), dotted(path), (
                f"var '{name}' comes from the webhook's payload (the sender's data) and reaches {where}: pin "
                f"'{field}' down in on.webhook.schema (an enum, a const or a pattern) before it becomes a command, "
                "a path or a URL"), severity="warn"))
    return problems


def _tool_file(root: Path, file: Any) -> Path | None:
    """The real path of a pipeline tool's file when it is one inside ``root``, else ``None``."""
    try:
        target = (root / file).resolve() if isinstance(file, str) and file else None
        return target if target is not None and target.is_relative_to(root.resolve()) and target.is_file() else None
    except (OSError, ValueError):  # a NUL byte, a name too long
        return None


#: The pipeline files being checked, outermost first: pipeline tools that offer each other end.
_CHECKING: contextvars.ContextVar[frozenset[Path]] = contextvars.ContextVar("goatclaw_checking", default=frozenset())


def _pipeline_tool_problems(pipeline: Pipeline, project: Project, registry: Registry | None,
                            llm: str | None) -> list[Problem]:
    """A ``pipeline:`` tool's file is checked too; its first error, and ``with:`` vars it lacks, at the entry."""
    problems: list[Problem] = []
    here = Path(pipeline.file).resolve() if pipeline.file else None
    for task in pipeline.all_tasks().values():
        entries = task.with_.get("tools") if task.uses in ("llm", "agent") else None
        for i, entry in enumerate(entries if isinstance(entries, (list, tuple)) else ()):
            file = entry.get("pipeline") if isinstance(entry, Mapping) else None
            target = _tool_file(project.root, file)
            if target is None:
                continue  # the guard reports a file that is not there
            if target == here or target in _CHECKING.get():
                continue
            path = (*task.path, "with", "tools", i, "pipeline")
            token = _CHECKING.set(_CHECKING.get() | ({here} if here else set()))
            try:
                child, found = check(target, project=project, registry=registry, llm=llm)
            finally:
                _CHECKING.reset(token)
            errors = [p for p in found if p.severity == "error"]
            if errors:
                problems.append(Problem(pipeline.locate(path), dotted(path), f"pipeline tool '{file}' is invalid: "
                                        f"{errors[0]}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")))
            fixed = entry.get("with")
            if child is not None:
                problems += _pipeline_tool_sinks(pipeline, task, i, entry, child,
                                                 registry if registry is not None else _registry_for(project))
            if child is not None and isinstance(fixed, Mapping):
                for name in sorted(set(fixed) - set(child.vars)):
                    where = (*task.path, "with", "tools", i, "with", name)
                    problems.append(Problem(pipeline.locate(where, key=True), dotted(where),
                                            f"pipeline tool '{file}' has no var '{name}' (it has: "
                                            f"{', '.join(child.vars) or 'none'})"))
    return problems


def _pipeline_tool_sinks(pipeline: Pipeline, task: Any, i: int, entry: Mapping[str, Any], child: Pipeline,
                         registry: Registry) -> list[Problem]:
    """A ``pipeline:`` tool whose model-filled vars reach a sink of its tasks without ``trust:``: never offered."""
    fixed = entry.get("with") if isinstance(entry.get("with"), Mapping) else {}
    reach = sink_vars(child, registry)
    try:
        sinks = model_sinks(tuple(reach), child.vars, fixed, trust_of(entry, "tools"))
    except GoatclawError:
        return []  # the schema says what is wrong with trust:
    if not sinks:
        return []
    path = (*task.path, "with", "tools", i, "pipeline")
    where = "; ".join(f"{var} reaches {reach[var]}" for var in sinks)
    name = entry.get("name") if isinstance(entry.get("name"), str) else child.name
    return [Problem(pipeline.locate(path), dotted(path), untrusted_sink_reason(name, f"pipeline:{entry['pipeline']}",
                    sinks) + f" ({where}); it is never offered to the model", severity="warn")]


def load(path: str | os.PathLike[str], *, project: Project | None = None,
         registry: Registry | None = None, llm: str | None = None) -> Pipeline:
    """Load and fully check a pipeline file; raise :class:`SpecError` listing every problem (``llm``: see check)."""
    pipeline, problems = check(path, project=project, registry=registry, llm=llm)
    errors = [p for p in problems if p.severity == "error"]
    if errors or pipeline is None:
        raise SpecError(errors or problems)
    return pipeline


def permissions_of(pipeline: Pipeline, *, registry: Registry | None = None) -> list[dict[str, Any]]:
    """Per task: what its plugin needs, what it is granted (and where that was written), refused flows."""
    from goatclaw.engine.guard import permissions_table

    project: Project = pipeline.project or load_project_for(pipeline.file)
    return permissions_table(pipeline, project.root, registry or _registry_for(project))


def append_run_events(store_path: str | os.PathLike[str], run_id: str,
                      events: Sequence[tuple[float, str, str | None, Mapping[str, Any]]]) -> None:
    """Add ``(ts, topic, task, data)`` events to a stored run after its own (the planner's ``llm.call`` events).

    They commit in one transaction after the run's last event, so ``goatclaw runs show`` counts
    the calls and their cost with the run's.
    """
    import json

    from goatclaw.store import Store

    if not events:
        return
    with Store.open(store_path) as db:
        last = max((e["seq"] for e in db.events(run_id)), default=0)
        rows = [(run_id, last + i, ts, topic, task, json.dumps(dict(data), default=str))
                for i, (ts, topic, task, data) in enumerate(events, start=1)]
        db.write_batch(events=rows)


def past_runs(store_path: str | os.PathLike[str] | None, pipeline: str | None, limit: int = 5) -> list[dict[str, Any]]:
    """The latest stored runs of ``pipeline`` (``None``: of any): ``{id, status, error}``; ``[]`` without a store."""
    from goatclaw.store import Store

    if store_path is None or not Path(store_path).is_file():
        return []
    with Store.open(store_path) as db:
        return [{"id": r.id, "status": r.status, "error": r.error} for r in db.runs(limit=limit, pipeline=pipeline)]


def redactor_for(pipeline: Pipeline) -> Any:
    """The :class:`~goatclaw.security.secrets.Redactor` of the pipeline's declared secrets and the audit key."""
    from goatclaw.security.auditkey import with_audit_key
    from goatclaw.security.secrets import Redactor

    project: Project = pipeline.project or load_project_for(pipeline.file)
    return Redactor(with_audit_key(read_secrets(pipeline.secrets, project.root)))


_TRIGGERED = re.compile(r"^(schedule|on)\s*:", re.MULTILINE)


def project_at(project: Project | str | os.PathLike[str] | None = None) -> Project:
    """``project`` itself, or the project of a folder (its ``goatclaw.yaml``, else the embedded defaults there).

    ``None`` is the project of the current folder.
    """
    if isinstance(project, Project):
        return project
    if project is None:
        return load_project_for(None)
    root = Path(project).resolve()
    file = root / "goatclaw.yaml" if (root / "goatclaw.yaml").is_file() else None
    return load_project(file, root=root)


def pipeline_files_stamp(project: Project | str | os.PathLike[str] | None = None) -> tuple[tuple[str, int, int], ...]:
    """The project's YAML files with their mtime and size (nothing read): it changes when any file does.

    What a long-lived process (``goatclaw serve``'s webhooks) compares to know when to look again.
    """
    from goatclaw.spec.project import pipeline_files_stamp as stamp

    return stamp(project_at(project).root)


def scheduled_pipelines(project: Project | str | os.PathLike[str] | None = None, *,
                        registry: Registry | None = None) -> tuple[list[Pipeline], list[Problem]]:
    """The project's pipelines that start by themselves (``schedule:``) or by a webhook (``on: webhook``).

    ``project`` is a :class:`~goatclaw.spec.project.Project` or its folder (default: the current
    one's). Every pipeline file under the project folder that says either is checked in full;
    the result is the valid ones, sorted by file, and the errors of those that are not (a
    pipeline with an invalid schedule is never run on it).
    """
    from goatclaw.spec.project import pipeline_files

    project = project_at(project)
    pipelines: list[Pipeline] = []
    problems: list[Problem] = []
    for file in pipeline_files(project.root):
        try:
            if not _TRIGGERED.search(file.read_text(encoding="utf-8", errors="replace")[:256_000]):
                continue
        except OSError:
            continue
        pipeline, found = check(file, project=project, registry=registry)
        errors = [p for p in found if p.severity == "error"]
        if errors or pipeline is None:
            problems += errors or found
        elif pipeline.schedules or pipeline.webhook is not None:
            pipelines.append(pipeline)
    return pipelines, problems


def schedules(project: Project | str | os.PathLike[str] | None = None, *, now: float | None = None, next: int = 5,
              store: str | os.PathLike[str] | bool | None = True) -> list[dict[str, Any]]:
    """Each schedule of the project's pipelines with its next ``next`` fires after ``now`` (default: the clock).

    One entry per schedule: ``pipeline``, ``file`` (relative to the project), ``schedule``
    (its name), ``cron``, ``timezone``, ``overlap``, ``catch_up``, ``next`` (ISO 8601 in the
    schedule's zone) and ``next_ts`` (epoch seconds), and from the store (``store``: as in
    :func:`arun`) what the server's scheduler remembers: ``last_fire``, ``last_run``,
    ``last_status``. A pipeline whose file has errors is an entry with ``error`` instead.
    """
    import time

    from goatclaw.schedule import Timetable, pipeline_key

    project = project_at(project)
    now = time.time() if now is None else now
    pipelines, problems = scheduled_pipelines(project)
    remembered = _schedule_state(_store_path(store, project))
    out: list[dict[str, Any]] = []
    for pipeline in pipelines:
        key = pipeline_key(pipeline)
        for schedule in pipeline.schedules:
            table = Timetable.of(schedule)
            fires = table.upcoming(now, next)
            state = remembered.get((key, schedule.name), {})
            out.append({"pipeline": pipeline.name, "file": key, "schedule": schedule.name, "cron": schedule.cron,
                        "timezone": schedule.timezone, "overlap": schedule.overlap, "catch_up": schedule.catch_up,
                        "next": [table.local(t) for t in fires], "next_ts": fires,
                        "last_fire": state.get("last_fire"), "last_run": state.get("last_run"),
                        "last_status": state.get("last_status")})
    for problem in problems:
        file = problem.location.file if problem.location is not None else None
        out.append({"pipeline": None, "file": file, "error": str(problem)})
    return out


def _schedule_state(path: Path | None) -> dict[tuple[str, str], dict[str, Any]]:
    from goatclaw.store import Store

    if path is None or not path.is_file():
        return {}
    with Store.open(path) as db:
        return db.schedule_state()


def plan(pipeline: Pipeline) -> Plan:
    """Compile ``pipeline`` into its frozen execution plan (levels, needs, dependents)."""
    return compile_plan(pipeline)


def run(pipeline: Pipeline | str | os.PathLike[str], *, vars: Mapping[str, Any] | None = None,
        **options: Any) -> RunResult:
    """Run a pipeline to the end and return its :class:`RunResult` (see :func:`arun` for options)."""
    import asyncio

    return asyncio.run(arun(pipeline, vars=vars, **options))


async def arun(
    pipeline: Pipeline | str | os.PathLike[str],
    *,
    vars: Mapping[str, Any] | None = None,
    concurrency: int | None = None,
    only: Sequence[str] = (),
    store: str | os.PathLike[str] | bool | None = True,
    bus: Bus | None = None,
    registry: Registry | None = None,
    executor: Executor | str | None = None,
    executor_address: str | None = None,
    dry_run: bool = False,
    secrets: Mapping[str, str] | None = None,
    run_id: str | None = None,
    seed: int | None = None,
    hooks: Sequence[Any] = (),
    resume: str | bool | None = None,
    force: bool = False,
    cache: bool = True,
    seed_from: str | None = None,
    seed_only: Sequence[str] | None = None,
    answers: Mapping[str, Mapping[str, Any]] | None = None,
    llm: str | None = None,
    max_cost: float | None = None,
    stubs: Mapping[str, Any] | None = None,
    cassette: str | os.PathLike[str] | None = None,
    workspace: str | os.PathLike[str] | None = None,
    approver: Any = None,
    trigger: str | None = None,
) -> RunResult:
    """Run a pipeline on the running event loop.

    ``vars`` override the file's ``vars``; ``only`` runs those tasks and what they need;
    ``store`` is the store path (``True``: the project's, ``False``/``None``: no store);
    ``bus`` receives every event (subscribe renderers to it); ``dry_run`` plans and
    returns without running anything; ``hooks`` are lifecycle hook objects (see
    :mod:`goatclaw.hooks`), called after the pipeline's own ``hooks:``.

    ``resume`` continues a stored run under its own id (``True``: the last unfinished
    run of this pipeline; or a run id or prefix): tasks that succeeded keep their stored
    outputs and do not run again; a changed pipeline file is refused unless ``force``.
    ``cache=False`` ignores the task cache. ``seed_from`` names a stored run whose
    finished tasks count as done in this new run (how ``goatclaw dlq replay`` re-runs one
    task in its original context); ``seed_only`` limits that to these tasks (a fork). ``answers``
    maps LLM request keys to the answers a past run got: a live call with such a request is
    answered with it (``source: stored``, no cost) instead of being sent (see :func:`fork`).

    ``executor`` runs the task bodies: an :class:`~goatclaw.engine.executor.Executor`, or
    ``local`` or ``dask`` (default: ``executor:`` in goatclaw.yaml); ``executor_address`` is
    the Dask scheduler to send them to (default: a local Dask cluster started for the run
    and closed after it). See docs/dask.md.

    ``llm`` is the LLM mode (``live``, ``record``, ``replay``; default: ``$GOATCLAW_LLM``,
    then ``llm.mode`` in goatclaw.yaml): ``record`` writes every model answer to the
    pipeline's cassette, ``replay`` answers only from it (see docs/llm.md); both bypass
    the task cache so that every ``llm`` task really records or replays; ``cassette``
    names another cassette file than the pipeline's own.

    ``max_cost`` caps what the run's LLM calls may spend in dollars (the lower of it and
    the pipeline's ``budget:``): a call that cannot be afforded fails with class ``budget``,
    and a run whose calls still cost more in the end (their estimates were low) is failed,
    in the store too. ``stubs`` gives the outputs of tasks that then do not run (``goatclaw test``).
    ``workspace`` is the folder tasks' relative paths start from (default: the project's folder;
    ``goatclaw test`` runs each case in a scratch copy of it).
    ``approver`` decides the tool calls an ``llm`` or ``agent`` task's ``approve:`` names: a
    function of a :class:`goatclaw.engine.toolcalls.Approval` returning ``True`` to run the call
    (it may block, or be async); without one those calls are refused (``approval_required``).
    ``trigger`` says what started the run (``cli``, ``api``, ``schedule``, ``webhook``, …): its
    ``run.started`` event records it, and the dashboard shows it.
    """
    from goatclaw import llm as llm_room
    from goatclaw import tracing
    from goatclaw.engine.executor import started
    from goatclaw.engine.runner import RunOptions, execute
    from goatclaw.events import Bus
    from goatclaw.tools import mcp as mcp_room

    audit_key()  # taken from the environment before any task, worker or writer process can inherit it
    if not isinstance(pipeline, Pipeline):
        pipeline = load(pipeline, registry=registry, llm=llm)
    project: Project = pipeline.project or load_project_for(pipeline.file)
    compiled = compile_plan(pipeline)
    if dry_run:
        return _dry_result(compiled)
    store_path = _store_path(store, project)
    stored_vars: dict[str, Any] | None = None
    if resume:
        run_id, stored_vars = _resumable(pipeline, store_path, resume, vars, force)
        expire_approvals(store=store_path)  # a request past its timeout is a rejection before the run reaches it
    session = llm_session(pipeline, project, llm, store_path, max_cost=max_cost, cassette=cassette, cache=cache)
    if answers:
        session.answers = dict(answers)
    tracer = None
    if tracing.enabled():  # OTEL_* set: the run and its tasks become spans (the otel extra)
        bus = bus or Bus()
        tracer = tracing.attach(bus, {tid: t.uses for tid, t in pipeline.tasks.items()})
    chosen = _executor(executor, executor_address, project)
    options = RunOptions(
        vars=stored_vars if stored_vars is not None else {**pipeline.vars, **(vars or {})},
        concurrency=concurrency or (None if _says(pipeline, "concurrency") else project.concurrency),
        only=tuple(only),
        store_path=store_path,
        workspace=Path(workspace) if workspace is not None else project.root,
        secrets=dict(secrets) if secrets is not None else read_secrets(pipeline.secrets, project.root),
        bus=bus,
        registry=registry or _registry_for(project),
        executor=chosen,
        run_id=run_id,
        seed=seed,
        hooks=tuple(hooks),
        resume=bool(resume),
        seed_from=seed_from,
        seed_only=frozenset(seed_only) if seed_only is not None else None,
        stubs=dict(stubs or {}),
        cache=cache and session.mode == "live",
        load=functools.partial(load, project=project, registry=registry, llm=llm),  # pipeline tools' files
        approver=approver,
        trigger=trigger,
        evidence=functools.partial(_approval_evidence, pipeline, project, registry or _registry_for(project)),
        last_look=looked.look if (looked := _FirstLook.wanted(project, store_path)) is not None else None,
    )
    session.secrets = [v for v in options.secrets.values() if v]
    servers = mcp_pool(project, options.secrets, mode=session.mode, cassette=session.cassette)
    async with llm_room.using(session), mcp_room.using(servers), started(chosen, owned=chosen is not executor):
        try:
            with gc_frozen():  # what the check and the plan built stays out of the GC's scans during the run
                result = await execute(compiled, options)
        finally:
            if tracer is not None:
                tracer.close()
    if max_cost is not None and result.ok and session.spent_usd > max_cost:
        _overspent(result, session.spent_usd, max_cost, store_path)
    if store_path is not None and result.status is not RunStatus.WAITING:  # memory learns from runs that ended
        await _remember(result, pipeline, project, options.secrets, options.registry,
                        worth=None if looked is None else looked.worth)
    return result


def _approval_evidence(pipeline: Pipeline, project: Project, registry: Registry,
                       downstream: Sequence[str]) -> dict[str, Any]:
    """What an approval request shows of the tasks that follow it: their cost estimate and permissions.

    The same as ``goatclaw plan --cost`` (llm tasks only; litellm's price map is read only when
    one follows) and ``goatclaw plan --permissions`` (what each plugin needs: its side effects).
    """
    from goatclaw import llm as llm_room

    follows = set(downstream)
    cost: list[dict[str, Any]] = []
    if any(pipeline.tasks[t].uses == "llm" for t in follows if t in pipeline.tasks):
        cost = [row for row in llm_room.estimate_costs(pipeline, project.model) if row["task"] in follows]
    known = [row["usd"] for row in cost if row["usd"] is not None]
    permissions = [{k: row[k] for k in ("task", "uses", "needs", "granted")}
                   for row in permissions_of(pipeline, registry=registry) if row["task"] in follows]
    return {"cost": {"tasks": cost, "usd": sum(known) if known else 0.0, "unpriced": len(cost) - len(known)},
            "permissions": permissions}


# -- approvals -------------------------------------------------------------------------


def approvals(*, store: str | os.PathLike[str] | None = None, project: Project | str | os.PathLike[str] | None = None,
              run_id: str | None = None, waiting: bool = True) -> list[dict[str, Any]]:
    """Approval requests, oldest first: undecided ones (all with ``waiting=False``), of one run if ``run_id``.

    Each is ``{run_id, task_id, pipeline, requested_at, timeout, expires_at, evidence, decision,
    decided_by, decided_at, inputs, reason}``; ``evidence`` holds the message, the upstream
    outputs (bounded, secrets masked), the downstream tasks with their cost estimate and
    permissions, and the inputs' JSON Schema. Requests past their timeout become rejections first.
    ``store`` is the store file (default: the project's); ``project`` a Project or its folder.
    """
    from goatclaw import decisions

    with _decisions_store(store, project) as db:
        decisions.expire(db)
        return decisions.listing(db, run_id, waiting=waiting)


def expire_approvals(*, store: str | os.PathLike[str] | None = None,
                     project: Project | str | os.PathLike[str] | None = None,
                     now: float | None = None) -> list[dict[str, Any]]:
    """Turn undecided requests past their ``timeout`` into rejections (by ``timeout``, audited); those decisions.

    The runs stay ``waiting`` until resumed (``decide`` or ``arun(resume=...)`` does it): the task
    then fails with error class ``rejected``. ``now`` is the clock (seconds since the epoch).
    """
    from goatclaw import decisions

    with _decisions_store(store, project) as db:
        return decisions.expire(db, now)


def decide(run_id: str, task_id: str | None = None, *, approve: bool, who: str,
           inputs: Mapping[str, Any] | None = None, reason: str | None = None,
           store: str | os.PathLike[str] | None = None, project: Project | str | os.PathLike[str] | None = None,
           resume: bool = True, **options: Any) -> RunResult | None:
    """Approve or reject a waiting request, then resume its run (see :func:`adecide`)."""
    import asyncio

    return asyncio.run(adecide(run_id, task_id, approve=approve, who=who, inputs=inputs, reason=reason, store=store,
                               project=project, resume=resume, **options))


async def adecide(run_id: str, task_id: str | None = None, *, approve: bool, who: str,
                  inputs: Mapping[str, Any] | None = None, reason: str | None = None,
                  store: str | os.PathLike[str] | None = None,
                  project: Project | str | os.PathLike[str] | None = None, resume: bool = True,
                  **options: Any) -> RunResult | None:
    """Record a decision on run ``run_id``'s approval of ``task_id``, then resume the run under its own id.

    ``run_id`` may be a unique prefix or ``last``; ``task_id`` may be left out when the run
    waits for exactly one approval. ``inputs`` are checked against the request's JSON Schema
    (:class:`SpecError`, exit code 2, when they do not fit). A request decided already (or
    timed out) is refused with :class:`GoatclawError`: a decision is final. The decision
    (who, when, inputs, reason) is a row of the audit chain.

    With ``resume`` the run goes on in this process (what finished never runs again) and its
    :class:`RunResult` is returned; ``options`` go to :func:`arun` (``bus``, ``force``, ``llm``, …).
    Returns ``None`` without ``resume``, or when the run is going on in another live process
    (which reads the decision when it reaches the task).
    """
    from goatclaw import decisions

    found = _decisions_project(project)
    path = _decisions_path(store, found)
    with _decisions_store(path, found) as db:
        decisions.expire(db)
        run, request = decisions.pick(db, run_id, task_id)
        values = decisions.checked_inputs(request, inputs) if approve else None
        decisions.record(db, run.id, request["task_id"], approve=approve, who=who, inputs=values, reason=reason)
    if not resume or (run.status == "running" and owner_state(run.owner) is Liveness.ALIVE):
        return None
    try:
        return await arun(_run_file(run, found), resume=run.id, store=path, **options)
    except SpecError:
        raise  # the file is invalid now: its located problems say why
    except GoatclawError as exc:  # refused to resume (the file changed, it is missing): the decision stands
        raise GoatclawError(f"the decision is recorded, but run {run.id} was not resumed: {exc.message}") from exc


def _decisions_project(project: Project | str | os.PathLike[str] | None) -> Project:
    """``project`` as a Project: given, found from its folder (or goatclaw.yaml), or the current one."""
    if isinstance(project, Project):
        return project
    if project is None:
        return load_project_for(None)
    where = Path(project)
    file = where if where.is_file() else find_project_file(where)
    return load_project(file, root=where if where.is_dir() else where.parent)


def _decisions_path(store: str | os.PathLike[str] | None, project: Project) -> Path:
    if store is not None:
        return Path(store)
    env = os.environ.get("GOATCLAW_STORE")
    return Path(env) if env else project.store_path


def _decisions_store(store: str | os.PathLike[str] | None, project: Project | str | os.PathLike[str] | None) -> Store:
    """The store holding the requests (refused when there is none: nothing ever waited there)."""
    from goatclaw.errors import StoreError
    from goatclaw.store import Store

    path = Path(store) if store is not None else _decisions_path(None, _decisions_project(project))
    if not path.is_file():
        raise StoreError(f"no store at {path} (run a pipeline first, or pass the store)")
    return Store.open(path)


def _run_file(run: Any, project: Project) -> Path:
    """The pipeline file of a stored run: as stored, or relative to the project's folder."""
    if run.file is None:
        raise GoatclawError(f"run {run.id} has no pipeline file to resume from")
    file = Path(run.file)
    if not file.is_absolute() and not file.is_file() and (project.root / file).is_file():
        return project.root / file
    return file
async def afork(run: str, task: str, *, store: str | os.PathLike[str] | None = None,
                vars: Mapping[str, Any] | None = None, model: str | None = None,
                edit: str | os.PathLike[str] | None = None, bus: Bus | None = None,
                registry: Registry | None = None) -> RunResult:
    """Fork stored run ``run`` at ``task`` on the running event loop (see :func:`fork`)."""
    from goatclaw.forking import afork as fork_run

    path = Path(store) if store is not None else _store_path(True, load_project_for(None))
    assert path is not None
    return await fork_run(path, run, task, vars=vars, model=model, edit=edit, bus=bus, registry=registry)


def fork(run: str, task: str, **options: Any) -> RunResult:
    """A new run of stored run ``run`` that re-runs ``task`` and every task after it, with one change.

    Tasks not downstream of ``task`` keep their stored outputs and do not run; the LLM calls
    of the tasks that run again whose request did not change get the stored answer
    (``source: stored``, $0), so only what changed costs money. Options: ``store`` (default:
    the project's), ``vars`` (changed variables), ``model`` (the model of ``task`` and the
    ``llm``/``agent`` tasks after it), ``edit`` (an edited pipeline file to run instead), ``bus``,
    ``registry``. The new run records a ``run.forked`` event (see :mod:`goatclaw.forking`).
    """
    import asyncio

    return asyncio.run(afork(run, task, **options))


def diff_runs(a: str, b: str | None = None, *, store: str | os.PathLike[str] | None = None) -> Any:
    """Stored runs ``a`` and ``b`` compared task by task: a :class:`goatclaw.rundiff.RunDiff`.

    Without ``b``, ``a`` is a fork and is compared with the run it forks (``b`` is ``a`` then).
    Per task: status, the output's diff, cost, tokens, duration and the rules' verdicts;
    ``goatclaw.rundiff.render(d, "markdown")`` writes it for a pull request comment.
    """
    from goatclaw.rundiff import diff

    path = Path(store) if store is not None else _store_path(True, load_project_for(None))
    assert path is not None
    if not path.is_file():
        raise GoatclawError(f"no store at {path}")
    return diff(path, a, b)


def mcp_pool(project: Project, secrets: Mapping[str, str] | None = None, *, mode: str = "live",
             cassette: Any = None) -> mcp_room.Servers:
    """The MCP servers of ``project`` (goatclaw.yaml's ``mcp_servers:``), none started yet.

    ``secrets`` are what ``${{ secrets.X }}`` in their ``env``/``headers`` read (default: each
    name they use, from the environment or ``.env``); those values are masked in the cassette.
    """
    from goatclaw.tools import mcp as mcp_room

    configs = mcp_room.server_configs(project.mcp_servers)
    if secrets is None:
        names = sorted({n for c in configs.values() for n in mcp_room.secret_names(c)})
        secrets = read_secrets(names, project.root)
    redactor = Redactor(dict(secrets))
    return mcp_room.Servers(configs, secrets=secrets, workspace=project.root, mode=mode, cassette=cassette,
                            mask=redactor.mask_data)


async def mcp_tools(server: str, *, project: Project | None = None) -> list[dict[str, Any]]:
    """The tools the MCP server ``server`` of goatclaw.yaml lists (``tools/list``): name, description, inputSchema.

    The server is started for the question and stopped after it (``goatclaw mcp tools``).
    """
    from goatclaw.tools import mcp as mcp_room

    project = project or load_project_for(None)
    async with mcp_room.using(mcp_pool(project)) as servers:
        return [t.as_data() for t in await servers.tools(server)]


def _overspent(result: RunResult, spent: float, max_cost: float, store_path: Path | None) -> None:
    """A run whose calls cost more than ``max_cost`` (estimates let them through) fails, in the store too."""
    result.status = RunStatus.FAILED
    from goatclaw.money import usd
    from goatclaw.store import Store

    result.error = f"the run cost {usd(spent)}, over max_cost {usd(max_cost)}"
    if store_path is not None:
        with Store.open(store_path) as db:
            db.fail_run(result.run_id, result.error)


def _executor(given: Executor | str | None, address: str | None, project: Project) -> Executor | None:
    """The run's executor: the one given, or one built from its name and goatclaw.yaml (``None``: the runner's own)."""
    from goatclaw.engine.executor import Executor, make_executor

    if isinstance(given, Executor):
        return given
    kind = given or ("dask" if address else project.executor)
    if address is None and kind == project.executor:
        address = project.executor_address
    if kind == "local" and address is None and project.executor_workers is None:
        return None
    return make_executor(kind, address=address, workers=project.executor_workers, worker_wait=project.executor_wait)


class _FirstLook:
    """Whether memory has anything to learn from a run, asked of the run's store before it closes.

    Most runs that succeed teach nothing (nothing failed or was retried, no earlier failure
    to mark fixed): then :func:`_remember` opens the store no second time and starts no thread.
    """

    def __init__(self) -> None:
        self.worth: bool | None = None  # None: not asked (the run's last commit failed): remember_run asks

    @classmethod
    def wanted(cls, project: Project, store_path: Path | None) -> _FirstLook | None:
        """A look for a run with a store whose memory learns only when there is something to learn; else ``None``."""
        if store_path is None:
            return None
        from goatclaw.memory.learn import MemorySettings

        settings = MemorySettings.from_data(project.data.get("memory"))
        return cls() if settings.enabled and not (settings.runs or settings.outputs) else None

    def look(self, store: Store, result: RunResult) -> None:
        """``RunOptions.last_look``: the store still open, everything committed."""
        from goatclaw.memory.learn import worth_a_look

        self.worth = worth_a_look(store, result)


async def _remember(result: RunResult, pipeline: Pipeline, project: Project, secrets: Mapping[str, str],
                    registry: Registry | None = None, *, worth: bool | None = None) -> None:
    """Let memory learn from the run (failures, fixes, summary); a memory problem never fails the run.

    ``worth`` is what :class:`_FirstLook` found (``False``: nothing to learn; ``None``: not asked).
    """
    if worth is False:  # the run's own store said so before it closed (asked only where that settles it)
        return
    import asyncio

    from goatclaw.memory.learn import MemorySettings, remember_run

    settings = MemorySettings.from_data(project.data.get("memory"))
    if not settings.enabled or result.store_path is None:
        return
    # built only if the run has something to teach (most runs that succeed do not): see remember_run
    plugins = _Lazy(lambda: {tid: t.uses or "" for tid, t in pipeline.tasks.items()})
    paths = _Lazy(lambda: {tid: t.with_["path"] for tid, t in pipeline.tasks.items() if t.uses == "file.read"
                           and isinstance(t.with_.get("path"), str) and "${{" not in t.with_["path"]})
    origins = _Lazy(lambda: _untrusted_outputs(pipeline, project, registry or _registry_for(project)))
    try:
        work = functools.partial(remember_run, result.store_path, result.run_id, settings=settings, plugins=plugins,
                                 secrets=secrets, paths=paths, origins=origins)
        # a thread kept for it across the process's runs: asyncio.run's own executor would start one and
        # join it for every run (a millisecond and a half of a one-task run)
        await asyncio.get_running_loop().run_in_executor(_memory_thread(), contextvars.copy_context().run, work)
    except GoatclawError as exc:
        logging.getLogger("goatclaw.memory").warning("memory: %s", exc)
    except ImportError as exc:  # goatclaw[memory] is not installed: nothing to remember with
        logging.getLogger("goatclaw.memory").debug("memory: %s", exc)


@functools.cache
def _memory_thread() -> ThreadPoolExecutor:
    """The thread memory learns from runs in (one a process, started when first needed)."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="goatclaw-memory")


class _Lazy(Mapping[str, Any]):
    """A mapping built by ``make`` when it is first read."""

    def __init__(self, make: Callable[[], Mapping[str, Any]]) -> None:
        self._make: Callable[[], Mapping[str, Any]] | None = make
        self._data: Mapping[str, Any] = {}

    def _built(self) -> Mapping[str, Any]:
        if self._make is not None:
            self._data, self._make = self._make(), None
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._built()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._built())

    def __len__(self) -> int:
        return len(self._built())


def _untrusted_outputs(pipeline: Pipeline, project: Project, registry: Registry) -> dict[str, frozenset[str]]:
    """Per task: the untrusted tasks whose data its output and error carry, as its templates show.

    (What the run found besides, files and memories read back, is in the store: memory reads it there.)
    """
    from goatclaw.engine.guard import Guard

    guard = Guard(pipeline, project.root, registry)
    return {tid: came for tid in pipeline.tasks if (came := guard.output_origins(tid))}


def llm_session(pipeline: Pipeline, project: Project, mode: str | None, store_path: Path | None, *,
                max_cost: float | None = None, cassette: str | os.PathLike[str] | None = None,
                cache: bool = True) -> llm_room.Session:
    """The LLM settings a run shares: mode and cassette, cache, budget, rate limits, default models.

    ``max_cost`` lowers the budget to at most that many dollars; ``cassette`` overrides
    the cassette file (default: ``llm.cassette`` in goatclaw.yaml, else the pipeline's own).
    The answer cache is the run's store unless ``cache`` is false (``--no-cache``) or
    goatclaw.yaml says ``llm: {cache: false}``; ``llm.cache.ttl`` bounds its answers' age.
    """
    from goatclaw import llm as llm_room

    settings = project.data.get("llm") if isinstance(project.data.get("llm"), Mapping) else {}
    mode = mode or os.environ.get("GOATCLAW_LLM") or settings.get("mode") or "live"
    if mode not in llm_room.MODES:
        raise GoatclawError(f"--llm must be one of {', '.join(llm_room.MODES)}, not '{mode}'")
    tape = None
    if mode != "live":
        if cassette is not None:
            tape = llm_room.Cassette(Path(cassette))
        elif settings.get("cassette"):
            tape = llm_room.Cassette(project.root / str(settings["cassette"]))
        elif pipeline.file is not None:
            tape = llm_room.Cassette(Path(pipeline.file).with_suffix(".cassette.json"))
        else:
            raise GoatclawError(f"--llm {mode} needs a cassette: set llm.cassette in goatclaw.yaml")
    budget = pipeline.budget or project.budget
    budget_usd = budget.usd if budget is not None else None
    if max_cost is not None:
        budget_usd = max_cost if budget_usd is None else min(budget_usd, max_cost)
    limits = project.data.get("rate_limits")
    cache_setting = settings.get("cache", True)
    model, endpoints, chosen = project.model, _endpoints(project), None
    if model is None and mode == "replay" and tape is not None and _has_llm_tasks(pipeline):
        model, chosen = _recorded_model(tape)
    elif model is None and mode != "replay" and _has_llm_tasks(pipeline):
        found = choose_model(project.root)
        if found is not None:
            model, chosen = found["model"], found["why"]
            if found["api_base"] or found.get("api_key"):  # a local server, or a key kept in the OS keyring
                endpoints[model] = llm_room.Endpoint(api_base=found["api_base"], api_key=found.get("api_key"))
    return llm_room.Session(
        mode=mode, model=model, fallbacks=project.fallbacks, cassette=tape, chosen=chosen,
        cascade=project.cascade, cascade_feedback=project.cascade_feedback,
        prefer=settings.get("prefer") if settings.get("prefer") == "cheapest" else None,
        cache=store_path if cache and cache_setting is not False else None,
        cache_ttl=_cache_ttl(cache_setting),
        budget_usd=budget_usd,
        downgrade=budget.downgrade if budget is not None else None,
        rate_limits=dict(limits) if isinstance(limits, Mapping) else {},
        limits_store=store_path,
        endpoints=endpoints,
    )


def _recorded_model(tape: Any) -> tuple[str | None, str | None]:
    """The zero-config choice of a replay: the one model a cassette recorded answers of, and why.

    A run recorded with the model goatclaw chose (a key on the recording machine) replays where
    no key is set. A cassette of several models (fallbacks, a cascade) chooses none: which of
    them a task without ``model:`` asked is not in the file.
    """
    try:
        entries = tape.entries()
    except GoatclawError:
        return None, None  # the replay reports the unreadable cassette
    models = {e.get("model") for e in entries.values() if isinstance(e, Mapping)}
    if len(models) != 1 or not isinstance(next(iter(models)), str):
        return None, None
    model = str(next(iter(models)))
    return model, f"no model in goatclaw.yaml; replaying {tape.path.name}, whose answers all came from {model}"


def _has_llm_tasks(pipeline: Pipeline) -> bool:
    """Whether ``pipeline`` holds an ``llm`` task (only then is a model chosen for it)."""
    return "llm" in pipeline.plugin_names()


def _endpoints(project: Project) -> dict[str, llm_room.Endpoint]:
    """goatclaw.yaml's model entries that say where they are served; keys read from the environment or .env."""
    from goatclaw import llm as llm_room

    if not project.endpoints:
        return {}
    dotenv = read_dotenv(project.root)
    found = {}
    for name, entry in project.endpoints.items():
        var = entry.get("api_key_env")
        key = (os.environ.get(var) or dotenv.get(var)) if var else None
        found[name] = llm_room.Endpoint(api_base=entry.get("api_base"), api_key=key or None)
    return found


def _cache_ttl(setting: Any) -> float:
    """``llm.cache.ttl`` in seconds (schema-checked), else the default of a week."""
    from goatclaw import llm as llm_room
    from goatclaw.spec.model import parse_duration

    ttl = setting.get("ttl") if isinstance(setting, Mapping) else None
    return parse_duration(ttl) if ttl is not None else llm_room.DEFAULT_CACHE_TTL  # type: ignore[return-value]


def _resumable(pipeline: Pipeline, store_path: Path | None, ref: str | bool, vars: Mapping[str, Any] | None,
               force: bool) -> tuple[str, dict[str, Any]]:
    """The stored run to resume and its variables; refuses a run that would not finish the same way."""
    from goatclaw.store import Store

    if store_path is None or not store_path.exists():
        raise GoatclawError("--resume needs the store, and there is none yet" if store_path is None
                            else f"--resume: no store at {store_path}")
    with Store.open(store_path) as db:
        row = db.last_unfinished(pipeline.name) if ref is True else db.run(str(ref))
    if row is None:
        raise GoatclawError(f"--resume: no unfinished run of pipeline '{pipeline.name}' in {store_path}"
                            if ref is True else f"--resume: no run '{ref}' in {store_path}")
    if row.pipeline != pipeline.name:
        raise GoatclawError(f"--resume: run {row.id} is of pipeline '{row.pipeline}', not '{pipeline.name}'")
    if row.status == "running" and row.owner != current_owner() and owner_state(row.owner) is Liveness.ALIVE:
        raise GoatclawError(f"--resume: run {row.id} is still running (process {owner_pid(row.owner)} on this "
                            "machine); wait for it to end or stop it first: a run is never run twice at once")
    if row.digest != pipeline.digest and not force:
        raise GoatclawError(f"--resume: {pipeline.file or pipeline.name} changed since run {row.id} started "
                            "(its stored outputs may not fit any more); pass --force to resume anyway")
    if vars and any(row.vars.get(k) != v for k, v in vars.items()) and not force:
        raise GoatclawError(f"--resume: run {row.id} ran with other --var values; pass --force to override them")
    return row.id, {**row.vars, **(vars or {})}


def parse_var(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line; the value is read as YAML (``[a, b]`` is a list)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise GoatclawError(f"--var expects key=value, got '{text}'")
    try:
        value = load_text(raw, file="--var").data if raw.strip() else ""
    except SpecError:
        value = raw
    return key.strip(), value


def read_secrets(names: Sequence[str], root: Path) -> dict[str, str]:
    """Values of declared secrets from the environment, else from ``.env`` in the project root."""
    found = {n: os.environ[n] for n in names if n in os.environ}
    missing = [n for n in names if n not in found]
    if missing:
        dotenv = read_dotenv(root)
        found.update({n: dotenv[n] for n in missing if n in dotenv})
    return found


def _says(pipeline: Pipeline, key: str) -> bool:
    """Whether the pipeline file itself sets ``key`` (so it beats the project's setting)."""
    data = pipeline.source.data if pipeline.source is not None else None
    return isinstance(data, dict) and key in data


def store_path_of(project: Project, store: str | os.PathLike[str] | bool | None = True) -> Path | None:
    """The store file a run of ``project`` uses, for ``store`` as :func:`arun` takes it.

    ``True``: ``$GOATCLAW_STORE``, else the project's; ``False``/``None``: none.
    """
    return _store_path(store, project)


def _store_path(store: str | os.PathLike[str] | bool | None, project: Project) -> Path | None:
    if store is True:
        env = os.environ.get("GOATCLAW_STORE")
        return Path(env) if env else project.store_path
    if store is False or store is None:
        return None
    return Path(store)


def registry_for(project: Project) -> Registry:
    """The registry ``project``'s pipelines use (its plugin allow and deny lists applied)."""
    return _registry_for(project)


def _registry_for(project: Project) -> Registry:
    if project.plugins_allow is None and not project.plugins_deny:
        return default_registry()
    return Registry(allow=project.plugins_allow, deny=project.plugins_deny)


def _budget_problems(pipeline: Pipeline, budgeted: bool) -> list[Problem]:
    """Warnings for ``llm`` tasks under a budget without ``max_tokens`` (docs/llm.md, Budget)."""
    return [Problem(pipeline.locate(path), dotted(path), why, severity="warn")
            for task in (*pipeline.tasks.values(), *pipeline.on_failure.values(), *pipeline.finally_.values())
            for path, why in budget_problems(task, budgeted)]


def _rule_problems(pipeline: Pipeline, default_model: str | None = None) -> list[Problem]:
    """``validate:`` rules that can never work: invalid schemas, patterns RE2 refuses; judges without a model (warn)."""
    base = pipeline.file.parent if pipeline.file is not None else Path.cwd()
    problems = []
    for task in (*pipeline.tasks.values(), *pipeline.on_failure.values(), *pipeline.finally_.values()):
        for path, why in llm_problems(task, default_model):
            problems.append(Problem(pipeline.locate(path), dotted(path), why, severity="warn"))
        for rule in task.validate:
            why = rule_problem(rule, base, lambda name: True)  # validator names: reference_problems
            if why:
                path = (*rule.path, rule.kind)
                problems.append(Problem(pipeline.locate(path), dotted(path), why))
    return problems


def _plugin_problems(pipeline: Pipeline, registry: Registry) -> list[Problem]:
    problems = []
    for group in (pipeline.tasks, pipeline.on_failure, pipeline.finally_):
        for task in group.values():
            if not task.uses:
                continue
            try:
                plugin = registry.task(task.uses)
            except PluginError as exc:
                problems.append(Problem(pipeline.locate((*task.path, "uses")), dotted((*task.path, "uses")),
                                        exc.message))
                continue
            for arg, message in plugin.check_args(task.with_):
                path = (*task.path, "with", arg) if arg else (*task.path, "with") if task.with_ else task.path
                problems.append(Problem(pipeline.locate(path, key=arg is not None), dotted(path), message))
    return problems + reference_problems(pipeline, registry)  # validators named by use: rules, hooks


def _dry_result(compiled: Plan) -> RunResult:
    return RunResult(run_id="dry-run", pipeline=compiled.pipeline.name, status=RunStatus.SUCCEEDED,
                     tasks={tid: TaskResult(tid, TaskState.PENDING) for tid in compiled.order})
