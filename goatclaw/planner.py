"""From a goal in plain words to a pipeline file: drafted by a model, checked like any other, repaired, bounded.

::

    goal ─▶ prompt (schema digest, installed tasks, the project's permissions ceiling,
                    similar goals planned before and how their runs went)
         ─▶ model (JSON, held to the pipeline JSON Schema where the provider supports it)
         ─▶ YAML draft ─▶ goatclaw.check ─▶ located problems? ─▶ fed back, the model repairs it
                                                            (at most ``repairs`` times)

A plan is an ordinary pipeline file (``pipelines/<slug>.yaml``, the goal in its first
comment): it runs through ``apply``'s path, and can be re-run, tested, watched and
resumed. The model's draft is untrusted: it is never run before it passes the same
checks as a hand-written file, within the project's permissions (a pipeline may only
narrow them), and the CLI shows it before running unless told ``--yes``.

Planning calls go through the LLM room like a task's (the mode, the cassette, the budget
``max_cost``); their ``llm.call`` events are added to the run they plan (see
:func:`goatclaw.api.append_run_events`). With ``--llm replay`` the pipeline's cassette
answers them, and memory is not consulted (its prompt must be the one recorded).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from goatclaw import api
from goatclaw import llm as llm_room
from goatclaw.errors import GoatclawError, Location, Problem

__all__ = ["DEFAULT_REPAIRS", "Draft", "Planned", "aplan_goal", "catalogue", "ceiling", "goal_of", "plan_goal",
           "prompt", "similar_goals", "slug"]

#: How many times a draft with problems is sent back for repair (so at most 1 + this many model calls).
DEFAULT_REPAIRS = 3
#: The first line of a planned file: ``# goal: <the goal>`` (how memory finds goals planned before).
GOAL_PREFIX = "# goal: "
#: Warnings of ``check`` that mean the run would fail: a plan with one is repaired like one with an error.
_CERTAIN_FAILURE = ("will fail with permission_denied",)
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Draft:
    """One answer of the model: its YAML text (``None``: not a JSON object) and the problems ``check`` found."""

    attempt: int
    text: str | None
    problems: tuple[Problem, ...]

    @property
    def errors(self) -> list[Problem]:
        """The problems sent back for repair: errors, and warnings that say a task will surely fail.

        A task whose plugin needs a permission nobody grants is only a warning for a
        hand-written file (its author may mean it); in a plan it is a missing grant.
        """
        return [p for p in self.problems if p.severity == "error" or any(w in p.message for w in _CERTAIN_FAILURE)]


@dataclass
class Planned:
    """What planning gave: the last draft, its file, and the calls it took.

    ``ok`` when the last draft passed the checks; ``text`` is then the file to save at
    ``path``. ``calls`` are the ``llm.call`` events' data, ``spent_usd`` their cost.
    """

    goal: str
    path: Path
    model: str
    drafts: list[Draft] = field(default_factory=list)
    calls: list[tuple[float, str, str | None, dict[str, Any]]] = field(default_factory=list)
    spent_usd: float = 0.0
    chosen: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the last draft is a valid pipeline."""
        return bool(self.drafts) and self.drafts[-1].text is not None and not self.drafts[-1].errors

    @property
    def text(self) -> str:
        """The last draft's file text ('' when the model never gave a JSON object)."""
        return (self.drafts[-1].text or "") if self.drafts else ""

    def save(self) -> Path:
        """Write the plan to :attr:`path` (its folder created); the path."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(self.text, encoding="utf-8")
        os.replace(tmp, self.path)
        return self.path


def slug(goal: str) -> str:
    """A file name for ``goal``: its first words, lower case, joined by ``-`` (``plan`` for none)."""
    words = _WORD.findall(goal.lower())[:6]
    return "-".join(words)[:60].strip("-") or "plan"


def goal_of(text: str) -> str | None:
    """The goal a planned file was made for (its ``# goal:`` first line), else ``None``."""
    first = text.split("\n", 1)[0]
    return first[len(GOAL_PREFIX):].strip() if first.startswith(GOAL_PREFIX) else None


def catalogue(registry: Any) -> list[dict[str, Any]]:
    """The installed tasks a plan may use: ``{name, doc, arguments, needs}`` (plugins that fail to load left out)."""
    rows = []
    for info in registry.plugins("task"):
        if info.error:
            continue
        args = [{"name": a["name"], "type": a.get("type"), "required": a.get("required", False)}
                for a in info.arguments]
        rows.append({"name": info.name, "doc": info.doc, "arguments": args,
                     "needs": list(info.spec.get("permissions") or ()) if isinstance(info.spec, Mapping) else []})
    return rows


def ceiling(project: Any) -> dict[str, Any]:
    """The project's permissions (goatclaw.yaml): the most a planned pipeline may be granted."""
    p = project.permissions
    fields = {"shell": p.shell, "network": p.network, "files.read": p.files_read, "files.write": p.files_write,
              "env": p.env, "python": p.python, "mcp": p.mcp}
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in fields.items() if v is not None}


def similar_goals(project: Any, goal: str, *, limit: int = 3, threshold: float = 0.2) -> list[dict[str, Any]]:
    """Goals planned before (``pipelines/*.yaml`` with a ``# goal:`` line) most like ``goal``, and how they ran.

    Likeness is the overlap of their words (Jaccard, at least ``threshold``); each comes with
    ``{goal, file, runs: [{id, status, error}]}`` from the project's store.
    """
    words = set(_WORD.findall(goal.lower()))
    found = []
    for file in sorted((project.root / "pipelines").glob("*.yaml")):
        try:
            with file.open(encoding="utf-8", errors="replace") as handle:
                before = goal_of(handle.readline())
        except OSError:
            continue
        if not before:
            continue
        other = set(_WORD.findall(before.lower()))
        score = len(words & other) / len(words | other) if words | other else 0.0
        if score >= threshold:
            found.append((score, before, file))
    found.sort(key=lambda f: -f[0])
    return [{"goal": g, "file": str(f.relative_to(project.root)),
             "runs": api.past_runs(project.store_path if project.store_path.is_absolute()
                                   else project.root / project.store_path, f.stem)}
            for _, g, f in found[:limit]]


def _schema_digest() -> tuple[dict[str, Any], str]:
    """The pipeline JSON Schema (for structured output) and a digest of it for the prompt."""
    schema = api.pipeline_schema(tasks=False)  # the core: the tasks' arguments are listed apart, in the prompt
    lines = ["top-level keys:"]
    lines += [f"  {k}: {v.get('description', '')}" for k, v in schema["properties"].items()]
    defs = schema["$defs"]
    lines.append("a task's keys:")
    lines += [f"  {k}: {v.get('description', '')}" for k, v in defs["task"]["properties"].items()]
    lines.append("permissions keys:")
    lines += [f"  {k}: {v.get('description', '')}" for k, v in defs["permissions"].get("properties", {}).items()]
    strict = {k: v for k, v in schema.items() if k not in ("$schema", "$id")}
    return strict, "\n".join(lines)


_RULES = """You write goatclaw pipeline files. Answer with ONE JSON object: the pipeline document (it is saved as YAML).
- version: 1; tasks is a mapping of task id -> {uses, needs, with, ...}.
- Use only the installed tasks listed below, with their arguments.
- A later task reads an earlier one's output as ${{ tasks.<id>.output }} and lists it in needs.
- Deny by default: grant in permissions exactly what each task needs, never more than the project's ceiling.
- Keep it small: the fewest tasks that reach the goal."""


def prompt(goal: str, tasks: Sequence[Mapping[str, Any]], limits: Mapping[str, Any],
           memory: Sequence[Mapping[str, Any]], digest: str) -> list[dict[str, str]]:
    """The planning conversation's first two messages (system: the rules and what is known; user: the goal)."""
    parts = [_RULES, "## The pipeline schema\n" + digest, "## Installed tasks"]
    for t in tasks:
        args = ", ".join(f"{a['name']}{'' if a['required'] else '?'}: {a['type'] or 'any'}" for a in t["arguments"])
        needs = f" (needs permissions: {', '.join(t['needs'])})" if t["needs"] else ""
        parts.append(f"- {t['name']}({args}){needs}: {t['doc']}")
    parts.append("## The project's permissions ceiling\n" + (json.dumps(dict(limits), sort_keys=True) if limits
                                                             else "none granted: read files in the project only"))
    if memory:
        parts.append("## Similar goals planned before")
        for m in memory:
            runs = ", ".join(r["status"] + (f" ({r['error']})" if r.get("error") else "") for r in m["runs"]) or \
                "never run"
            parts.append(f"- {m['goal']!r} -> {m['file']}: {runs}")
    return [{"role": "system", "content": "\n\n".join(parts)}, {"role": "user", "content": f"Goal: {goal}"}]


def _repair_message(draft: Draft) -> dict[str, str]:
    if draft.text is None:
        return {"role": "user", "content": "That was not one JSON object. Answer with the pipeline as one JSON object."}
    shown = "\n".join(f"- {p}" for p in draft.errors)
    return {"role": "user", "content": f"goatclaw check found these problems in the file:\n{shown}\n"
                                       "Answer with the whole corrected pipeline as one JSON object."}


def _file_text(goal: str, name: str, data: Any, model: str) -> str | None:
    """The YAML file of a draft, its goal first; ``None`` when the answer is not a JSON object."""
    if not isinstance(data, dict):
        return None
    data = {"version": data.get("version", 1), "name": name,
            **{k: v for k, v in data.items() if k not in ("version", "name")}}
    one_line = " ".join(goal.split())
    head = (f"{GOAL_PREFIX}{one_line}\n# yaml-language-server: $schema=../schemas/pipeline.schema.json\n"
            f"# Planned by `goatclaw run` with {model} and checked like any pipeline; re-run it with goatclaw apply.\n")
    return head + api.dump_yaml(data)


def _check_draft(text: str, path: Path, project: Any, registry: Any, mode: str) -> tuple[Problem, ...]:
    """``goatclaw.check`` of the draft, written under its own name in a scratch folder (so locations name it)."""
    with tempfile.TemporaryDirectory(prefix="goatclaw-plan-") as scratch:
        draft = Path(scratch) / path.name
        draft.write_text(text, encoding="utf-8")
        _, problems = api.check(draft, project=project, registry=registry, llm=mode)
    return tuple(Problem(Location(str(path), p.location.line, p.location.col)
                         if p.location is not None and Path(p.location.file).name == path.name else p.location,
                         p.path, p.message, p.severity) for p in problems)


def _planning_model(project: Any, model: str | None) -> tuple[str, str | None, dict[str, llm_room.Endpoint]]:
    """The model that plans (``--model``, goatclaw.yaml's, else the zero-config choice), why, and its endpoints."""
    endpoints: dict[str, llm_room.Endpoint] = {}
    for name, entry in (project.endpoints or {}).items():
        endpoints[name] = llm_room.Endpoint(api_base=entry.get("api_base"))
    if model or project.model:
        return str(model or project.model), None, endpoints
    found = api.choose_model(project.root)
    if found is None:
        raise GoatclawError("no model to plan with: set OPENAI_API_KEY (or another provider's key) in the environment "
                            "or .env, start Ollama, pass --model, or set model: in goatclaw.yaml (goatclaw doctor)")
    if found["api_base"] or found.get("api_key"):  # a local server, or a key kept in the OS keyring
        endpoints[found["model"]] = llm_room.Endpoint(api_base=found["api_base"], api_key=found.get("api_key"))
    return found["model"], found["why"], endpoints


async def aplan_goal(goal: str, *, project: Any = None, model: str | None = None, llm: str | None = None,
                     max_cost: float | None = None, repairs: int = DEFAULT_REPAIRS,
                     cassette: str | os.PathLike[str] | None = None, folder: Path | None = None,
                     registry: Any = None, on_draft: Callable[[Draft], None] | None = None) -> Planned:
    """Plan ``goal``: draft, check, repair (at most ``repairs`` times); a :class:`Planned` (``ok`` or not).

    ``llm`` is the mode (``live``, ``record``, ``replay``; default ``$GOATCLAW_LLM``) and
    ``cassette`` its file (default: the plan's own ``<slug>.cassette.json``); ``max_cost``
    caps what planning may spend; ``folder`` is where the plan goes (default ``pipelines/``
    of the project); ``on_draft`` sees each checked draft. Raises :class:`GoatclawError`
    when no model can be found or a call fails.
    """
    project = project or api.load_project_for(None)
    registry = registry or api.registry_for(project)
    name = slug(goal)
    path = (folder or project.root / "pipelines") / f"{name}.yaml"
    mode = llm or os.environ.get("GOATCLAW_LLM") or "live"
    chosen_model, chosen, endpoints = _planning_model(project, model)
    tape = llm_room.Cassette(Path(cassette) if cassette else path.with_suffix(".cassette.json")) \
        if mode != "live" else None
    if tape is not None and mode == "record":
        tape.path.parent.mkdir(parents=True, exist_ok=True)  # the plan's folder: its cassette is written first
    session = llm_room.Session(mode=mode, model=chosen_model, cassette=tape, budget_usd=max_cost, endpoints=endpoints,
                               chosen=chosen)
    schema, digest = _schema_digest()
    memory = similar_goals(project, goal) if mode != "replay" else []
    messages = prompt(goal, catalogue(registry), ceiling(project), memory, digest)
    planned = Planned(goal, path, chosen_model, chosen=chosen)

    def emit(topic: str, **data: Any) -> None:
        if topic == "llm.call":
            planned.calls.append((time.time(), topic, "plan", {**data, "attempt": len(planned.drafts) + 1}))

    async with llm_room.using(session):
        for attempt in range(1, repairs + 2):
            request = llm_room.Request(models=(chosen_model,), messages=tuple(messages), temperature=0,
                                       output="json", response_schema=schema, route=False)
            try:
                answer = await llm_room.complete(request, emit=emit)
                data, raw = answer.data, answer.text
            except GoatclawError as err:
                if getattr(err, "error_class", None) != "invalid_output":
                    raise GoatclawError(f"planning with {chosen_model} failed: {err}") from None
                data, raw = None, str(getattr(err, "details", {}).get("text") or "")
            text = _file_text(goal, name, data, chosen_model)
            draft = Draft(attempt, text, _check_draft(text, path, project, registry, mode) if text else ())
            planned.drafts.append(draft)
            if on_draft is not None:
                on_draft(draft)
            if text is not None and not draft.errors:
                break
            messages += [{"role": "assistant", "content": raw or ""}, _repair_message(draft)]
        planned.spent_usd = session.spent_usd
    return planned


def plan_goal(goal: str, **options: Any) -> Planned:
    """:func:`aplan_goal` on a new event loop."""
    return asyncio.run(aplan_goal(goal, **options))
