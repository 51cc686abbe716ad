"""The dashboard's routes: each page as HTML and as its ``.json`` twin, the run event stream, the forms' POSTs.

:func:`ui_routes` returns a plain list of Starlette routes; ``goatclaw ui`` serves them alone
and ``goatclaw serve`` mounts them (``Mount("/ui", routes=ui_routes(...))``: every link is
made from the mount's ``root_path``). A page's data is one function of :mod:`queries` (the
twin is that data as JSON); the HTML is a template of ``templates/`` over the same data.
Every POST needs a signed-in principal with the right scope and the session's CSRF token.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from goatclaw.errors import GoatclawError
from goatclaw.server.ui import forms, queries
from goatclaw.server.ui.access import COOKIE, Auth, LocalAuth, Principal, csrf_ok
from goatclaw.server.ui.actions import Actions, LocalActions
from goatclaw.server.ui.graphview import graph_view
from goatclaw.server.ui.render import render
from goatclaw.store import Store

__all__ = ["Dashboard", "ui_routes"]

STATIC = Path(__file__).parent / "static"
#: Content-Security-Policy of every page: nothing from anywhere but the dashboard itself, no inline script.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
NAV = (("runs", "Runs"), ("approvals", "Approvals"), ("pipelines", "Pipelines"), ("dead-letters", "Dead letters"),
       ("breakers", "Breakers"), ("memory", "Memory"), ("costs", "Costs"), ("audit", "Audit"))
#: Topics the run page's live view follows (task states and the run's end); others stay in the run's .json.
LIVE_TOPICS = ("run.", "task.started", "task.succeeded", "task.failed", "task.skipped", "task.cached",
               "task.cancelled", "task.upstream_failed", "task.retrying", "task.waiting", "approval.")


def ui_routes(store: str | os.PathLike[str], *, auth: Auth, actions: Actions | None = None,
              poll: float = 0.25, project: str | os.PathLike[str] | None = None) -> list[BaseRoute]:
    """The dashboard's routes over the store at ``store``.

    ``auth`` says who a request is (:class:`~goatclaw.server.ui.access.LocalAuth` for
    ``goatclaw ui``, the server's for ``goatclaw serve``); ``actions`` does what the buttons
    ask (default: :class:`~goatclaw.server.ui.actions.LocalActions`, in this process);
    ``poll`` is how often the event stream looks for new events; ``project`` is the project
    folder whose pipelines' schedules the pipelines page lists (default: the current project,
    when its store is ``store``).
    """
    return Dashboard(Path(store), auth, actions or LocalActions(store), poll=poll,
                     project=Path(project) if project is not None else None).routes()


class Dashboard:
    """The pages over one store: views (data → template or JSON), the event stream and the actions."""

    def __init__(self, store: Path, auth: Auth, actions: Actions, *, poll: float = 0.25,
                 project: Path | None = None) -> None:
        self.store = store
        self.project = project
        self.auth = auth
        self.actions = actions
        self.poll = poll
        self._plans: dict[tuple[str, float, int], dict[str, Any] | None] = {}
        #: Answers that depend only on what a cheap key says has not changed (see :meth:`_memo`).
        self._memos: dict[str, tuple[Any, Any]] = {}

    def _memo(self, name: str, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()``, or the answer kept for ``name`` while ``key`` (read from the store) is the same."""
        kept = self._memos.get(name)
        if kept is not None and kept[0] == key:
            return kept[1]
        value = compute()
        self._memos[name] = (key, value)
        return value

    def routes(self) -> list[BaseRoute]:
        """Every route: pages and twins (the ``.json`` one first, so it wins), the stream, the POSTs, the assets."""
        pages: list[tuple[str, str, Callable[[Request, Principal], dict[str, Any]]]] = [
            ("/runs", "runs.html", self.runs_data),
            ("/runs/{run_id}", "run.html", self.run_data),
            ("/approvals", "approvals.html", self.approvals_data),
            ("/pipelines", "pipelines.html", self.pipelines_data),
            ("/pipelines/{name}", "pipeline.html", self.pipeline_data),
            ("/dead-letters", "dead_letters.html", self.dead_letters_data),
            ("/breakers", "breakers.html", self.breakers_data),
            ("/memory", "memory.html", self.memory_data),
            ("/costs", "costs.html", self.costs_data),
            ("/audit", "audit.html", self.audit_data),
        ]
        routes: list[BaseRoute] = [Route("/", self.home, name="ui_home"), Route("/login", self.login)]
        for path, template, data in pages:
            routes.append(Route(path + ".json", self.view(template, data, twin=True)))
            routes.append(Route(path, self.view(template, data, twin=False)))
        routes += [
            Route("/runs/{run_id}/events", self.events),
            Route("/runs/{run_id}/rerun", self.post("run", self.do_rerun), methods=["POST"]),
            Route("/runs/{run_id}/resume", self.post("run", self.do_resume), methods=["POST"]),
            Route("/runs/{run_id}/cancel", self.post("run", self.do_cancel), methods=["POST"]),
            Route("/approvals/{run_id}/{task_id}", self.post("approve", self.do_decide), methods=["POST"]),
            Route("/dead-letters/{letter_id:int}/replay", self.post("run", self.do_replay), methods=["POST"]),
            Route("/breakers/reset", self.post("admin", self.do_reset), methods=["POST"]),
            Mount("/static", app=_Assets(directory=STATIC), name="ui_static"),
        ]
        return routes

    # -- who is asking -------------------------------------------------------------------

    def _who(self, request: Request) -> Principal | Response:
        """The principal, or the response to send instead: the one-time token exchanged, a login, a 401."""
        token = request.query_params.get("token")
        if token is not None and isinstance(self.auth, LocalAuth):
            sid = self.auth.exchange(token)
            if sid is None:
                return _plain("this dashboard link was used already or is wrong: start `goatclaw ui` again", 403)
            rest = {k: v for k, v in request.query_params.items() if k != "token"}
            target = request.url.path + ("?" + urlencode(rest) if rest else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(COOKIE, sid, httponly=True, samesite="strict", path="/",
                                max_age=int(self.auth.ttl))
            return response
        who = self.auth.principal(request)
        if who is not None and not who.can("read"):
            return _plain(f"{who.name} may not see this dashboard (no scope for this project)", 403)
        if who is not None:
            return who
        login = self.auth.login_url(request)
        if login is not None and "application/json" not in request.headers.get("accept", ""):
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"{login}?{urlencode({'next': here})}", status_code=303)
        return _plain("sign in first (goatclaw ui prints a link with a one-time token)", 401)

    async def login(self, request: Request) -> Response:
        """``/login``: the server's sign-in form (user, password, TOTP code); none for ``goatclaw ui``."""
        endpoint = getattr(self.auth, "login_endpoint", None)
        if endpoint is None:
            return _plain("goatclaw ui has no login: open the link with the one-time token it printed", 404)
        target = _back(request, request.query_params.get("next"))
        html = await run_in_threadpool(render, "login.html", {
            "base": _base(request), "endpoint": endpoint, "next": target, "version": _version(),
            "error": request.query_params.get("err")})
        return _html(html)

    # -- pages ---------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        """``/``: the runs list."""
        who = self._who(request)
        if isinstance(who, Response):
            return who
        return RedirectResponse(_base(request) + "/runs", status_code=303)

    def view(self, template: str, data: Callable[[Request, Principal], dict[str, Any]], *,
             twin: bool) -> Callable[[Request], Awaitable[Response]]:
        """A page endpoint: its data as JSON (the twin), or rendered by ``template`` (an htmx request gets the part)."""
        async def endpoint(request: Request) -> Response:
            who = self._who(request)
            if isinstance(who, Response):
                return who
            started = time.perf_counter()
            try:
                found = await run_in_threadpool(data, request, who)
            except LookupError as exc:
                return _plain(str(exc.args[0]), 404) if not twin else _json({"error": str(exc.args[0])}, 404)
            except GoatclawError as exc:
                return _plain(str(exc), 400) if not twin else _json({"error": str(exc)}, 400)
            if twin:
                return _json({**found, "principal": who.to_dict()})
            part = request.headers.get("hx-target") if request.headers.get("hx-request") else None
            html = await run_in_threadpool(render, template, self._context(request, who, found, part, started))
            return _html(html)
        return endpoint

    def _context(self, request: Request, who: Principal, data: dict[str, Any], part: str | None,
                 started: float) -> dict[str, Any]:
        return {**data, "base": _base(request), "who": who, "version": _version(),
                "csrf": self.auth.csrf_token(request),
                "can": who.can, "nav": NAV, "path": request.url.path, "part": part,
                "message": request.query_params.get("msg"), "error": request.query_params.get("err"),
                "query": dict(request.query_params), "took_ms": lambda: (time.perf_counter() - started) * 1000}

    def _db(self) -> Store:
        if not self.store.exists():
            raise GoatclawError(f"no store at {self.store}: run a pipeline first")
        return Store.open(self.store)

    def runs_data(self, request: Request, who: Principal) -> dict[str, Any]:
        """The runs list (filters and paging from the query string)."""
        f = queries.RunFilter.of(request.query_params)
        with self._db() as db:
            page = queries.runs_page(db, f)
        return {**page, "links": {"prev": f.query(page=f.page - 1) if f.page > 1 else None,
                                  "next": f.query(page=f.page + 1) if f.page < page["pages"] else None},
                "live": any(r["status"] == "running" for r in page["runs"])}

    def run_data(self, request: Request, who: Principal) -> dict[str, Any]:
        """One run: tasks, graph, timeline, LLM calls, approvals, and what memory knows of its failures."""
        ref = request.path_params["run_id"]
        with self._db() as db:
            row = db.run(ref)
            if row is None:
                raise LookupError(f"no run '{ref}'")
            plan = self._plan(row.file)
            detail = queries.run_detail(db, row, plan=plan)
        pressing = [t for t in detail["tasks"] if t["status"] in ("failed", "running", "waiting")]
        detailed = {t["id"] for t in (pressing + [t for t in detail["tasks"] if t not in pressing])[:100]}
        for i, t in enumerate(detail["tasks"], 1):
            t["n"], t["detail"] = i, t["id"] in detailed
        detail["graph"] = graph_view(detail["tasks"])
        detail["timeline"] = queries.timeline(detail)
        if any(t["status"] == "failed" for t in detail["tasks"]):
            with self._db() as db:  # memory changes when a run is remembered: its failures' count and last sighting
                mark = db.db.execute("SELECT COUNT(*), MAX(last_seen) FROM memories").fetchone()
            detail["seen_before"] = self._memo(f"seen:{row.id}", tuple(mark), lambda: _seen_before(self.store, row.id))
        else:
            detail["seen_before"] = []
        detail["actions"] = _run_actions(detail["run"], self._actions(request))
        for a in detail["approvals"]:
            a["fields"] = forms.fields((a.get("evidence") or {}).get("inputs"))
        return detail

    def _plan(self, file: str | None) -> dict[str, Any] | None:
        """The plan data of a pipeline file as it is now (cached by path, mtime, size); ``None`` if it will not load."""
        if not file:
            return None
        try:
            st = os.stat(file)
        except OSError:
            return None
        key = (file, st.st_mtime, st.st_size)
        if key not in self._plans:
            self._plans[key] = _load_plan(file)
        return self._plans[key]

    def approvals_data(self, request: Request, who: Principal) -> dict[str, Any]:
        """Waiting approvals with their evidence and form fields; the latest decisions."""
        import goatclaw

        listing = getattr(goatclaw, "approvals", None)
        if listing is not None:  # the approval API: requests past their timeout become rejections first
            waiting = listing(store=self.store)
            decided = [a for a in listing(store=self.store, waiting=False) if a["decision"] is not None][-50:]
        else:
            with self._db() as db:
                waiting = queries.approvals(db)
                decided = [a for a in queries.approvals(db, waiting=False) if a["decision"] is not None][-50:]
        for a in waiting:
            a["fields"] = forms.fields((a.get("evidence") or {}).get("inputs"))
        return {"waiting": waiting, "decided": list(reversed(decided))}

    def pipelines_data(self, request: Request, who: Principal) -> dict[str, Any]:
        """The pipelines the store has runs of: runs, last run and its status, the file."""
        with self._db() as db:
            rows = db.db.execute(
                "SELECT pipeline, COUNT(*), MAX(started_at), "
                "(SELECT file FROM runs r2 WHERE r2.pipeline = r.pipeline ORDER BY started_at DESC LIMIT 1), "
                "(SELECT status FROM runs r2 WHERE r2.pipeline = r.pipeline ORDER BY started_at DESC LIMIT 1) "
                "FROM runs r GROUP BY pipeline ORDER BY pipeline").fetchall()
        schedules = self._memo("schedules", _schedules_key(self.store, self.project),
                               lambda: _schedules(self.store, self.project))
        return {"pipelines": [{"name": p, "runs": n, "last_started_at": last, "file": file, "last_status": status}
                              for p, n, last, file, status in rows], "schedules": schedules}

    def pipeline_data(self, request: Request, who: Principal) -> dict[str, Any]:
        """One pipeline: its graph from its file as it is now, and its latest runs."""
        name = request.path_params["name"]
        with self._db() as db:
            runs = [queries.run_summary(r) for r in db.runs(limit=20, pipeline=name)]
        if not runs:
            raise LookupError(f"no runs of a pipeline '{name}' in the store")
        plan = self._plan(runs[0]["file"])
        tasks = [{"id": tid, "needs": t["needs"], "status": "pending", "uses": t["uses"]}
                 for tid, t in (plan or {}).get("tasks", {}).items()]
        return {"name": name, "file": runs[0]["file"], "plan": plan, "graph": graph_view(tasks), "runs": runs,
                "tasks": tasks}

    def dead_letters_data(self, request: Request, who: Principal) -> dict[str, Any]:
        """The newest dead letters."""
        with self._db() as db:
            return {"letters": queries.dead_letters(db)}

    def breakers_data(self, request: Request, who: Principal) -> dict[str, Any]:
        """Every circuit breaker."""
        with self._db() as db:
            return {"breakers": queries.breakers(db)}

    def memory_data(self, request: Request, who: Principal) -> dict[str, Any]:
        """Memory: a search by meaning (``q``), or the most recently seen memories."""
        q = (request.query_params.get("q") or "").strip()[:500]
        kind = request.query_params.get("kind") or None
        return {"q": q, "kind": kind, **_memories(self.store, q, kind)}

    def costs_data(self, request: Request, who: Principal) -> dict[str, Any]:
        """LLM spend per day (a chart), per model and per pipeline."""
        days = queries._int(request.query_params.get("days"), 30, 1, 366)
        with self._db() as db:  # the same LLM calls in the window on the same day: the same answer
            mark = db.db.execute("SELECT COUNT(*), MAX(ts) FROM events WHERE topic = 'llm.call' AND ts >= ?",
                                 (time.time() - days * 86400,)).fetchone()
            found = dict(self._memo(f"costs:{days}", (*mark, time.strftime("%Y-%m-%d %H")),
                                    lambda: queries.costs(db, days=days)))
        found["chart"] = queries.bar_chart(found["per_day"], "day")
        return found

    def audit_data(self, request: Request, who: Principal) -> dict[str, Any]:
        """The newest rows of the audit chain and the whole chain's verify result."""
        import goatclaw

        run = request.query_params.get("run") or None
        rows = goatclaw.audit_log(self.store, run=run, limit=200)
        with self._db() as db:  # verified again when the chain's head moves (a row was added) or a run is incomplete
            mark = (db.audit_head(), tuple(db.incomplete_runs()))
        verdict = self._memo("audit", mark, lambda: goatclaw.verify_audit(self.store))
        return {"run": run, "rows": [{"seq": r.seq, "ts": r.ts, "run_id": r.run_id, "task_id": r.task_id,
                                      "action": r.action, "data": r.data, "hash": r.hash} for r in reversed(rows)],
                "verdict": {"ok": verdict.ok, "rows": verdict.rows, "text": str(verdict), "seq": verdict.seq}}

    # -- the live stream -----------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        """``/runs/{id}/events``: the run's events as Server-Sent Events, from ``after`` (or Last-Event-ID) on."""
        who = self._who(request)
        if isinstance(who, Response):
            return who
        ref = request.path_params["run_id"]
        with self._db() as db:
            row = db.run(ref)
        if row is None:
            return _plain(f"no run '{ref}'", 404)
        after = queries._int(request.headers.get("last-event-id") or request.query_params.get("after"), 0, 0, 10**12)
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(self._stream(request, row.id, after), media_type="text/event-stream",
                                 headers=headers)

    async def _stream(self, request: Request, run_id: str, after: int) -> AsyncIterator[str]:
        def read(after: int) -> tuple[list[dict[str, Any]], bool]:
            with Store.open(self.store) as db:
                found = db.run(run_id)
                ended = found is None or (found.status != "running" or found.interrupted)
                return db.events(run_id, after=after, limit=2000), ended

        yield "retry: 1000\n\n"
        while not await request.is_disconnected():
            batch, ended = await run_in_threadpool(read, after)
            for ev in batch:
                after = ev["seq"]
                if ev["topic"].startswith(LIVE_TOPICS):
                    data = {"seq": ev["seq"], "ts": ev["ts"], "topic": ev["topic"], "task": ev["task"],
                            "data": _small(ev["data"])}
                    yield f"id: {ev['seq']}\ndata: {json.dumps(data, default=str)}\n\n"
            if ended and not batch:
                yield "event: end\ndata: {}\n\n"
                return
            if not batch:
                await asyncio.sleep(self.poll)

    # -- actions -------------------------------------------------------------------------

    def _actions(self, request: Request) -> Actions:
        """The actions for this request (the server's are bound to the app serving it)."""
        bind = getattr(self.actions, "for_request", None)
        return bind(request) if bind is not None else self.actions

    def post(self, scope: str, do: Callable[[Request, Any, Principal, Actions], Awaitable[str]]
             ) -> Callable[[Request], Awaitable[Response]]:
        """A POST endpoint: signed in, allowed ``scope``, the CSRF token right; then ``do``, then back to a page."""
        async def endpoint(request: Request) -> Response:
            who = self.auth.principal(request)
            if who is None:
                return _plain("sign in first", 401)
            if not who.can(scope):
                return _plain(f"{who.name} may not do this (needs the '{scope}' scope)", 403)
            form = await request.form()
            if not csrf_ok(self.auth, request, form.get("csrf") or request.headers.get("x-csrf-token")):
                return _plain("the form's CSRF token is missing or wrong: reload the page and try again", 403)
            back = _back(request, form.get("back"))
            try:
                message = await do(request, form, who, self._actions(request))
            except GoatclawError as exc:
                return RedirectResponse(_with(back, err=str(exc)), status_code=303)
            target = _base(request) + message if message.startswith("/") else _with(back, msg=message)
            return RedirectResponse(target, status_code=303)
        return endpoint

    async def do_rerun(self, request: Request, form: Any, who: Principal, actions: Actions) -> str:
        """Re-run: to the new run's page."""
        new = await actions.rerun(request.path_params["run_id"], who=who.name)
        return f"/runs/{new}"

    async def do_resume(self, request: Request, form: Any, who: Principal, actions: Actions) -> str:
        """Resume: back to the run's page, now running again."""
        run_id = await actions.resume(request.path_params["run_id"], who=who.name)
        return f"/runs/{run_id}"

    async def do_cancel(self, request: Request, form: Any, who: Principal, actions: Actions) -> str:
        """Cancel a run this process started."""
        await actions.cancel(request.path_params["run_id"], who=who.name)
        return f"cancelled run {request.path_params['run_id']}; it can be resumed"

    async def do_decide(self, request: Request, form: Any, who: Principal, actions: Actions) -> str:
        """Approve or reject, with the typed inputs and a reason."""
        run_id, task_id = request.path_params["run_id"], request.path_params["task_id"]
        approve = form.get("decision") == "approve"
        with self._db() as db:
            found = next((a for a in db.approvals(run_id) if a["task_id"] == task_id), None)
        if found is None:
            raise GoatclawError(f"run {run_id} has no undecided approval of '{task_id}'")
        inputs = forms.typed_inputs((found.get("evidence") or {}).get("inputs"), form) if approve else None
        reason = str(form.get("reason") or "").strip() or None
        await actions.decide(run_id, task_id, approve=approve, who=who.name, inputs=inputs, reason=reason)
        return f"{'approved' if approve else 'rejected'} {task_id} of run {run_id}"

    async def do_replay(self, request: Request, form: Any, who: Principal, actions: Actions) -> str:
        """Replay a dead letter: to the new run's page."""
        new = await actions.replay(request.path_params["letter_id"], who=who.name)
        return f"/runs/{new}"

    async def do_reset(self, request: Request, form: Any, who: Principal, actions: Actions) -> str:
        """Reset one breaker (or all when no key is posted)."""
        key = str(form.get("key") or "") or None
        count = await actions.reset_breaker(key, who=who.name)
        return f"reset {count} breaker{'s' if count != 1 else ''}"


# -- helpers ----------------------------------------------------------------------------


class _Assets(StaticFiles):
    """The shipped assets, cacheable for a day.

    The vendored ones sit under versioned folders, and the pages name ours with the goatclaw
    version (``?v=``), so an upgrade is never served stale.
    """

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "public, max-age=86400"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def _version() -> str:
    import goatclaw

    return goatclaw.__version__


def _base(request: Request) -> str:
    return str(request.scope.get("root_path") or "").rstrip("/")


def _back(request: Request, sent: Any) -> str:
    """Where a form returns to: the page it names when that is one of ours (never another site)."""
    text = str(sent or "")
    base = _base(request)
    if text.startswith(base + "/") and not text.startswith("//") and "\\" not in text:
        return text
    return base + "/runs"


def _with(url: str, **params: str) -> str:
    path = url.split("?")[0]
    return path + "?" + urlencode(params)


def _security(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"  # no-referrer would make form POSTs say Origin: null
    response.headers["X-Frame-Options"] = "DENY"
    return response


def _html(text: str, status: int = 200) -> Response:
    return _security(HTMLResponse(text, status_code=status))


def _plain(text: str, status: int) -> Response:
    return _security(Response(text + "\n", status_code=status, media_type="text/plain; charset=utf-8"))


def _json(data: Any, status: int = 200) -> Response:
    body = json.dumps(data, default=str, ensure_ascii=False, allow_nan=False)
    return _security(Response(body, status_code=status, media_type="application/json"))


def _small(data: Any, limit: int = 2000) -> Any:
    """An event's data for the live view: as it is when short, else only its error and counts."""
    text = json.dumps(data, default=str)
    if len(text) <= limit:
        return data
    return {k: (v[:limit] if isinstance(v, str) else v) for k, v in (data or {}).items()
            if k in ("error", "error_class", "attempts", "duration", "counts")}


def _load_plan(file: str) -> dict[str, Any] | None:
    """The plan of ``file`` as plain data (levels, each task's needs and plugin), or ``None`` if it does not load."""
    import goatclaw
    from goatclaw.graph import plan_data

    try:
        return plan_data(goatclaw.plan(goatclaw.load(file, llm="replay")))
    except (GoatclawError, OSError, ValueError):
        return None


def _run_actions(run: Mapping[str, Any], actions: Actions) -> dict[str, bool]:
    """Which buttons the run page offers (the scope is checked again on POST)."""
    status = run["status"]
    cancellable = getattr(actions, "cancellable", None)
    return {"rerun": bool(run.get("file")), "resume": status in ("failed", "cancelled", "interrupted"),
            "cancel": status == "running" and (cancellable is None or cancellable(run["id"]))}


def _seen_before(store: Path, run_id: str) -> list[dict[str, Any]]:
    """Past failures like this run's, and what fixed them (``goatclaw why``'s data); empty without memory."""
    try:
        from goatclaw.api import load_project_for
        from goatclaw.memory.learn import MemorySettings, explain

        settings = MemorySettings.from_data(load_project_for(None).data.get("memory"))
        if not settings.enabled:
            return []
        with Store.open(store) as db:
            if not db.db.execute("SELECT COUNT(*) FROM memories WHERE kind = 'failure'").fetchone()[0]:
                return []
        _, found = explain(store, run_id, k=3, min_score=settings.similarity_threshold, embedder=settings.embedder)
    except (GoatclawError, ImportError):
        return []
    return [e.to_dict() for e in found]


def _memories(store: Path, q: str, kind: str | None) -> dict[str, Any]:
    """Memories matching ``q`` by meaning (best first), or the latest ones; the reason when memory is unavailable."""
    try:
        from goatclaw.memory.store import MemoryStore
    except ImportError:
        return {"memories": [], "unavailable": "the memory extra is not installed "
                "(pip install 'goatclaw-pipelines[memory]')"}
    from goatclaw.api import load_project_for
    from goatclaw.memory.learn import MemorySettings

    settings = MemorySettings.from_data(load_project_for(None).data.get("memory"))
    with Store.open(store) as db:
        mem = MemoryStore(db, settings.embedder)
        found = mem.search(q, k=30, kind=kind) if q else mem.list(kind=kind, limit=50)
        return {"memories": [m.to_dict() for m in found], "unavailable": None, "total": mem.count()}


def _schedules_key(store: Path, project: Path | None) -> tuple[Any, ...]:
    """What the schedules listing depends on: the pipeline files as they are, the scheduler's rows, the minute."""
    import time

    from goatclaw.api import pipeline_files

    files: tuple[tuple[str, int], ...] = ()
    if project is not None:
        stamps = []
        for path in pipeline_files(project):
            try:
                stamps.append((str(path), path.stat().st_mtime_ns))
            except OSError:
                continue
        files = tuple(stamps)
    try:
        with Store.open(store) as db:
            marked = tuple(db.db.execute("SELECT COUNT(*), MAX(updated_at) FROM schedules").fetchone())
    except GoatclawError:  # the store cannot be read: the listing says what it can without it
        marked = None
    return files, marked, int(time.time() // 60)


def _schedules(store: Path, project: Path | None) -> list[dict[str, Any]] | None:
    """The project's schedules: next fires and what the server's scheduler last did (``None``: no project known).

    ``project`` is the project folder; without one, the current project is used when its store
    is this dashboard's (``goatclaw ui`` in a project folder), else there is nothing to list.
    """
    import goatclaw
    from goatclaw.api import load_project_for, store_path_of

    try:
        found = load_project_for(project / "goatclaw.yaml" if project is not None else None)
        if project is None and Path(store_path_of(found) or "").resolve() != store.resolve():
            return None
        rows = goatclaw.schedules(found, next=3, store=store)
    except GoatclawError:
        return None
    return [{**row, "next": row.get("next_ts") or []} for row in rows]
