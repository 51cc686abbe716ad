"""The server's scheduler: fires each ``schedule:`` of a project's pipelines at its times.

::

    scheduler = Scheduler(project, trigger, store=project.store_path)
    await scheduler.start()      # one loop per schedule; what was missed while down is caught up
    ...
    await scheduler.stop()       # loops end; running scheduled runs are cancelled (or awaited)

``trigger(pipeline_path, vars, trigger="schedule")`` is a coroutine that runs one run to
its end and returns its result (a :class:`goatclaw.RunResult`, or anything with ``run_id``
and ``status``, or a run id). The scheduler awaits it in a task of its own: that task is
the run as far as ``overlap`` is concerned, and cancelling it must cancel the run.

What each schedule's loop does (the times come from :class:`goatclaw.schedule.Timetable`):

* it sleeps until the next fire after ``done_until`` (the time up to which every fire is
  handled, kept in the store: migration ``021_schedules``), at most :data:`MAX_NAP` seconds
  at a time so that a clock that jumps (a suspended laptop, an NTP step) is noticed;
* a fire at most :data:`GRACE` seconds late is punctual: it starts a run under ``overlap``
  (``skip`` it while the schedule's last run still runs, ``queue`` one to start when that
  run ends, or ``cancel`` that run and start anew);
* later than that (the server was down or asleep), the fires missed up to now go by
  ``catch_up``: ``latest`` starts the last of them, ``all`` each of them one after another
  (each waits for the run before it), ``none`` nothing;
* a schedule seen for the first time starts from now: nothing before it counts as missed.

A fire is recorded before its run is triggered (at most once: a crash between the two loses
that fire rather than running it twice). The clock and the sleep are injected, so tests
decide what time it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import goatclaw
from goatclaw import api
from goatclaw.schedule import Timetable, pipeline_key

__all__ = ["GRACE", "MAX_NAP", "Fire", "Scheduler", "Trigger"]

_log = logging.getLogger("goatclaw.server.scheduler")

#: A fire this many seconds late still counts as on time (a busy event loop, a slow start).
GRACE = 60.0
#: The longest single sleep: the loop looks at the clock again at least this often.
MAX_NAP = 60.0

Trigger = Callable[..., Awaitable[Any]]
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[Any]]


@dataclass(frozen=True)
class Fire:
    """What the scheduler did about one scheduled time, with the run id when known.

    ``action`` is ``fired``, ``skipped``, ``queued``, ``cancelled`` (the run was cancelled),
    ``finished`` (the trigger returned) or ``failed`` (the trigger raised).
    """

    pipeline: str
    schedule: str
    at: float
    action: str
    late: bool = False
    run_id: str | None = None
    status: str | None = None
    detail: str | None = None


@dataclass(eq=False)
class _Slot:
    """One schedule of one pipeline: its timetable, what it remembers, its running and queued run."""

    pipeline: Any
    table: Timetable
    key: str
    done_until: float = 0.0
    running: asyncio.Future[Any] | None = None  # the trigger's run
    settling: asyncio.Task[None] | None = None  # waits for it, then remembers how it ended
    running_at: float | None = None
    queued: float | None = None
    loop: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.table.schedule.name

    @property
    def busy(self) -> bool:
        return self.running is not None and not self.running.done()


class Scheduler:
    """Fires the schedules of ``pipelines`` (default: every scheduled pipeline of ``project``) through ``trigger``.

    ``project`` is a :class:`~goatclaw.spec.project.Project` or its folder. ``store`` is the store
    file that remembers the last fire of each schedule (``True``: the one the project's runs use,
    as :func:`goatclaw.arun` finds it; ``None``: remember nothing, so nothing is caught up after a
    restart). ``clock`` returns epoch seconds and
    ``sleep`` waits (both injectable). ``on_error(message)`` hears about what could not be
    done (a store that refused a write, a trigger that raised); it is logged too.
    """

    def __init__(self, project: Any, trigger: Trigger, *, store: str | Path | bool | None = True,
                 pipelines: Sequence[Any] | None = None, clock: Clock = time.time,
                 sleep: Sleep = asyncio.sleep, on_error: Callable[[str], None] | None = None,
                 history: int = 1000) -> None:
        self.project = api.project_at(project)
        self.trigger = trigger
        self.store = api.store_path_of(self.project, store)
        self.clock = clock
        self.sleep = sleep
        self.on_error = on_error
        self._given = pipelines
        self._slots: list[_Slot] = []
        self._stopping = False
        self._settling: set[asyncio.Task[None]] = set()  # every run's settling task until it is done
        self._runs: set[asyncio.Future[Any]] = set()  # every run still going, of any schedule (removed ones too)
        #: The latest things done (newest last): what tests and the server's status page read.
        self.history: deque[Fire] = deque(maxlen=history)

    # -- the recipe ------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the schedules, read what the store remembers, and start one loop per schedule."""
        pipelines = list(self._given) if self._given is not None else await asyncio.to_thread(self._scheduled)
        await self._add(pipelines, {})

    async def reload(self, pipelines: Sequence[Any] | None = None) -> None:
        """Take up edited pipeline files: ``pipelines``, else the project's scheduled pipelines read again.

        A schedule that is unchanged goes on untouched. One that is new starts like at
        :meth:`start`; one that changed (its cron, time zone, overlap, catch-up or vars)
        starts over from the time it had handled; one that is gone stops. A run that a
        stopped or changed schedule started goes on to its end (:meth:`stop` still cancels it).
        """
        fresh = list(pipelines) if pipelines is not None else await asyncio.to_thread(self._scheduled)
        wanted = {(pipeline_key(p), s.name): s for p in fresh for s in p.schedules}
        kept, retired = [], []
        for slot in self._slots:
            same = wanted.get((slot.key, slot.name)) == slot.table.schedule
            (kept if same else retired).append(slot)
        for slot in retired:
            if slot.loop is not None:
                slot.loop.cancel()
            slot.queued = None
        await asyncio.gather(*(s.loop for s in retired if s.loop is not None), return_exceptions=True)
        carried = {(s.key, s.name): s.done_until for s in retired}
        self._slots = kept
        known = {(s.key, s.name) for s in kept}
        await self._add([p for p in fresh if any((pipeline_key(p), s.name) not in known for s in p.schedules)],
                        carried, skip=known)
        for slot in kept:  # the file may have changed elsewhere: runs read it anew anyway
            slot.pipeline = next(p for p in fresh if pipeline_key(p) == slot.key)

    async def _add(self, pipelines: Sequence[Any], carried: dict[tuple[str, str], float], *,
                   skip: set[tuple[str, str]] | None = None) -> None:
        """A slot and a loop for each schedule of ``pipelines`` (not in ``skip``), from where it had got to."""
        remembered = await asyncio.to_thread(self._remembered)
        now = self.clock()
        added = []
        for pipeline in pipelines:
            for schedule in pipeline.schedules:
                slot = _Slot(pipeline, Timetable.of(schedule), pipeline_key(pipeline))
                if skip and (slot.key, slot.name) in skip:
                    continue
                state = remembered.get((slot.key, slot.name))
                slot.done_until = max(carried.get((slot.key, slot.name), 0.0),
                                      float(state["done_until"]) if state else 0.0) or now
                if state is None:
                    await self._mark(slot, done_until=slot.done_until)  # from now on, a fire not made is missed
                added.append(slot)
        self._slots += added
        for slot in added:
            slot.loop = asyncio.create_task(self._loop(slot), name=f"schedule {slot.key}#{slot.name}")

    async def stop(self, *, cancel_runs: bool = True, timeout: float = 30.0) -> None:
        """End every loop and drop queued fires; cancel the running scheduled runs (or wait for them)."""
        self._stopping = True
        loops = [s.loop for s in self._slots if s.loop is not None]
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        for slot in self._slots:
            slot.queued = None
        if cancel_runs:
            for run in list(self._runs):
                run.cancel()
        if self._settling:
            await asyncio.wait(set(self._settling), timeout=timeout)

    async def __aenter__(self) -> Scheduler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def status(self) -> list[dict[str, Any]]:
        """Each schedule: pipeline file, name, cron, ``done_until``, the next fire, whether a run is on or queued."""
        return [{"file": s.key, "pipeline": s.pipeline.name, "schedule": s.name, "cron": s.table.schedule.cron,
                 "timezone": s.table.schedule.timezone, "done_until": s.done_until,
                 "next": s.table.next_after(s.done_until), "running": s.busy, "queued": s.queued}
                for s in self._slots]

    # -- one schedule ----------------------------------------------------------------------

    async def _loop(self, slot: _Slot) -> None:
        while not self._stopping:
            try:
                await self._step(slot)
            except Exception as exc:  # a bug or a trigger that is not a coroutine: said, and the schedule goes on
                self._error(f"schedule {slot.key}#{slot.name}: {type(exc).__name__}: {exc}")
                await self.sleep(MAX_NAP)

    async def _step(self, slot: _Slot) -> None:
        """Sleep toward the next fire, or fire what is due (on time by ``overlap``, late by ``catch_up``)."""
        due = slot.table.next_after(slot.done_until)
        now = self.clock()
        if now < due:
            await self.sleep(min(due - now, MAX_NAP))
            return
        if now - due <= GRACE:
            slot.done_until = due
            await self._mark(slot, done_until=due, fired=due)
            await self._fire(slot, due, late=False)
            return
        fires = slot.table.missed(slot.done_until, now)
        slot.done_until = now
        if not fires:
            self.history.append(Fire(slot.key, slot.name, due, "skipped", late=True,
                                     detail=f"catch_up: {slot.table.schedule.catch_up}"))
        await self._mark(slot, done_until=now, fired=fires[-1] if fires else None)
        for i, fire in enumerate(fires):
            if i and slot.busy:  # catch_up: all runs the missed fires one after another
                await asyncio.wait([slot.settling])  # type: ignore[list-item]
            await self._fire(slot, fire, late=True)

    async def _fire(self, slot: _Slot, at: float, *, late: bool) -> None:
        overlap = slot.table.schedule.overlap
        if slot.busy and overlap == "skip":
            self.history.append(Fire(slot.key, slot.name, at, "skipped", late, detail="the last run is still running"))
            return
        if slot.busy and overlap == "queue":
            if slot.queued is not None:
                self.history.append(Fire(slot.key, slot.name, at, "skipped", late, detail="one fire is queued already"))
            else:
                slot.queued = at
                self.history.append(Fire(slot.key, slot.name, at, "queued", late))
            return
        if slot.busy and overlap == "cancel":
            assert slot.running is not None and slot.settling is not None
            slot.running.cancel()
            await asyncio.wait([slot.settling])
        self._start(slot, at, late)

    def _start(self, slot: _Slot, at: float, late: bool) -> None:
        """Start the run (the trigger, in a task of its own) and the task that settles it when it ends."""
        run = asyncio.ensure_future(self.trigger(str(slot.pipeline.file), dict(slot.table.schedule.vars),
                                                 trigger="schedule"))
        self.history.append(Fire(slot.key, slot.name, at, "fired", late))
        slot.running_at = at
        slot.running = run
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)
        slot.settling = asyncio.create_task(self._settle(slot, run, at, late),
                                            name=f"scheduled run {slot.key}#{slot.name}")
        self._settling.add(slot.settling)
        slot.settling.add_done_callback(self._settling.discard)

    async def _settle(self, slot: _Slot, run: asyncio.Future[Any], at: float, late: bool) -> None:
        """Wait for the run, remember how it ended, then start the queued fire (never cancelled itself)."""
        await asyncio.wait([run])
        if run.cancelled():
            self.history.append(Fire(slot.key, slot.name, at, "cancelled", late))
            await self._mark(slot, done_until=slot.done_until, status="cancelled")
        elif (exc := run.exception()) is not None:
            message = f"schedule {slot.key}#{slot.name}: the run of {slot.table.local(at)} could not start: " \
                      f"{type(exc).__name__}: {exc}"
            self._error(message)
            self.history.append(Fire(slot.key, slot.name, at, "failed", late, detail=message))
            await self._mark(slot, done_until=slot.done_until, status="error")
        else:
            run_id, status = _outcome(run.result())
            self.history.append(Fire(slot.key, slot.name, at, "finished", late, run_id, status))
            await self._mark(slot, done_until=slot.done_until, run=run_id, status=status)
        queued, slot.queued = slot.queued, None
        if queued is not None and not self._stopping:
            self._start(slot, queued, late=False)

    # -- the store ---------------------------------------------------------------------------

    def _scheduled(self) -> list[Any]:
        pipelines, problems = goatclaw.scheduled_pipelines(self.project)
        for problem in problems:
            self._error(f"not scheduled: {problem}")
        return [p for p in pipelines if p.schedules]

    def _remembered(self) -> dict[tuple[str, str], dict[str, Any]]:
        if self.store is None or not self.store.is_file():
            return {}
        from goatclaw.store import Store

        with Store.open(self.store) as db:
            return db.schedule_state()

    async def _mark(self, slot: _Slot, *, done_until: float, fired: float | None = None, run: str | None = None,
                    status: str | None = None) -> None:
        if self.store is None:
            return
        from goatclaw.errors import GoatclawError
        from goatclaw.store import Store

        def write() -> None:
            with Store.open(self.store) as db:  # type: ignore[arg-type]
                db.mark_schedule(slot.key, slot.name, cron=slot.table.schedule.cron, done_until=done_until,
                                 fired=fired, run=run, status=status, now=self.clock())

        try:
            await asyncio.to_thread(write)
        except GoatclawError as exc:  # the fire still happens; that it is not remembered is said
            self._error(f"schedule {slot.key}#{slot.name}: {exc}")

    def _error(self, message: str) -> None:
        _log.warning("%s", message)
        if self.on_error is not None:
            with contextlib.suppress(Exception):
                self.on_error(message)


def _outcome(result: Any) -> tuple[str | None, str | None]:
    """A trigger's result as (run id, status): a RunResult, a mapping, an object with those fields, or a run id."""
    if isinstance(result, str):
        return result, None
    if isinstance(result, dict):
        return result.get("run_id"), _text(result.get("status"))
    return getattr(result, "run_id", None), _text(getattr(result, "status", None))


def _text(status: Any) -> str | None:
    return None if status is None else str(getattr(status, "value", status))
