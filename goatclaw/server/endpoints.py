"""The JSON API's routes: projects, pipelines, runs and their events, login; health, metrics, the document.

Every route finds the shared :class:`~goatclaw.server.app.Server` at
``request.app.state.goatclaw`` and checks its principal with
:func:`~goatclaw.server.auth.require` before anything else. Task outputs, errors and events
come from pipeline runs (files, programs, models, the web): the answers that carry them say
``"untrusted": true``; secrets declared by the pipelines were masked before they were stored.

A route that changes something writes its audit row (who, what) before doing it, and
answers 503 when the row cannot be written: nothing changes unrecorded.
"""

from __future__ import annotations

import json
import time
from typing import Any

import anyio.to_thread
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute

import goatclaw
from goatclaw.server import decisions, folder, openapi, requests, streams, triggers
from goatclaw.server.auth import SESSION_COOKIE, principal_of, require
from goatclaw.server.guard import AUDITED_KEY, CLIENT_KEY, FINDING_KEY, HTTPS_KEY
from goatclaw.server.requests import server_of
from goatclaw.server.routing import Operation, Param, route
from goatclaw.server.runs import Job

__all__ = ["routes", "server_of"]



# -- open routes ------------------------------------------------------------------------------------


async def health(request: Request) -> Response:
    """Liveness and the queue's state (no authentication: for load balancers and systemd)."""
    server = server_of(request)
    status = "stopping" if server.queue.stopping else "ok"
    return JSONResponse({"status": status, "version": goatclaw.__version__,
                         "runs": {"running": server.queue.running, "queued": server.queue.queued},
                         "uptime": round(time.time() - server.started_at, 3)}, status_code=503 if
                        server.queue.stopping else 200)


async def openapi_document(request: Request) -> Response:
    """The OpenAPI 3.1 document of every route of this app."""
    return JSONResponse(openapi.document(request.app.routes))


async def metrics(request: Request) -> Response:
    """Prometheus text: requests, latencies, refusals, runs, blocked clients."""
    require(request, "read")
    from goatclaw.server.metrics import exposition

    return PlainTextResponse(exposition(server_of(request)),
                             media_type="text/plain; version=0.0.4; charset=utf-8")


# -- login ------------------------------------------------------------------------------------------


async def _login_fields(request: Request) -> dict[str, Any]:
    """The login's fields: a JSON object, or an HTML form (``application/x-www-form-urlencoded``)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return await requests.json_body(request)
    from urllib.parse import parse_qsl

    try:
        return dict(parse_qsl((await request.body()).decode("utf-8"), strict_parsing=False))
    except UnicodeDecodeError:
        raise HTTPException(400, "the form is not UTF-8") from None


def _local_path(value: Any) -> str | None:
    """A ``next`` to go to after a form login: a path of this server only (never another site)."""
    if isinstance(value, str) and value.startswith("/") and not value.startswith(("//", "/\\")) and len(value) < 2048:
        return value
    return None


async def login(request: Request) -> Response:
    """A browser login: user name, password and TOTP code; a session cookie.

    From an HTML form with a ``next`` field (a path of this server), a success is a 303 to it.
    """
    server = server_of(request)
    data = await _login_fields(request)
    name, password, code = (requests.field(data, k, str, "") for k in ("username", "password", "code"))
    if not name or not password or not code:
        raise HTTPException(422, "give 'username', 'password' and 'code' (the TOTP code)")
    client = request.scope.get(CLIENT_KEY)
    done = await anyio.to_thread.run_sync(server.auth.login, name, password, code, client)
    if done is None:
        request.scope[FINDING_KEY] = "failed_login"
        await requests.audited(request, "auth.login_failed", {"user": name[:64]})
        raise HTTPException(401, "wrong user name, password or code")
    await requests.audited(request, "auth.login", {"user": name})
    target = _local_path(data.get("next"))
    answer: Response = RedirectResponse(target, status_code=303) if target else JSONResponse(
        {"principal": done.principal.to_dict(), "csrf_token": done.csrf, "expires_at": done.expires_at})
    answer.set_cookie(SESSION_COOKIE, done.cookie, max_age=max(1, int(done.expires_at - server.clock())),
                      httponly=True, samesite="strict", secure=bool(request.scope.get(HTTPS_KEY)), path="/")
    return answer


async def logout(request: Request) -> Response:
    """End the browser session of the request (a token is revoked with ``goatclaw tokens revoke``)."""
    who = require(request, "read")
    await requests.audited(request, "auth.logout", {"user": who.name})
    await anyio.to_thread.run_sync(server_of(request).auth.logout, who)
    answer = Response(status_code=204)
    answer.delete_cookie(SESSION_COOKIE, path="/")
    return answer


async def me(request: Request) -> Response:
    """Who the request comes from: kind, name, scopes, projects (and the session's CSRF token)."""
    who = require(request, "read")
    return JSONResponse({**who.to_dict(), "csrf_token": who.csrf})


# -- projects and pipelines -------------------------------------------------------------------------


async def projects(request: Request) -> Response:
    """The projects this principal may use."""
    who = require(request, "read")
    rows = [{"name": p.name, "pipelines": f"/api/projects/{p.name}/pipelines", "runs": f"/api/projects/{p.name}/runs"}
            for p in server_of(request).projects.values() if who.in_project(p.name)]
    return JSONResponse({"projects": rows})


async def pipelines(request: Request) -> Response:
    """The pipeline files of the project: path, name, description, and their vars as a JSON Schema."""
    served = requests.served(request, "read")
    rows = await anyio.to_thread.run_sync(folder.pipeline_rows, served)
    return JSONResponse({"project": served.name, "pipelines": rows})


async def pipeline(request: Request) -> Response:
    """One pipeline, checked: its vars' schema, tasks, plan levels, permissions, or its problems (422)."""
    served = requests.served(request, "read")
    file = triggers.inside(served, request.path_params["path"])
    loaded = await triggers.load_pipeline(server_of(request), served, file)
    return JSONResponse(await anyio.to_thread.run_sync(folder.pipeline_detail, served, loaded))


# -- runs -------------------------------------------------------------------------------------------


async def trigger(request: Request) -> Response:
    """Start a run of a pipeline of the project (202 with its id), or plan it (``dry_run``)."""
    served = requests.served(request, "run")
    data = await requests.json_body(request)
    requests.only_keys(data, "pipeline", "vars", "only", "dry_run")
    path = requests.field(data, "pipeline", str)
    if not path:
        raise HTTPException(422, "give 'pipeline': the pipeline file's path inside the project")
    variables = requests.field(data, "vars", dict, {})
    only = requests.field(data, "only", list, [])
    if not all(isinstance(t, str) for t in only):
        raise HTTPException(422, "'only' must be a list of task ids")
    if requests.field(data, "dry_run", bool, False):
        loaded = await triggers.load_pipeline(server_of(request), served, triggers.inside(served, path))
        triggers.check_names(loaded, variables, only, served)
        compiled = goatclaw.plan(loaded)
        return JSONResponse({"dry_run": True, "pipeline": loaded.name, "path": served.shown(loaded.file),
                             "levels": [list(level) for level in compiled.levels]})
    job = await triggers.trigger(server_of(request), served, path, vars=variables, only=only,
                                 who=principal_of(request).label, client=request.scope.get(CLIENT_KEY))
    request.scope[AUDITED_KEY] = True
    return _queued(request, served, job)


def _queued(request: Request, served: Any, job: Job) -> Response:
    base = f"/api/projects/{served.name}/runs/{job.run_id}"
    return JSONResponse({**job.to_dict(), "links": {"run": base, "events": base + "/events",
                                                    "cancel": base + "/cancel"}},
                        status_code=202, headers={"Location": base})


async def runs(request: Request) -> Response:
    """The project's latest runs, newest first, with those still waiting in this server's queue."""
    served = requests.served(request, "read")
    limit = requests.int_param(request, "limit", 20, 1, 1000)
    name = request.query_params.get("pipeline")
    stored = await server_of(request).stores.call(served.store, lambda db: db.runs(limit=limit, pipeline=name))
    queue = server_of(request).queue
    waiting = [j.to_dict() for j in queue.jobs.values() if j.project == served.name and j.state == "queued"
               and (name is None or j.pipeline.name == name)]
    rows = [{"id": r.id, "pipeline": r.pipeline, "path": served.shown(r.file), "status": r.status,
             "started_at": r.started_at, "finished_at": r.finished_at, "duration": r.duration, "error": r.error,
             "interrupted": r.interrupted} for r in stored]
    return JSONResponse({"project": served.name, "queued": waiting, "runs": rows, "untrusted": True})


async def run(request: Request) -> Response:
    """One run: status, each task's result, the failed attempts, the LLM calls' cost; or its place in the queue."""
    served = requests.served(request, "read")
    ref = requests.run_ref(request)
    job = server_of(request).queue.job(ref)
    row = await requests.stored_run(request, served, ref)
    if row is None:
        if job is None or job.project != served.name:
            raise HTTPException(404, f"no run '{ref}' in the project '{served.name}'")
        return JSONResponse({"id": job.run_id, "status": job.status or "queued", "error": job.error, "tasks": [],
                             "server": job.to_dict()})
    job = server_of(request).queue.job(row.id)
    return JSONResponse(await server_of(request).stores.call(served.store, lambda db: _run_data(db, row, served, job)))


def _run_data(db: Any, row: Any, served: Any, job: Job | None) -> dict[str, Any]:
    from goatclaw.history import llm_costs

    tasks = [{"id": t.task_id, "status": t.status, "attempts": t.attempts, "started_at": t.started_at,
              "finished_at": t.finished_at, "plugin": t.plugin, "output": t.output, "error": t.error,
              "error_class": t.error_class} for t in db.tasks(row.id)]
    return json.loads(json.dumps({
        "id": row.id, "pipeline": row.pipeline, "path": served.shown(row.file), "status": row.status,
        "started_at": row.started_at, "finished_at": row.finished_at, "duration": row.duration,
        "error": row.error, "vars": row.vars, "summary": row.summary, "interrupted": row.interrupted,
        "tasks": tasks, "attempts": db.attempts(row.id), "llm": llm_costs(db.events(row.id)),
        "server": job.to_dict() if job is not None and job.project == served.name else None,
        "untrusted": True}, default=str))


async def task(request: Request) -> Response:
    """One task of a run: its result, every attempt, and its log lines."""
    served = requests.served(request, "read")
    row = await requests.stored_run(request, served, requests.run_ref(request))
    if row is None:
        raise HTTPException(404, f"no run '{request.path_params['run_id']}' in the project '{served.name}'")
    task_id = request.path_params["task_id"]

    def read(db: Any) -> dict[str, Any] | None:
        found = [t for t in db.tasks(row.id) if t.task_id == task_id]
        if not found:
            return None
        t = found[0]
        return json.loads(json.dumps({
            "run_id": row.id, "id": t.task_id, "status": t.status, "attempts": t.attempts, "plugin": t.plugin,
            "started_at": t.started_at, "finished_at": t.finished_at, "output": t.output, "error": t.error,
            "error_class": t.error_class, "attempt_rows": db.attempts(row.id, task_id),
            "logs": db.logs(row.id, task_id), "untrusted": True}, default=str))

    data = await server_of(request).stores.call(served.store, read)
    if data is None:
        raise HTTPException(404, f"no task '{task_id}' in run {row.id}")
    return JSONResponse(data)


async def events(request: Request) -> Response:
    """A run's events as Server-Sent Events: the stored ones, then live ones until the run ends.

    Each event's ``id`` is its sequence number: a client that reconnects with ``Last-Event-ID``
    (or ``?after=N``) gets the events after it, none twice, none lost. The stream ends with an
    ``end`` event carrying the run's status.
    """
    served = requests.served(request, "read")
    ref = requests.run_ref(request)
    server = server_of(request)
    job = server.queue.job(ref)
    row = await requests.stored_run(request, served, ref)
    if row is None and (job is None or job.project != served.name):
        raise HTTPException(404, f"no run '{ref}' in the project '{served.name}'")
    run_id = row.id if row is not None else ref
    stream = streams.event_stream(server, served, run_id, streams.after_of(request))
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def cancel(request: Request) -> Response:
    """Cancel a run this server queued or is running (the engine records it ``cancelled``: resumable)."""
    served = requests.served(request, "run")
    ref = requests.run_ref(request)
    queue = server_of(request).queue
    row = await requests.stored_run(request, served, ref)
    run_id = row.id if row is not None else ref
    job = queue.job(run_id)
    if job is None or job.project != served.name or job.state == "done":
        if row is None:
            raise HTTPException(404, f"no run '{ref}' in the project '{served.name}'")
        raise HTTPException(409, f"run {run_id} is not running in this server (it is {row.status})")
    await requests.audited(request, "run.cancelled", {"was": job.state}, run_id=run_id)
    was = queue.cancel(run_id)
    return JSONResponse({"run_id": run_id, "was": was, "status": "cancelling" if was == "running" else "cancelled"},
                        status_code=202)


async def resume(request: Request) -> Response:
    """Resume a stored run that did not finish, under its own id (what succeeded does not run again)."""
    served = requests.served(request, "run")
    row = await requests.stored_run(request, served, requests.run_ref(request))
    if row is None:
        raise HTTPException(404, f"no run '{request.path_params['run_id']}' in the project '{served.name}'")
    if row.status == "succeeded":
        raise HTTPException(409, f"run {row.id} succeeded: there is nothing to resume")
    if row.status == "running" and not row.interrupted:
        raise HTTPException(409, f"run {row.id} is running (in this server or another process on this store)")
    job = await triggers.resume(server_of(request), served, row, who=principal_of(request).label,
                                client=request.scope.get(CLIENT_KEY))
    request.scope[AUDITED_KEY] = True
    return _queued(request, served, job)

# -- the table ---------------------------------------------------------------------------------------

_P = "/api/projects/{project}"
_LIMIT = Param("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 20}, "How many runs.")
_ERR = {"$ref": "#/components/schemas/Error"}
_DENIED = {401: ("No principal (no token or session)", _ERR), 403: ("Not allowed (scope or project)", _ERR)}
_MISSING = {404: ("No such project, run or file", _ERR)}
_TRIGGER_BODY = {"$ref": "#/components/schemas/Trigger"}


def routes() -> list[BaseRoute]:
    """The JSON API's routes, in the order Starlette matches them."""
    return [
        route("/health", health, ["GET"], Operation("Liveness and the run queue's state", tag="server",
                                                   responses={200: ("Serving", None), 503: ("Stopping", None)})),
        route("/metrics", metrics, ["GET"], Operation("Prometheus metrics (text format 0.0.4)", "read", tag="server",
                                                      content_type="text/plain",
                                                      responses={200: ("The metrics", None), **_DENIED})),
        route("/openapi.json", openapi_document, ["GET"], Operation("This document", tag="server",
                                                                    responses={200: ("OpenAPI 3.1", None)})),
        route("/auth/login", login, ["POST"], Operation(
            "Log in with a password and a TOTP code; sets the session cookie", tag="auth",
            body={"$ref": "#/components/schemas/Login"},
            responses={200: ("Logged in", {"$ref": "#/components/schemas/Session"}), 401: ("Wrong credentials", _ERR),
                       422: ("A field is missing", _ERR)})),
        route("/auth/logout", logout, ["POST"], Operation("End the session", "read", tag="auth",
                                                          responses={204: ("Logged out", None), **_DENIED})),
        route("/auth/me", me, ["GET"], Operation("Who is asking", "read", tag="auth", responses={
            200: ("The principal", {"$ref": "#/components/schemas/Principal"}), **_DENIED})),
        route("/api/projects", projects, ["GET"], Operation("The projects this principal may use", "read",
                                                            tag="projects", responses={200: ("Projects", None),
                                                                                       **_DENIED})),
        route(f"{_P}/pipelines", pipelines, ["GET"], Operation(
            "The project's pipelines and their vars' schemas", "read", tag="pipelines",
            responses={200: ("Pipelines", None), **_DENIED, **_MISSING})),
        route(f"{_P}/pipelines/{{path:path}}", pipeline, ["GET"], Operation(
            "One pipeline: vars' schema, tasks, plan levels, permissions", "read", tag="pipelines",
            responses={200: ("The pipeline", None), 422: ("It is invalid", _ERR), **_DENIED, **_MISSING})),
        route(f"{_P}/runs", runs, ["GET"], Operation("The latest runs", "read", params=[
            _LIMIT, Param("pipeline", {"type": "string"}, "Only this pipeline's runs (its name).")],
            responses={200: ("Runs", None), **_DENIED, **_MISSING})),
        route(f"{_P}/runs", trigger, ["POST"], Operation(
            "Trigger a run (or plan it with dry_run)", "run", body=_TRIGGER_BODY,
            responses={202: ("Queued", {"$ref": "#/components/schemas/Queued"}), 200: ("The plan (dry_run)", None),
                       422: ("Invalid pipeline, vars or tasks", _ERR), 429: ("The queue is full", _ERR),
                       503: ("Stopping, or the audit row could not be written", _ERR), **_DENIED, **_MISSING}),
            name="trigger"),
        route(f"{_P}/runs/{{run_id}}", run, ["GET"], Operation(
            "One run: tasks, attempts, LLM costs", "read",
            responses={200: ("The run", {"$ref": "#/components/schemas/Run"}), **_DENIED, **_MISSING})),
        route(f"{_P}/runs/{{run_id}}/tasks/{{task_id}}", task, ["GET"], Operation(
            "One task of a run: result, attempts, logs", "read",
            responses={200: ("The task", None), **_DENIED, **_MISSING})),
        route(f"{_P}/runs/{{run_id}}/events", events, ["GET"], Operation(
            "The run's events as Server-Sent Events (stored, then live; Last-Event-ID resumes)", "read",
            content_type="text/event-stream",
            params=[Param("after", {"type": "integer", "minimum": 0}, "Only events after this sequence number."),
                    Param("Last-Event-ID", {"type": "string"}, "As after (what EventSource sends).", where="header")],
            responses={200: ("The event stream", None), **_DENIED, **_MISSING})),
        route(f"{_P}/runs/{{run_id}}/cancel", cancel, ["POST"], Operation(
            "Cancel a queued or running run (it stays resumable)", "run",
            responses={202: ("Cancelling", None), 409: ("Not running here", _ERR), **_DENIED, **_MISSING})),
        route(f"{_P}/runs/{{run_id}}/resume", resume, ["POST"], Operation(
            "Resume a run that did not finish, under its own id", "run",
            responses={202: ("Queued", {"$ref": "#/components/schemas/Queued"}), 409: ("Nothing to resume", _ERR),
                       429: ("The queue is full", _ERR), **_DENIED, **_MISSING})),
        *decisions.routes(),
    ]
