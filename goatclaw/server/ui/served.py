"""The dashboard inside ``goatclaw serve``: the server's principals, its login, its CSRF token.

``goatclaw serve`` authenticates every request in its gate (API tokens, the session cookie
of a user who logged in with a password and a TOTP code) and puts the principal in the
request's scope; :class:`ServeAuth` reads it from there, so the pages see exactly what the
API sees, scopes and projects included. Signing in is the server's ``POST /auth/login``
(rate limits, threat score and audit row included): the dashboard's ``/login`` page is a
form that ``ui.js`` sends there as JSON. A form's CSRF token is the session's, the one the
gate checks as ``X-CSRF-Token``.

The buttons go through the server's bounded run queue (:class:`ServeActions`): a re-run,
a resume or the run after an approval is a job like one the API triggered (refused when
the queue is full or the server stopping, drained or cancelled on SIGTERM, resumable), and
cancel reaches any run the server is running. The gate writes the ``http.request`` audit
row of every POST with its principal.

Mount it with :func:`dashboard_mount`, one project's store::

    app = build_app(folders, extra_routes=[dashboard_mount(home_store, project="demo")])
"""

from __future__ import annotations

import os
from typing import Any

from starlette.routing import Mount

from goatclaw.errors import GoatclawError
from goatclaw.server.auth import principal_of
from goatclaw.server.runs import Job, new_run_id
from goatclaw.server.ui.access import Principal
from goatclaw.server.ui.actions import Actions, LocalActions
from goatclaw.server.ui.pages import ui_routes

__all__ = ["ServeActions", "ServeAuth", "dashboard_mount"]


class ServeAuth:
    """The dashboard's :class:`~goatclaw.server.ui.access.Auth` over the server's gate.

    ``project`` is the served project the pages show: a principal limited to other projects
    sees nothing (403), as in the API.
    """

    login_endpoint = "/auth/login"

    def __init__(self, project: str | None = None) -> None:
        self.project = project

    def principal(self, request: Any) -> Principal | None:
        """The gate's principal as the pages' (its label, its scopes); ``None`` for nobody."""
        who = principal_of(request)
        if who.kind == "anonymous":
            return None
        if not who.in_project(self.project):
            return Principal(who.label, frozenset())
        return Principal(who.label, frozenset(who.scopes))

    def csrf_token(self, request: Any) -> str:
        """The session's CSRF token (a bearer token has none: its forms are refused)."""
        return principal_of(request).csrf or ""

    def login_url(self, request: Any) -> str | None:
        """The dashboard's login page, under the mount."""
        return str(request.scope.get("root_path") or "").rstrip("/") + "/login"


class ServeActions(LocalActions):
    """The buttons through the server's run queue; :meth:`for_request` binds them to the serving app's state.

    Replaying a dead letter, resetting a breaker and recording a decision are as in
    :class:`LocalActions`; every run they start or resume is a :class:`~goatclaw.server.runs.Job`.
    """

    def __init__(self, store: str | os.PathLike[str], project: str | None, server: Any = None) -> None:
        super().__init__(store)
        self.project, self.server = project, server

    def for_request(self, request: Any) -> ServeActions:
        """These actions for the server serving ``request`` (``request.app.state.goatclaw``)."""
        return ServeActions(self.store, self.project, request.app.state.goatclaw)

    def _served(self) -> Any:
        return self.server.projects.get(self.project) if self.project else self.server.home

    async def _queue(self, run_id: str, row: Any, *, resume: bool, who: str, vars: dict[str, Any]) -> str:
        import anyio.to_thread

        import goatclaw

        served = self._served()
        pipeline = await anyio.to_thread.run_sync(lambda: goatclaw.load(self._file(row), project=served.project))
        job = Job(run_id, served.name, pipeline, served.store, vars=vars, resume=resume, principal=who,
                  trigger="dashboard")
        if resume:
            self.server.queue.jobs.pop(run_id, None)  # a finished job of this id: the resume replaces it
        self.server.queue.submit(job)  # QueueFull and Stopping are GoatclawErrors: the page says them
        await self._stored(run_id, lambda: job.state == "done")
        if job.state == "done" and job.error:
            raise GoatclawError(f"run {run_id}: {job.error}")
        return run_id

    def cancellable(self, run_id: str) -> bool:
        """Whether the server is running (or has queued) the run."""
        job = self.server.queue.job(run_id) if self.server is not None else None
        return job is not None and job.state != "done"

    @staticmethod
    def _file(row: Any) -> str:
        if not row.file:
            raise GoatclawError(f"run {row.id} has no pipeline file")
        return str(row.file)

    async def rerun(self, run_id: str, *, who: str) -> str:
        """A new job of the run's file with its stored vars."""
        row = self._row(run_id)
        return await self._queue(new_run_id(), row, resume=False, who=who, vars=dict(row.vars))

    async def resume(self, run_id: str, *, who: str) -> str:
        """A resume job of an unfinished run."""
        row = self._row(run_id)
        if row.status not in ("failed", "cancelled") and not row.interrupted:
            raise GoatclawError(f"run {row.id} is {row.status}: only a failed, cancelled or interrupted run resumes")
        return await self._queue(row.id, row, resume=True, who=who, vars={})

    async def cancel(self, run_id: str, *, who: str) -> bool:
        """Cancel a run this server queued or is running (it stays resumable)."""
        row = self._row(run_id)
        if self.server.queue.cancel(row.id) is None:
            raise GoatclawError(f"run {row.id} is not running in this server (it is {row.status})")
        return True

    async def decide(self, run_id: str, task_id: str | None, *, approve: bool, who: str,
                     inputs: Any, reason: str | None) -> Any:
        """Record the decision (:func:`goatclaw.adecide`, not resuming), then queue the resume."""
        import goatclaw

        row = self._row(run_id)
        await goatclaw.adecide(row.id, task_id, approve=approve, who=who, inputs=dict(inputs) if inputs else None,
                               reason=reason, store=self.store, resume=False)
        return await self._queue(row.id, row, resume=True, who=who, vars={})


def dashboard_mount(store: str | os.PathLike[str], *, project: str | None = None, path: str = "/ui",
                    actions: Actions | None = None, root: str | os.PathLike[str] | None = None) -> Mount:
    """The dashboard's routes over ``store`` at ``path``, signed in and running runs through the server.

    ``root`` is the project's folder (its schedules are listed on the pipelines page).
    """
    return Mount(path, routes=ui_routes(store, auth=ServeAuth(project), project=root,
                                        actions=actions or ServeActions(store, project)))
