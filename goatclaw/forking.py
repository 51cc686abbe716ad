"""Forking a stored run: replay it with one change from one task on, and pay only for what changed.

``goatclaw runs fork RUN --from TASK [--set vars.x=…] [--model M] [--edit FILE]`` (and
:func:`goatclaw.fork`) starts a new run of the stored run's pipeline (or of ``FILE``, an edited
copy of it) with the stored run's vars (``--set`` changes some)::

    stored run ─▶ tasks not downstream of TASK: their stored outputs (they do not run)
               ─▶ TASK and every task after it: run again
               ─▶ each LLM call of theirs whose request did not change: the stored answer
                  (``source: stored``, $0), whatever its temperature; a changed one is sent

``--model M`` makes ``M`` the model of TASK and of the ``llm`` and ``agent`` tasks after it.
The new run records a ``run.forked`` event naming the run and task it came from, so
``goatclaw runs diff`` can put the two side by side.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from goatclaw.engine.state import RunResult
from goatclaw.errors import GoatclawError
from goatclaw.store import Store

__all__ = ["afork", "downstream", "stored_answers"]

_DONE = ("succeeded", "cached", "skipped")


async def afork(store: str | os.PathLike[str], run: str, task: str, *, vars: Mapping[str, Any] | None = None,
                model: str | None = None, edit: str | os.PathLike[str] | None = None, bus: Any = None,
                registry: Any = None) -> RunResult:
    """Fork stored run ``run`` at ``task``: a new run that re-runs ``task`` and what follows it (see the module).

    Raises :class:`GoatclawError` when the run or its pipeline file is gone, ``task`` is not a
    task of the pipeline, or a task before it did not finish well in the stored run.
    """
    from goatclaw.api import append_run_events, arun, load

    row, done, answers = _stored(store, run)
    file = Path(edit) if edit is not None else Path(row.file) if row.file else None
    if file is None or not file.is_file():
        raise GoatclawError(f"the pipeline file of run {row.id} ({file}) is gone: pass --edit FILE to fork it")
    pipeline = load(file, registry=registry)
    if task not in pipeline.tasks:
        raise GoatclawError(f"--from: the pipeline '{pipeline.name}' has no task '{task}' "
                            f"(it has: {', '.join(pipeline.tasks)})")
    again = downstream(pipeline, task)
    _check_before(pipeline, task, done, row.id)
    if model:
        pipeline = _with_model(pipeline, again, model)
    result = await arun(pipeline, vars={**row.vars, **(vars or {})}, store=store, seed_from=row.id,
                        seed_only=[t for t in pipeline.tasks if t not in again], answers=answers, bus=bus,
                        registry=registry)
    note = {"from_run": row.id, "from_task": task, "rerun": sorted(again), "vars": dict(vars or {}),
            "model": model, "file": str(file), "stored_answers": len(answers)}
    append_run_events(store, result.run_id, [(time.time(), "run.forked", None, note)])
    return result


def _stored(store: str | os.PathLike[str], ref: str) -> tuple[Any, set[str], dict[str, dict[str, Any]]]:
    """The run's row, the tasks that finished well, and its LLM answers by request key."""
    if not Path(store).is_file():
        raise GoatclawError(f"no store at {store}")
    with Store.open(store) as db:
        row = db.run(ref)
        if row is None:
            raise GoatclawError(f"no run '{ref}' in {store}")
        done = {t.task_id for t in db.tasks(row.id) if t.status in _DONE}
        answers = stored_answers(db.events(row.id))
    return row, done, answers


def stored_answers(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Request key -> answer, from a run's ``llm.call`` events (the first answer of each key)."""
    found: dict[str, dict[str, Any]] = {}
    for e in events:
        data = e.get("data") or {}
        answer = data.get("answer")
        if e["topic"] == "llm.call" and isinstance(data.get("key"), str) and isinstance(answer, dict) \
                and "text" in answer:
            found.setdefault(data["key"], answer)
    return found


def downstream(pipeline: Any, task: str) -> set[str]:
    """``task`` and every task that needs it, directly or not."""
    from goatclaw.api import plan

    dependents = plan(pipeline).dependents
    found, todo = {task}, [task]
    while todo:
        for nxt in dependents.get(todo.pop(), ()):
            if nxt not in found:
                found.add(nxt)
                todo.append(nxt)
    return found


def _upstream(pipeline: Any, task: str) -> set[str]:
    from goatclaw.api import plan

    needs = plan(pipeline).needs
    found: set[str] = set()
    todo = [task]
    while todo:
        for before in needs.get(todo.pop(), ()):
            if before not in found:
                found.add(before)
                todo.append(before)
    return found


def _check_before(pipeline: Any, task: str, done: set[str], run_id: str) -> None:
    """Every task before ``task`` must have finished well in the stored run: the fork takes its output."""
    missing = sorted(_upstream(pipeline, task) - done)
    if missing:
        raise GoatclawError(f"cannot fork run {run_id} at '{task}': {', '.join(missing)} before it did not succeed "
                            "in that run, so there is no output to take (resume the run instead)")


def _with_model(pipeline: Any, tasks: set[str], model: str) -> Any:
    """``pipeline`` with ``model`` as the model of its ``llm`` and ``agent`` tasks among ``tasks``."""
    changed = {tid: dataclasses.replace(t, with_={**t.with_, "model": model})
               if tid in tasks and t.uses in ("llm", "agent") else t for tid, t in pipeline.tasks.items()}
    return dataclasses.replace(pipeline, tasks=changed, memo={})
