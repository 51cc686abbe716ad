"""What the dashboard's buttons do, through the public API: re-run, resume, cancel, replay, reset, decide.

:class:`Actions` is the interface the pages call; :class:`LocalActions` does it in the
process serving the pages (``goatclaw ui``): a re-run or resume is a :func:`goatclaw.arun`
on the server's event loop, and only runs started here can be cancelled from here (a run
another process owns is that process's to stop). ``goatclaw serve`` hands its own
implementation (its bounded run queue) to :func:`goatclaw.server.ui.ui_routes`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from goatclaw.errors import GoatclawError
from goatclaw.store import Store

__all__ = ["Actions", "LocalActions"]

log = logging.getLogger(__name__)


class Actions(Protocol):
    """The changes the pages may ask for; each returns what to show (a run id, a count) or raises GoatclawError."""

    async def rerun(self, run_id: str, *, who: str) -> str:
        """Start the run's pipeline again with the same vars; the new run's id."""

    async def resume(self, run_id: str, *, who: str) -> str:
        """Continue an unfinished run under its own id; that id."""

    async def cancel(self, run_id: str, *, who: str) -> bool:
        """Cancel a running run (it stays resumable); whether one was cancelled."""

    async def replay(self, letter_id: int, *, who: str) -> str:
        """Re-run a dead letter's task in its run's context; the new run's id."""

    async def reset_breaker(self, key: str | None, *, who: str) -> int:
        """Close one breaker (or all); how many."""

    async def decide(self, run_id: str, task_id: str | None, *, approve: bool, who: str,
                     inputs: Mapping[str, Any] | None, reason: str | None) -> Any:
        """Record an approval decision and resume the run."""


def _new_run_id() -> str:
    """A run id in the engine's format (sortable, readable): ``20261124-140512-3fa9c1``."""
    return time.strftime("%Y%m%d-%H%M%S", time.localtime()) + "-" + os.urandom(3).hex()


class LocalActions:
    """Actions run in this process, against the store at ``store``."""

    def __init__(self, store: str | os.PathLike[str]) -> None:
        self.store = Path(store)
        self.started: dict[str, asyncio.Task[Any]] = {}

    def _row(self, run_id: str) -> Any:
        with Store.open(self.store) as db:
            row = db.run(run_id)
        if row is None:
            raise GoatclawError(f"no run '{run_id}' in {self.store}")
        return row

    async def _launch(self, run_id: str, coro: Any, *, wait: float = 10.0) -> str:
        """Start ``coro`` (a run) on this loop; return once its run is in the store, so its page exists."""
        task = asyncio.get_running_loop().create_task(coro)
        self.started[run_id] = task
        task.add_done_callback(lambda t: self._ended(run_id, t))
        await self._stored(run_id, task.done, wait=wait)
        if task.done() and not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            raise GoatclawError(str(exc)) if not isinstance(exc, GoatclawError) else exc
        return run_id

    async def _stored(self, run_id: str, done: Any, *, wait: float = 10.0) -> None:
        """Wait (up to ``wait`` seconds, or until ``done()``) for the run to be stored as running: its page exists."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not done():
            with Store.open(self.store) as db:
                row = db.run(run_id)
            if row is not None and row.status == "running":
                return
            await asyncio.sleep(0.05)

    def cancellable(self, run_id: str) -> bool:
        """Whether :meth:`cancel` can stop the run (this process started it and it is still going)."""
        task = self.started.get(run_id)
        return task is not None and not task.done()

    def _ended(self, run_id: str, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("run %s started from the dashboard ended with %s", run_id, task.exception())

    async def rerun(self, run_id: str, *, who: str) -> str:
        """See :meth:`Actions.rerun`: the same file (loaded again) and the stored vars."""
        import goatclaw

        row = self._row(run_id)
        pipeline = self._pipeline(row)
        new = _new_run_id()
        return await self._launch(new, goatclaw.arun(pipeline, vars=row.vars, store=self.store, run_id=new,
                                                              trigger="dashboard"))

    async def resume(self, run_id: str, *, who: str) -> str:
        """See :meth:`Actions.resume`."""
        import goatclaw

        row = self._row(run_id)
        if row.status not in ("failed", "cancelled") and not row.interrupted:
            raise GoatclawError(f"run {row.id} is {row.status}: only a failed, cancelled or interrupted run resumes")
        pipeline = self._pipeline(row)
        return await self._launch(row.id, goatclaw.arun(pipeline, store=self.store, resume=row.id))

    async def cancel(self, run_id: str, *, who: str) -> bool:
        """See :meth:`Actions.cancel`: only a run this process started."""
        row = self._row(run_id)
        task = self.started.get(row.id)
        if task is None or task.done():
            raise GoatclawError(f"run {row.id} was not started by this dashboard: stop it where it runs "
                                "(Ctrl-C or SIGTERM leave it resumable)")
        task.cancel()
        return True

    async def replay(self, letter_id: int, *, who: str) -> str:
        """See :meth:`Actions.replay` (:func:`goatclaw.history.replay_dead_letter`)."""
        from goatclaw.history import replay_dead_letter

        result = await replay_dead_letter(self.store, letter_id)
        return result.run_id

    async def reset_breaker(self, key: str | None, *, who: str) -> int:
        """See :meth:`Actions.reset_breaker`."""
        with Store.open(self.store) as db:
            return db.reset_breakers(key)

    async def decide(self, run_id: str, task_id: str | None, *, approve: bool, who: str,
                     inputs: Mapping[str, Any] | None, reason: str | None) -> Any:
        """See :meth:`Actions.decide`: :func:`goatclaw.adecide` records it; the resume runs on this loop.

        The decision is recorded (and its inputs checked) before this returns; the rest of the
        run then goes on in the background, so the page answers at once and shows it running.
        """
        import goatclaw

        adecide = getattr(goatclaw, "adecide", None)
        if adecide is None:
            raise GoatclawError("this goatclaw has no approval API (goatclaw.adecide) yet")
        row = self._row(run_id)
        await adecide(row.id, task_id, approve=approve, who=who, inputs=dict(inputs) if inputs else None,
                      reason=reason, store=self.store, resume=False)
        pipeline = self._pipeline(row)
        return await self._launch(row.id, goatclaw.arun(pipeline, store=self.store, resume=row.id))

    @staticmethod
    def _pipeline(row: Any) -> Any:
        import goatclaw

        if not row.file or not Path(row.file).exists():
            raise GoatclawError(f"the pipeline file of run {row.id} ({row.file}) is gone")
        return goatclaw.load(row.file)
