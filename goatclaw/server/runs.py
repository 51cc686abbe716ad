"""Many runs at once: a bounded queue, a fixed number of runs in flight, cancel, and the drain on SIGTERM.

A trigger becomes a :class:`Job` with its run id fixed at once (the answer names it before
the run starts). :meth:`RunQueue.submit` refuses when ``max_queued`` jobs already wait
(:class:`QueueFull`, answered 429) or when the server is stopping (:class:`Stopping`, 503).
``max_running`` workers each take the next job and run it through :func:`goatclaw.arun`
(the public API) with the project's store, on the server's event loop; each run has its own
:class:`goatclaw.Bus`, whose events wake the run's event streams (the events themselves
are read from the store, which is the truth: a stream never misses one).

:meth:`RunQueue.drain` is the SIGTERM path: no new job starts; the runs in flight get
``grace`` seconds to finish, then they are cancelled, which the engine records as
``cancelled`` (resumable: what finished stays finished). Jobs that were still waiting are
recorded in their project's store as failed runs that never started ("not started: the
server stopped"), so a client holding their run id finds them and can resume them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import goatclaw

__all__ = ["Job", "QueueFull", "Refused", "RunQueue", "Stopping", "new_run_id"]

log = logging.getLogger("goatclaw.server")

NOT_STARTED = "not started: the server stopped before a slot was free; resume the run to run it"


class Refused(goatclaw.GoatclawError):
    """A request the server will not carry out, with the HTTP status that says why (and when to try again)."""

    def __init__(self, message: str, status: int = 409, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


class QueueFull(Refused):
    """Every slot of the queue is taken: try again later (429)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 429, 1)


class Stopping(Refused):
    """The server is stopping (SIGTERM): it starts no new run (503)."""

    def __init__(self, message: str = "the server is stopping: it starts no new run") -> None:
        super().__init__(message, 503, 5)


def new_run_id() -> str:
    """A sortable run id like the CLI's (``20261203-081500-…``), with 48 random bits: many triggers a second."""
    return time.strftime("%Y%m%d-%H%M%S", time.localtime()) + "-" + os.urandom(6).hex()


@dataclass
class Job:
    """One triggered (or resumed) run: what to run, who asked, and how far it got in this server."""

    run_id: str
    project: str
    pipeline: Any  # a goatclaw.Pipeline, loaded and checked when triggered
    store: Path
    vars: dict[str, Any] = field(default_factory=dict)
    only: tuple[str, ...] = ()
    resume: bool = False
    principal: str = "anonymous"
    trigger: str = "api"  # what asked for it: api, schedule, webhook, dashboard (the run.started event says it)
    queued_at: float = field(default_factory=time.time)
    state: str = "queued"  # queued, running, done
    status: str | None = None  # the run's status once done (succeeded, failed, cancelled, blocked)
    error: str | None = None
    task: asyncio.Task[Any] | None = field(default=None, repr=False)
    _wake: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def woken(self) -> asyncio.Event:
        """The event set at the next thing that happens to this run (an event, its end)."""
        return self._wake

    def wake(self) -> None:
        """Wake whoever waits on :meth:`woken` (and arm a new event for the next waiters)."""
        event, self._wake = self._wake, asyncio.Event()
        event.set()

    def to_dict(self) -> dict[str, Any]:
        """What the server knows of the job beyond the store (its place in the queue)."""
        return {"run_id": self.run_id, "project": self.project, "state": self.state, "status": self.status,
                "queued_at": self.queued_at, "principal": self.principal, "resume": self.resume}


Runner = Callable[[Job, goatclaw.Bus], Awaitable[Any]]


class RunQueue:
    """The bounded queue and its workers (start them with :meth:`start` on the serving loop)."""

    def __init__(self, max_running: int, max_queued: int, *, runner: Runner | None = None,
                 keep: int = 10_000) -> None:
        self.max_running, self.max_queued, self.keep = max_running, max_queued, keep
        self.runner = runner or _arun
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self._waiting: asyncio.Queue[Job] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self.stopping = False
        self.counts: dict[str, int] = {}  # finished runs by status
        self.refused = {"full": 0, "stopping": 0}
        self.queued = 0  # jobs waiting for a slot
        self.running = 0  # runs in flight

    def start(self) -> None:
        """Start the workers on the running loop."""
        self._waiting = asyncio.Queue()
        self._workers = [asyncio.create_task(self._work(), name=f"goatclaw-run-worker-{i}")
                         for i in range(self.max_running)]

    def submit(self, job: Job) -> Job:
        """Queue ``job``; :class:`QueueFull` or :class:`Stopping` when it cannot be."""
        self.check_room()
        if job.run_id in self.jobs:
            raise Refused(f"run {job.run_id} is already queued or running in this server")
        self.jobs[job.run_id] = job
        self.queued += 1
        self._waiting.put_nowait(job)
        self._forget_old()
        return job

    def check_room(self) -> None:
        """Raise :class:`Stopping` or :class:`QueueFull` when a job submitted now would be refused."""
        if self.stopping or self._waiting is None:
            self.refused["stopping"] += 1
            raise Stopping()
        if self.queued >= self.max_queued + max(0, self.max_running - self.running):
            self.refused["full"] += 1
            raise QueueFull(f"the run queue is full ({self.running} running, {self.queued} waiting); try again later")

    def job(self, run_id: str) -> Job | None:
        """The job of ``run_id`` if this server queued or ran it (recently)."""
        return self.jobs.get(run_id)

    def cancel(self, run_id: str) -> str | None:
        """Cancel a queued or running job: ``queued`` / ``running`` (what it was), or ``None`` if neither."""
        job = self.jobs.get(run_id)
        if job is None or job.state == "done":
            return None
        if job.state == "queued":
            self.queued -= 1
            job.state, job.status, job.error = "done", "cancelled", "cancelled before it started"
            job.wake()
            return "queued"
        if job.task is not None:
            job.task.cancel()
        return "running"

    async def drain(self, grace: float, *, force: Callable[[], bool] = lambda: False) -> dict[str, int]:
        """Stop starting runs; wait up to ``grace`` s for those in flight, then cancel them; what happened."""
        self.stopping = True
        waiting = [j for j in self.jobs.values() if j.state == "queued"]
        for job in waiting:
            job.state, job.status, job.error = "done", "failed", NOT_STARTED
        self.queued = 0
        flying = [j.task for j in self.jobs.values() if j.state == "running" and j.task is not None]
        deadline = time.monotonic() + grace
        while flying and time.monotonic() < deadline and not force():
            _, pending = await asyncio.wait(flying, timeout=min(0.1, max(0.0, deadline - time.monotonic())))
            flying = list(pending)
        for task in flying:
            task.cancel()
        if flying:
            await asyncio.wait(flying, timeout=10)
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        await asyncio.to_thread(_record_not_started, waiting)
        for job in waiting:
            job.wake()
        return {"cancelled": len(flying), "not_started": len(waiting)}

    async def _work(self) -> None:
        assert self._waiting is not None
        while True:
            job = await self._waiting.get()
            if job.state != "queued" or self.stopping:
                continue
            job.state = "running"
            self.queued -= 1
            self.running += 1
            job.task = asyncio.create_task(self._run(job), name=f"goatclaw-run-{job.run_id}")
            await asyncio.wait([job.task])

    async def _run(self, job: Job) -> None:
        bus = goatclaw.Bus()
        bus.subscribe("*", lambda _event: job.wake())
        try:
            result = await self.runner(job, bus)
            job.status, job.error = str(result.status), result.error
        except asyncio.CancelledError:
            job.status, job.error = "cancelled", "cancelled"
        except goatclaw.GoatclawError as exc:
            job.status, job.error = "failed", str(exc)
        except Exception as exc:  # a bug, or the machine: the run's own record says what the engine saw
            log.exception("goatclaw serve: run %s ended with an error", job.run_id)
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            job.state = "done"
            self.running -= 1
            self.counts[job.status or "failed"] = self.counts.get(job.status or "failed", 0) + 1
            job.wake()

    def _forget_old(self) -> None:
        while len(self.jobs) > self.keep:
            oldest = next(iter(self.jobs.values()))
            if oldest.state != "done":
                return
            self.jobs.popitem(last=False)


async def _arun(job: Job, bus: goatclaw.Bus) -> Any:
    """A job through the public API: the pipeline on the project's store, under the job's run id."""
    if job.resume:
        return await goatclaw.arun(job.pipeline, store=job.store, bus=bus, resume=job.run_id)
    return await goatclaw.arun(job.pipeline, vars=job.vars, only=job.only, store=job.store, bus=bus,
                               run_id=job.run_id, trigger=job.trigger)


def _record_not_started(jobs: list[Job]) -> None:
    """Jobs the drain never started: stored as failed runs, so their ids are found and can be resumed."""
    from goatclaw.api import redactor_for
    from goatclaw.store import Store

    for job in jobs:
        if job.resume:
            continue  # the stored run is there already, unchanged
        pipeline = job.pipeline
        try:
            with Store.open(job.store) as db:
                db.create_run(job.run_id, pipeline.name, file=str(pipeline.file) if pipeline.file else None,
                              digest=pipeline.digest, started_at=job.queued_at,
                              vars=redactor_for(pipeline).mask_data({**pipeline.vars, **job.vars}))
                db.fail_run(job.run_id, NOT_STARTED)
        except goatclaw.GoatclawError as exc:
            log.error("goatclaw serve: could not record run %s as not started: %s", job.run_id, exc)
