"""Starting and resuming runs on a hosted project, for every way a run can be asked for.

The JSON API's ``POST …/runs`` and ``…/resume`` call these, and so can the server's other
rooms (a schedule firing, a webhook arriving): the pipeline is loaded and checked (cached
by its file's mtime and size), the vars and ``only`` are checked against it, the queue must
have room, the audit row is written (who asked, from where), and only then is the job
queued. Each refusal is a :class:`~goatclaw.server.runs.Refused` carrying its HTTP status;
the app answers it as JSON (``{"error": …}``, with ``Retry-After`` when there is one).

::

    from goatclaw.server.triggers import trigger

    job = await trigger(server, server.project("demo"), "pipelines/nightly.yaml", vars={"day": "mon"},
                        who="schedule:nightly", action="schedule.fired")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread

import goatclaw
from goatclaw.server.runs import Job, Refused, new_run_id

__all__ = ["check_names", "inside", "load_pipeline", "resume", "trigger"]


def inside(served: Any, path: str) -> Path:
    """``path`` (relative to the project folder) resolved; :class:`Refused` 404 when it leaves the folder."""
    candidate = (served.root / path).resolve()
    if not candidate.is_relative_to(served.root) or not candidate.is_file():
        raise Refused(f"no file '{path}' in the project '{served.name}'", 404)
    return candidate


async def load_pipeline(server: Any, served: Any, file: Path) -> Any:
    """The checked pipeline (422 with its located problems when invalid); loaded again when the file changed."""
    stat = file.stat()
    stamp = (stat.st_mtime_ns, stat.st_size)
    found = server.pipelines.get(file)
    if found is not None and found[0] == stamp:
        return found[1]
    try:
        loaded = await anyio.to_thread.run_sync(lambda: goatclaw.load(file, project=served.project))
    except goatclaw.SpecError as exc:
        problems = [str(p).replace(str(served.root) + os.sep, "") for p in exc.problems]
        raise Refused("the pipeline is invalid: " + "; ".join(problems), 422) from None
    server.pipelines[file] = (stamp, loaded)
    return loaded


def check_names(loaded: Any, variables: Mapping[str, Any], only: Sequence[str], served: Any) -> None:
    """Vars the pipeline does not declare and tasks it does not have: :class:`Refused` 422 (as ``apply``)."""
    undeclared = [k for k in variables if k not in loaded.vars]
    if undeclared:
        raise Refused(f"{', '.join(map(repr, undeclared))} not declared in {served.shown(loaded.file)} "
                      f"(its vars: {', '.join(loaded.vars) or 'none'})", 422)
    unknown = [t for t in only if t not in loaded.tasks]
    if unknown:
        raise Refused(f"no task {', '.join(map(repr, unknown))} in {served.shown(loaded.file)}", 422)


async def trigger(server: Any, served: Any, path: str, *, vars: Mapping[str, Any] | None = None,
                  only: Sequence[str] = (), who: str, client: str | None = None, action: str = "run.triggered",
                  detail: Mapping[str, Any] | None = None, source: str = "api") -> Job:
    """Queue a new run of the pipeline at ``path`` of ``served`` for ``who`` (audited as ``action``).

    ``source`` is what asked (``api``, ``schedule``, ``webhook``): the run's ``run.started`` event says it.
    """
    file = inside(served, path)
    loaded = await load_pipeline(server, served, file)
    variables = dict(vars or {})
    check_names(loaded, variables, only, served)
    server.queue.check_room()
    run_id = new_run_id()
    await _audit(server, served, action, run_id, {
        "principal": who, "client": client, "pipeline": loaded.name, "path": served.shown(file),
        "vars": sorted(variables), "only": list(only), **(detail or {})})
    return server.queue.submit(Job(run_id, served.name, loaded, served.store, vars=variables, only=tuple(only),
                                   principal=who, trigger=source))


async def resume(server: Any, served: Any, row: Any, *, who: str, client: str | None = None,
                 action: str = "run.resumed", detail: Mapping[str, Any] | None = None) -> Job:
    """Queue stored run ``row`` to go on under its own id (audited as ``action``)."""
    if not row.file:
        raise Refused(f"run {row.id} has no pipeline file to resume from")
    file = inside(served, served.shown(row.file) or "")
    loaded = await load_pipeline(server, served, file)
    job = server.queue.job(row.id)
    if job is not None and job.state != "done":
        raise Refused(f"run {row.id} is {job.state} in this server already")
    server.queue.check_room()
    await _audit(server, served, action, row.id, {"principal": who, "client": client, "pipeline": loaded.name,
                                                  "path": served.shown(file), **(detail or {})})
    server.queue.jobs.pop(row.id, None)  # a finished job of this id: the resume replaces it
    return server.queue.submit(Job(row.id, served.name, loaded, served.store, resume=True, principal=who))


async def _audit(server: Any, served: Any, action: str, run_id: str, detail: dict[str, Any]) -> None:
    try:
        await server.stores.audit(served.store, action, detail, run_id=run_id)
    except goatclaw.GoatclawError as exc:
        raise Refused(f"the run was not started: its audit row could not be written ({exc})", 503) from None
