"""What ``goatclaw serve`` runs beside the JSON API: schedules, webhooks, approval timeouts, the dashboard.

::

    from goatclaw.server.services import serving_app

    app = serving_app(["path/to/project"])      # what `goatclaw serve` serves

:func:`serving_app` is :func:`goatclaw.server.app.build_app` with every part wired in:

* **schedules** (:func:`schedules`): one :class:`~goatclaw.server.scheduler.Scheduler` per
  hosted project fires its pipelines' ``schedule:`` entries. A fire is a run like one the API
  triggers (checked, audited as ``schedule.fired`` by ``schedule:<pipeline>``, through the
  bounded queue, drained on SIGTERM); the scheduler waits for it to end, which is what
  ``overlap`` goes by, and cancelling it cancels the run. The pipeline files are read again
  every minute, so a new, changed or removed ``schedule:`` is taken up without a restart.
  ``GET /api/projects/{project}/schedules`` shows each schedule's next fire and what it did last.
* **webhooks** (:func:`webhooks`): ``POST /hooks/{pipeline}`` for the home project and
  ``POST /hooks/{project}/{pipeline}`` for each hosted project start a run of a pipeline with
  ``on: webhook`` (the signature is the proof: no token; the gate's address lists, rate limits
  and threat score still apply, and each refused signature counts against the sender).
* **approval timeouts** (:func:`approval_timeouts`): every ``every`` seconds a request past its
  ``timeout:`` becomes a rejection and its run resumes in the server, so the task fails with
  class ``rejected`` and the run ends instead of waiting for ever.
* **the dashboard** at ``/ui`` (home project) and ``/projects/{name}/ui`` (the others), when the
  ``ui`` extra is installed.

The clock and the sleep are injectable (``clock=``, ``sleep=``) so tests decide what time it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

import goatclaw
from goatclaw.server import requests, triggers
from goatclaw.server.app import Service, build_app
from goatclaw.server.requests import server_of
from goatclaw.server.routing import Operation, route
from goatclaw.server.scheduler import Scheduler
from goatclaw.server.webhooks import webhook_routes

__all__ = ["approval_timeouts", "schedule_routes", "schedules", "serving_app", "webhooks"]

log = logging.getLogger("goatclaw.server")

Sleep = Callable[[float], Awaitable[Any]]


def serving_app(projects: Sequence[str | Path] | Mapping[str, str | Path], *, dashboard: bool = True,
                clock: Callable[[], float] | None = None, sleep: Sleep = asyncio.sleep,
                approvals_every: float = 30.0, **options: Any) -> Any:
    """The app ``goatclaw serve`` serves: :func:`build_app` with schedules, webhooks, timeouts and the dashboard.

    ``clock`` (epoch seconds) drives the schedules and the approval timeouts (default: the
    server's clock, which ``options["clock"]`` sets for sessions too); ``sleep`` is how their
    loops wait. ``dashboard=False`` leaves ``/ui`` out (it is left out anyway without the ``ui``
    extra). Other ``options`` go to :func:`build_app`.
    """
    from goatclaw.server.app import served_projects

    served = served_projects(projects)  # checked once, for the routes and the app
    holder: dict[str, Any] = {}
    extra: list[BaseRoute] = [*schedule_routes(), *webhooks(served, lambda: holder["server"])]
    if dashboard:
        extra += _dashboards(served)
    extra += list(options.pop("extra_routes", ()))
    services = [schedules(clock=clock, sleep=sleep), approval_timeouts(approvals_every, clock=clock, sleep=sleep),
                *options.pop("services", ())]
    app = build_app(served, extra_routes=extra, services=services, **options)
    holder["server"] = app.state.goatclaw
    return app


# -- schedules ------------------------------------------------------------------------------------


def schedules(*, clock: Callable[[], float] | None = None, sleep: Sleep = asyncio.sleep,
              reload_every: float = 60.0) -> Service:
    """The service that runs one :class:`Scheduler` per hosted project (kept in ``server.schedulers``).

    Every ``reload_every`` seconds (of ``sleep``) each scheduler reads its project's pipeline
    files again: a new, changed or removed ``schedule:`` is taken up without a restart.
    """

    async def reloading(started: dict[str, Scheduler]) -> None:
        while True:
            await sleep(reload_every)
            for name, scheduler in started.items():
                try:
                    await scheduler.reload()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the schedules it had go on; what failed is said
                    log.warning("goatclaw serve: reloading the schedules of %s: %s: %s", name, type(exc).__name__, exc)

    @contextlib.asynccontextmanager
    async def service(server: Any) -> AsyncIterator[dict[str, Scheduler]]:
        started: dict[str, Scheduler] = {}
        reloader: asyncio.Task[None] | None = None
        try:
            for served in server.projects.values():
                scheduler = Scheduler(served.project, _schedule_trigger(server, served), store=served.store,
                                      clock=clock or server.clock, sleep=sleep,
                                      on_error=lambda message: log.warning("goatclaw serve: %s", message))
                await scheduler.start()
                started[served.name] = scheduler
            server.schedulers = started
            reloader = asyncio.create_task(reloading(started), name="goatclaw-schedules-reload")
            yield started
        finally:
            if reloader is not None:
                reloader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reloader
            for scheduler in started.values():  # loops end; the runs they started are the queue's to drain
                await scheduler.stop(cancel_runs=False, timeout=0)

    return service


def _schedule_trigger(server: Any, served: Any) -> Callable[..., Awaitable[dict[str, Any]]]:
    """The scheduler's trigger: queue the run as the API would, wait for its end; cancelled, it cancels the run."""

    async def fire(path: str, variables: Mapping[str, Any], *, trigger: str = "schedule") -> dict[str, Any]:
        shown = served.shown(path) or path
        job = await triggers.trigger(server, served, shown, vars=variables, who=f"schedule:{Path(shown).stem}",
                                     action="schedule.fired", source=trigger)
        try:
            await _ended(job)
        except asyncio.CancelledError:  # overlap: cancel, or the scheduler stopping with cancel_runs
            server.queue.cancel(job.run_id)
            raise
        return {"run_id": job.run_id, "status": job.status}

    return fire


async def _ended(job: Any) -> None:
    """Wait until the server's job is done (its event is taken before the state is read: no wake-up is lost)."""
    while True:
        woken = job.woken()
        if job.state == "done":
            return
        await woken.wait()


async def schedules_listing(request: Request) -> Response:
    """The project's schedules: cron, time zone, the next fires, whether a run is on, what the last fires did."""
    served = requests.served(request, "read")
    scheduler = getattr(server_of(request), "schedulers", {}).get(served.name)
    if scheduler is None:
        return JSONResponse({"project": served.name, "schedules": [], "fires": [], "running": False})
    rows = scheduler.status()  # "file" is the pipeline's path in the project folder (its schedules' key)
    fires = [{"pipeline": f.pipeline, "schedule": f.schedule, "at": f.at,
              "action": f.action, "late": f.late, "run_id": f.run_id, "status": f.status, "detail": f.detail}
             for f in list(scheduler.history)[-100:]]
    return JSONResponse({"project": served.name, "schedules": rows, "fires": fires, "running": True})


def schedule_routes() -> list[BaseRoute]:
    """``GET /api/projects/{project}/schedules`` (scope ``read``)."""
    return [route("/api/projects/{project}/schedules", schedules_listing, ["GET"], Operation(
        "The project's schedules: next fires, the last fires and their runs", "read", tag="schedules",
        responses={200: ("Schedules", None),
                   401: ("No principal (no token or session)", {"$ref": "#/components/schemas/Error"}),
                   403: ("Not allowed (scope or project)", {"$ref": "#/components/schemas/Error"}),
                   404: ("No such project", {"$ref": "#/components/schemas/Error"})}))]


# -- webhooks -------------------------------------------------------------------------------------


def webhooks(served: Mapping[str, Any], server: Callable[[], Any]) -> list[BaseRoute]:
    """The webhook routes of every hosted project (``server()`` gives the :class:`Server` at request time)."""
    routes: list[BaseRoute] = []
    for i, (name, project) in enumerate(served.items()):
        paths = [f"/hooks/{name}/{{pipeline}}", *(["/hooks/{pipeline}"] if i == 0 else [])]
        routes += webhook_routes(_webhook_trigger(server, name), project=project.project, path=paths)
    return routes


def _webhook_trigger(server: Callable[[], Any], name: str) -> Callable[..., Awaitable[str]]:
    async def start(path: str, variables: Mapping[str, Any], *, trigger: str = "webhook") -> str:
        found = server()
        served = found.project(name)
        shown = served.shown(path) or path
        job = await triggers.trigger(found, served, shown, vars=variables, who=f"webhook:{Path(shown).stem}",
                                     action="webhook.received", source=trigger)
        return str(job.run_id)

    return start


# -- approval timeouts ------------------------------------------------------------------------------


def approval_timeouts(every: float = 30.0, *, clock: Callable[[], float] | None = None,
                      sleep: Sleep = asyncio.sleep) -> Service:
    """The service that turns overdue approval requests into rejections and resumes their runs."""

    @contextlib.asynccontextmanager
    async def service(server: Any) -> AsyncIterator[None]:
        loop = asyncio.create_task(_timeouts(server, every, clock or server.clock, sleep, first=True),
                                   name="goatclaw-approval-timeouts")
        try:
            yield
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop

    return service


async def _timeouts(server: Any, every: float, clock: Callable[[], float], sleep: Sleep, *, first: bool) -> None:
    while True:
        for served in server.projects.values():
            try:
                await expire_and_resume(server, served, now=clock(), overdue=first)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the loop goes on; what failed is said
                log.warning("goatclaw serve: approval timeouts of %s: %s: %s", served.name, type(exc).__name__, exc)
        first = False
        await sleep(every)


async def expire_and_resume(server: Any, served: Any, *, now: float | None = None,
                            overdue: bool = False) -> list[str]:
    """Expire ``served``'s overdue requests and resume the runs that were waiting on them; their ids.

    With ``overdue`` (the first pass after the server starts) a run still ``waiting`` whose
    every request was decided by a timeout is resumed too: it expired while no server was up.
    """
    store = served.store
    if not Path(store).is_file():
        return []
    at = time.time() if now is None else now
    expired = await anyio.to_thread.run_sync(lambda: goatclaw.expire_approvals(store=store, now=at))
    runs = list(dict.fromkeys(row["run_id"] for row in expired))
    if overdue:
        runs += [r for r in await anyio.to_thread.run_sync(lambda: _timed_out_waiting(store)) if r not in runs]
    resumed = []
    for run_id in runs:
        row = await server.stores.call(store, lambda db, run_id=run_id: db.run(run_id))
        if row is None or row.status != "waiting":
            continue  # resumed elsewhere already (a person's `goatclaw reject` resumes it at once)
        job = server.queue.job(run_id)
        if job is not None and job.state != "done":
            continue
        try:
            await triggers.resume(server, served, row, who="timeout", action="approval.timeout.resumed")
        except goatclaw.GoatclawError as exc:  # the queue is full or the server stopping: the next pass tries again
            log.warning("goatclaw serve: run %s timed out at its approval but was not resumed: %s", run_id, exc)
            continue
        resumed.append(run_id)
    return resumed


def _timed_out_waiting(store: Path) -> list[str]:
    """Runs stored ``waiting`` with no request undecided and at least one decided by a timeout."""
    from goatclaw.decisions import EXPIRED_BY
    from goatclaw.store import Store

    with Store.open(store) as db:
        rows = db.db.execute("SELECT id FROM runs WHERE status = 'waiting'").fetchall()
        out = []
        for (run_id,) in rows:
            requests_ = db.approvals(run_id, waiting=False)
            if requests_ and all(r["decision"] is not None for r in requests_) and any(
                    r["decided_by"] == EXPIRED_BY for r in requests_):
                out.append(run_id)
        return out


# -- the dashboard --------------------------------------------------------------------------------


def _dashboards(served: Mapping[str, Any]) -> list[BaseRoute]:
    """The dashboard of each hosted project (``/ui`` for the home one), when the ``ui`` extra is installed."""
    try:
        from goatclaw.server.ui.served import dashboard_mount
    except ImportError as exc:  # jinja2 missing: the API serves without its pages
        log.info("goatclaw serve: no dashboard (%s); install the ui extra: pip install 'goatclaw-pipelines[ui]'", exc)
        return []
    mounts: list[BaseRoute] = []
    items = list(served.items())
    for name, project in items[1:]:
        mounts.append(dashboard_mount(project.store, project=name, path=f"/projects/{name}/ui", root=project.root))
    home_name, home = items[0]
    mounts.append(dashboard_mount(home.store, project=home_name, root=home.root))
    return mounts
