"""Running a compiled plan: the scheduler loop, attempts, fan-out and recording.

The scheduler is a pool of ``concurrency`` worker coroutines over a ready heap ordered by
priority (higher first) then file order. A task becomes ready when all of its needs are
done; the hot loop works on plain in-degree counts, never on the networkx graph. A task
whose ``if`` is false is skipped, and so is every task that only depends on skipped
tasks; a failed task marks its dependents ``upstream_failed`` while independent branches
finish their work.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import operator
import os
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from goatclaw.engine import tasklogs
from goatclaw.engine.breaker import Breakers, breaker_key
from goatclaw.engine.checks import OutputChecks
from goatclaw.engine.executor import Executor, LocalExecutor
from goatclaw.engine.fanout import fan_out
from goatclaw.engine.gates import Evidence, Gate
from goatclaw.engine.guard import Guard
from goatclaw.engine.metrics import critical_path
from goatclaw.engine.readback import UNTRUSTED_EVENT, ReadBack
from goatclaw.engine.recorder import Recorder
from goatclaw.engine.retry import Backoff, should_retry
from goatclaw.engine.sentry import RunBlocked, SecretReads, Sentry
from goatclaw.engine.state import RunResult, RunStatus, TaskResult, TaskState, to_json
from goatclaw.engine.taskcache import TaskCache, may_cache
from goatclaw.engine.toolcalls import ToolCalls
from goatclaw.engine.watchdog import Overdue, deadline
from goatclaw.errors import GoatclawError, PermissionDenied, PluginError, TaskError, TaskTimeout, TemplateError
from goatclaw.events import Bus
from goatclaw.extras import missing_message
from goatclaw.graph import Plan
from goatclaw.hooks import Hooks
from goatclaw.plugin import PluginSpec, TaskContext
from goatclaw.registry import Plugin, Registry, default_registry
from goatclaw.security.auditkey import KEY_ENV, KEY_FILE_ENV
from goatclaw.security.ratelimit import LIMITS
from goatclaw.spec.loader import gc_frozen
from goatclaw.spec.model import BreakerPolicy, Task, memoized
from goatclaw.store import Store
from goatclaw.template import Compiled, compile_expression, compile_value, has_template
from goatclaw.tools.mcp import current as mcp_servers

__all__ = ["RunOptions", "execute"]

_BLOCKING = (TaskState.FAILED, TaskState.UPSTREAM_FAILED, TaskState.CANCELLED)
_STATUS = operator.attrgetter("status")
_NOTHING: frozenset[str] = frozenset()
#: What a plugin may raise that fails its task. ``KeyboardInterrupt`` and ``SystemExit`` from a
#: plugin (``sys.exit()`` in a task body) are its failure, not the process's: a real Ctrl-C never
#: raises inside a run started by the CLI (cli/border.py cancels it instead).
_PLUGIN_FAILURES = (Exception, KeyboardInterrupt, SystemExit)
#: The largest task output (serialised JSON) when the pipeline sets no ``max_output_bytes``.
MAX_OUTPUT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class RunOptions:
    """How to run a plan (everything but the plan itself)."""

    vars: Mapping[str, Any] = field(default_factory=dict)
    concurrency: int | None = None
    only: tuple[str, ...] = ()
    store_path: Path | None = None
    workspace: Path = field(default_factory=Path.cwd)
    secrets: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] | None = None
    bus: Bus | None = None
    registry: Registry | None = None
    executor: Executor | None = None
    run_id: str | None = None
    seed: int | None = None
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
    hooks: tuple[Any, ...] = ()  # hook objects (or names) from Python, after the pipeline's own
    resume: bool = False  # run_id names a stored run: keep what finished, run the rest
    cache: bool = True  # reuse stored outputs of cacheable tasks
    seed_from: str | None = None  # a stored run whose finished tasks this new run takes as done (dlq replay)
    seed_only: frozenset[str] | None = None  # only these of seed_from's tasks (a fork: those before its task)
    stubs: Mapping[str, Any] = field(default_factory=dict)  # task id -> its given output; it does not run
    load: Callable[[Path], Any] | None = None  # path -> checked Pipeline, for pipeline tools (goatclaw.load)
    parent: Mapping[str, Any] | None = None  # a child run (a pipeline tool): the calling run, task and depth
    ceiling: Any = None  # a child run: the calling task's Grant, which none of its tasks exceeds
    approver: Any = None  # decides tool calls a task's approve: names (toolcalls.Approver); None: they are refused
    evidence: Evidence | None = None  # an approval request's cost and permissions of what follows (goatclaw.api)
    trigger: str | None = None  # what started the run (cli, api, schedule, webhook…): in its run.started event
    #: Called with the run's store and result after its last commit, before the store closes; what it
    #: raises is logged, never the run's (goatclaw.api: whether memory has anything to learn from the run).
    last_look: Callable[[Store, RunResult], Any] | None = None


async def execute(plan: Plan, options: RunOptions) -> RunResult:
    """Run ``plan`` to the end and return its result; cancellation records the run as cancelled."""
    return await _Runner(plan, options).run()


def new_run_id() -> str:
    """A sortable, readable run id: ``20261124-140512-3fa9c1``."""
    return time.strftime("%Y%m%d-%H%M%S", time.localtime()) + "-" + os.urandom(3).hex()


class _Runner(OutputChecks, ToolCalls):
    """The one mutable object of a run: task results, the ready heap, the workers."""

    def __init__(self, plan: Plan, options: RunOptions) -> None:
        self.plan = plan
        self.pipeline = plan.pipeline
        self.opts = options
        self.registry = options.registry or default_registry()
        self.executor = options.executor or LocalExecutor()
        self.inline_async = type(self.executor) is LocalExecutor
        self.bus = options.bus or Bus()
        self.rng = random.Random(options.seed)
        self.all_tasks = plan.pipeline.all_tasks()
        self.standby = memoized(plan.memo, "standby", lambda: _standby(plan.pipeline))
        self.selected = (_select(plan, options.only, self.standby) if options.only else
                         memoized(plan.memo, "selected", lambda: _select(plan, (), self.standby)))
        # permissions (the store protected wherever it is) and untrusted flows
        self.guard = Guard(plan.pipeline, options.workspace, self.registry, options.store_path, options.ceiling)
        self.task_contexts: dict[int, dict[str, Any]] = {}  # per grant: the template context with its env
        self.result = RunResult(run_id=options.run_id or new_run_id(), pipeline=self.pipeline.name,
                                tasks={tid: TaskResult(tid) for tid in self.selected},
                                store_path=str(options.store_path) if options.store_path else None)
        self.views = _TaskViews(self.result.tasks)
        self.compiled: dict[str, Compiled] = plan.pipeline.memo.setdefault("compiled", {})  # kept across runs
        self.recorder: Recorder | None = None
        self.sentry: Sentry | None = None  # threat score and the engine's own audit rows (set when the run opens)
        self.secret_reads: SecretReads | None = None  # ``secrets`` as templates see it, when there are any
        self.specs: dict[str, PluginSpec | None] = {}  # plugin name -> its plugin's declarations (for the sentry)
        self.screened: dict[str, bool] = {}  # plugin name -> whether the sentry scans its outputs
        self.plugins: dict[str, Plugin] = {}  # plugin name -> the plugin, looked up once a run
        self.output_limit = self.pipeline.max_output_bytes or MAX_OUTPUT_BYTES
        self.breakers: Breakers | None = None
        self.breaker_keys: dict[str, str] = {}
        self.breaker_successes: dict[str, int] = {}
        self.ready: list[tuple[int, int, str]] = []
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.pending: dict[str, int] = {}
        self.blocked: set[str] = set()  # tasks with a need that failed for good
        self.skips: dict[str, int] = {}  # tasks with a need that was skipped: how many were
        self.held: set[str] = set()  # tasks waiting for an approval, and everything downstream of them
        self.done = 0
        self.context: dict[str, Any] = {}
        self.hooks = Hooks.build(self.pipeline.hooks, options.hooks, self.registry)  # None: no hooks
        self.seeded: set[str] = set()  # tasks a resume took from the store: done before the run starts
        self.cache: TaskCache | None = None  # reused outputs (a run with a store, unless --no-cache)
        self.readback: ReadBack | None = None  # files and memories an untrusted flow wrote, read back
        self.untrusted = True  # whether the templates carry untrusted data anywhere (Guard.untrusted_in_sight)
        self.mcp = mcp_servers()  # the run's MCP servers (set around the whole run: goatclaw.api.arun)

    # -- the recipe ------------------------------------------------------------------

    async def run(self) -> RunResult:
        self._open()
        limits = LIMITS.set(Sentry.limits_of(self.pipeline, self.opts.store_path))  # seen by every task
        warmups = self._start_warmups()
        try:
            if self.hooks:
                assert self.recorder is not None
                await self.hooks.run_started(run_id=self.result.run_id, pipeline=self.pipeline.name,
                                             tasks=list(self.selected), workspace=self.opts.workspace,
                                             emit=self.recorder.event, mask=self.recorder.redactor.mask_data)
            with gc_frozen():  # the run's own state, built by _open (a result a task, ...), is never rescanned
                await self._with_pipeline_timeout(self._schedule())
            await self._after_graph()
        except RunBlocked as exc:
            return await self._blocked(str(exc))
        except asyncio.CancelledError:
            self._finish(RunStatus.CANCELLED, "cancelled")
            raise
        except BaseException as exc:
            self._finish(RunStatus.FAILED, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            LIMITS.reset(limits)
            for warmup in warmups:
                warmup.cancel()
            await self.executor.close() if self.opts.executor is None else None
        await self.bus.drain()  # queued subscribers see every task event (and their failures become dead letters)
        status = self._final_status()
        if self.hooks and (fatal := await self.hooks.run_ending(
                run_id=self.result.run_id, pipeline=self.pipeline.name, status=status.value,
                error=self.result.error, workspace=self.opts.workspace)):
            status, self.result.error = RunStatus.FAILED, self.result.error or fatal
        self._finish(status, self.result.error)
        await self.bus.drain()  # ... and the run's last event
        return self.result

    def _open(self) -> None:
        r = self.result
        r.started_at = time.time()
        store = Store.open(self.opts.store_path) if self.opts.store_path else None
        self.recorder = Recorder(store, self.bus, r.run_id, secrets=dict(self.opts.secrets))
        self.readback = ReadBack(self.guard.runtime, self.opts.workspace, store, r.run_id, self.guard.carried,
                                 self.recorder.file_origins)
        if memoized(self.plan.memo, "breakers", lambda: any(t.breaker is not None for t in self.all_tasks.values())):
            self._breakers()
        self.recorder.start_run(self.pipeline, vars=dict(self.opts.vars), started_at=r.started_at,
                                tasks=list(self.selected), resume=self.opts.resume, trigger=self.opts.trigger)
        if self.opts.parent:  # a pipeline tool's child run: who called it
            self.recorder.event("run.parent", None, dict(self.opts.parent))
        self.sentry = Sentry(self.recorder, threshold=Sentry.threshold_of(self.pipeline))
        self.untrusted = self.guard.untrusted_in_sight()  # False: only what comes back at run time can taint
        self.secret_reads = SecretReads(self.opts.secrets) if self.opts.secrets else None
        if self.opts.cache and store is not None:
            self.cache = TaskCache(self.recorder, self.opts.workspace)
        if self.opts.resume or self.opts.seed_from:
            self._seed()
        if self.opts.stubs:
            self._stub(r.started_at)
        self.context = {
            "vars": dict(self.opts.vars),
            "env": {k: v for k, v in (os.environ if self.opts.env is None else self.opts.env).items()
                    if k not in (KEY_ENV, KEY_FILE_ENV)},  # the audit key is never anybody's to read
            "secrets": self.secret_reads if self.secret_reads is not None else {},
            "run": {"id": r.run_id, "pipeline": self.pipeline.name, "started_at": r.started_at},
            "tasks": self.views,
        }
        if self.cache is not None:
            self.cache.prefetch(self._constant_cacheable(), self.context)

    async def _with_pipeline_timeout(self, work: Awaitable[None]) -> None:
        if self.pipeline.timeout is None:
            await work
            return
        try:
            async with asyncio.timeout(self.pipeline.timeout):
                await work
        except TimeoutError:
            self.result.error = f"the pipeline timed out after {self.pipeline.timeout:g}s"
            self._cancel_unfinished("pipeline timeout")

    async def _blocked(self, reason: str) -> RunResult:
        """The threat score reached the threshold: nothing more runs, not even ``finally`` tasks."""
        assert self.sentry is not None
        self.sentry.blocked(reason)
        self._finish(RunStatus.BLOCKED, reason)
        await self.bus.drain()
        return self.result

    def _finish(self, status: RunStatus, error: str | None) -> None:
        r = self.result
        if status in (RunStatus.CANCELLED, RunStatus.BLOCKED):
            self._cancel_unfinished("run cancelled" if status is RunStatus.CANCELLED else "run blocked")
        r.status = status
        r.error = error if self.recorder is None else self.recorder.redactor.mask(error)
        r.finished_at = time.time()
        r.critical_path = critical_path(self.plan.needs, r.tasks)
        if self.breakers is not None:
            self.breakers.close()
        if self.recorder is not None:
            self.recorder.finish_run(r, last_look=self.opts.last_look)
            self.recorder = None

    def _final_status(self) -> RunStatus:
        states = set(map(_STATUS, self.result.tasks.values()))
        if TaskState.WAITING in states:
            return RunStatus.WAITING  # not over, even if another branch failed: a decision resumes it
        if TaskState.UPSTREAM_FAILED in states or TaskState.CANCELLED in states:
            return RunStatus.FAILED
        if TaskState.FAILED in states and any(
                res.status is TaskState.FAILED and not self.all_tasks[tid].continue_on_error
                for tid, res in self.result.tasks.items()):
            return RunStatus.FAILED
        return RunStatus.FAILED if self.result.error else RunStatus.SUCCEEDED

    # -- after the graph: on_failure and finally -------------------------------------

    async def _after_graph(self) -> None:
        """Run ``on_failure`` tasks if the graph failed, then ``finally`` tasks, with the run's status."""
        p = self.pipeline
        if not (p.on_failure or p.finally_):
            return
        status = self._final_status()
        if status is RunStatus.WAITING:  # the run has not ended: they run when it does
            return
        self.context["run"] = {**self.context["run"], "status": status.value, "errors": self._errors()}
        self.task_contexts.clear()  # they copied the old run view
        if status is RunStatus.FAILED and p.on_failure:
            await self._run_group(p.on_failure)
        if p.finally_:
            await self._run_group(p.finally_)

    def _errors(self) -> list[dict[str, Any]]:
        return [{"task": tid, "error": r.error, "error_class": r.error_class}
                for tid, r in self.result.tasks.items() if r.status is TaskState.FAILED]

    async def _run_group(self, group: Mapping[str, Task]) -> None:
        """A small graph run in order (needs within the group), one task at a time."""
        results = self.result.tasks
        for tid in group:
            results[tid] = TaskResult(tid)
        for tid in _group_order(group):
            task = group[tid]
            states = [results[n].status for n in task.needs if n in results]
            if any(s in _BLOCKING for s in states):
                self._mark(tid, TaskState.UPSTREAM_FAILED)
            elif states and all(s is TaskState.SKIPPED for s in states):
                self._mark(tid, TaskState.SKIPPED)
            else:
                await self._run_task(task)
                await self._screen(task)

    def _cancel_unfinished(self, reason: str) -> None:
        for res in self.result.tasks.values():
            if not res.status.is_terminal():
                res.move(TaskState.CANCELLED)
                res.error = res.error or reason
                res.error_class = "cancelled"
                res.finished_at = time.time()
                if self.recorder is not None:
                    self.recorder.task_finished(res)

    def _start_warmups(self) -> list[asyncio.Task[None]]:
        """Start, in the background, the warm-ups of the plugins the run will use (``PluginSpec.warmup``).

        Judge rules and ``fix: {mode: repair}`` call an LLM on the task's behalf: the LLM
        room's warm-up (litellm's import, in a thread) starts for them too.
        """
        if self.opts.only:
            uses, judged = _warm_uses(self.all_tasks, self.selected)
        else:  # every run of the pipeline selects the same tasks: looked at once
            uses, judged = memoized(self.plan.memo, "warm uses", lambda: _warm_uses(self.all_tasks, self.selected))
        warmups: list[Callable[[], Awaitable[None]] | None] = []
        for name in uses:
            try:
                warmups.append(self.registry.task(name).spec.warmup)
            except PluginError:
                pass  # the task reports it when it runs
        if judged:
            from goatclaw import llm as room

            warmups.append(room.warm)
        return [asyncio.ensure_future(_quietly(w)) for w in dict.fromkeys(warmups) if w is not None]

    # -- the task cache --------------------------------------------------------------

    def _constant_cacheable(self) -> Iterator[tuple[Task, Plugin, Compiled]]:
        """Selected tasks whose outputs may be cached and whose ``with:`` is constant (keyed up front)."""
        for tid in self.selected:
            task = self.pipeline.tasks[tid]
            if tid in self.seeded or task.foreach is not None or not task.cache.enabled:
                continue
            try:
                plugin = self.registry.task(task.uses)
                compiled = self._inputs(task)
            except (PluginError, TaskError):
                continue  # the task reports it when it runs
            if may_cache(task, plugin) and compiled.is_constant:
                yield task, plugin, compiled

    # -- resume ----------------------------------------------------------------------

    def _seed(self) -> None:
        """Take the stored results of tasks that finished well; they count as done and never run again."""
        assert self.recorder is not None
        keep = {TaskState.SUCCEEDED.value, TaskState.CACHED.value, TaskState.SKIPPED.value}
        for row in self.recorder.stored_tasks(self.opts.seed_from):
            res = self.result.tasks.get(row.task_id)
            if res is None or row.status not in keep or row.task_id not in self.pipeline.tasks:
                continue
            if self.opts.seed_only is not None and row.task_id not in self.opts.seed_only:
                continue
            res.status = TaskState(row.status)
            res.output, res.attempts = row.output, row.attempts
            res.started_at, res.finished_at = row.started_at, row.finished_at
            if self.pipeline.tasks[row.task_id].foreach is not None and isinstance(row.output, list):
                res.items = len(row.output)
            self.seeded.add(row.task_id)
            self.recorder.event("task.resumed", row.task_id, {"status": row.status})
            if self.pipeline.tasks[row.task_id].approval is not None and row.status != TaskState.SKIPPED.value:
                res.approval = Gate(self.pipeline.tasks[row.task_id], self.result.run_id, self.recorder.store,
                                    self.recorder.redactor).decision()  # tasks.<id>.approval, as when it ran
            if self.opts.seed_only is not None:  # a fork is a run of its own: it holds the outputs it took
                res.output_json = to_json(row.output)
                self.recorder.task_kept(res)
        self.result.resumed = tuple(t for t in self.selected if t in self.seeded)
        store = self.recorder.store
        if self.seeded and store is not None and self.readback is not None:  # what they carried when they ran
            stored = store.untrusted_tasks(self.opts.seed_from or self.result.run_id)
            self.readback.restore(stored, [t for t in self.plan.order if t in self.seeded])

    def _stub(self, now: float) -> None:
        """Stubbed tasks succeed at once with their given output (a fan-out's is its list of outputs)."""
        assert self.recorder is not None
        unknown = [t for t in self.opts.stubs if t not in self.all_tasks]
        if unknown:
            raise GoatclawError(f"stubs name unknown task(s): {', '.join(unknown)}")
        for tid, output in self.opts.stubs.items():
            res = self.result.tasks.get(tid)
            if res is None or tid in self.seeded or tid not in self.pipeline.tasks:
                continue
            res.status, res.output, res.output_json = TaskState.SUCCEEDED, output, to_json(output)
            res.started_at = res.finished_at = now
            if self.pipeline.tasks[tid].foreach is not None and isinstance(output, list):
                res.items = len(output)
            self.seeded.add(tid)
            self.recorder.event("task.stubbed", tid, None)
            self.recorder.task_finished(res)

    # -- scheduling ------------------------------------------------------------------

    async def _schedule(self) -> None:
        needs = self.plan.needs
        sel = self.selected
        if self.opts.only:
            self.pending = {tid: sum(1 for n in needs[tid] if n in sel) for tid in sel}
            roots = [tid for tid, left in self.pending.items() if left == 0]
        else:  # every task but standby fallbacks, which nothing needs: the same counts every run, copied
            counts, roots = memoized(self.plan.memo, "pending", lambda: _pending(needs, sel))
            self.pending = dict(counts)
        seeded = self.seeded
        for tid in roots:
            if tid not in seeded:
                self._push(tid)
        if seeded:
            for tid in sel:
                if tid in seeded:
                    self._complete(tid)
        while sel and self.done < len(sel):
            await self._work()
            self._release_decided()  # decisions recorded while this run went on (another approver): go on

    async def _work(self) -> None:
        """Run the workers until every selected task is done (or held at an approval)."""
        limit = self.opts.concurrency or self.pipeline.concurrency
        workers = [asyncio.create_task(self._worker()) for _ in range(max(1, min(limit, len(self.selected))))]
        try:
            await asyncio.gather(*workers)
        finally:
            # cancel each worker once: a second cancel would interrupt a task's own cleanup
            for w in workers:
                if not w.done() and not w.cancelling():
                    w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    def _push(self, tid: str) -> None:
        task = self.pipeline.tasks[tid]
        heapq.heappush(self.ready, (-task.priority, task.order, tid))
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():  # a worker cancelled while it waited (the run is being cancelled)
                waiter.set_result(None)
                break

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        total = len(self.selected)
        bus = self.bus
        sentry = self.sentry
        tasks = self.pipeline.tasks
        results = self.result.tasks
        assert sentry is not None
        while True:
            if self.ready and not sentry.threat.blocked:
                if bus.congested:  # a queued subscriber is behind: start nothing new until it catches up
                    await bus.wait_ready()
                    continue
                tid = heapq.heappop(self.ready)[2]
                task = tasks[tid]
                await self._run_task(task)
                res = results[tid]
                if res.error_class is not None or self._screened(task.uses) or sentry.threat.blocked:
                    await self._screen(task)  # may stop the run before its dependents are released
                if res.status is TaskState.WAITING:
                    self._hold(tid)
                else:
                    self._complete(tid)
                continue
            if self.done >= total:
                return
            waiter = loop.create_future()
            self.waiters.append(waiter)
            await waiter

    async def _screen(self, task: Task) -> None:
        """Threat-score a finished task (its denial or its output); raises :class:`RunBlocked` at the threshold."""
        assert self.sentry is not None
        await self.sentry.screen(task.id, self.result.tasks[task.id], self._spec(task.uses))

    def _spec(self, uses: str) -> PluginSpec | None:
        """The declarations of the plugin ``uses`` names (``None``: no such plugin), looked up once a run."""
        spec = self.specs.get(uses, False)
        if spec is False:
            try:
                spec = self.specs[uses] = self.registry.task(uses).spec
            except PluginError:
                spec = self.specs[uses] = None
        return spec  # type: ignore[return-value]

    def _screened(self, uses: str) -> bool:
        """Whether a successful output of ``uses`` is scanned (:meth:`Sentry.screen`; a denial always counts)."""
        screened = self.screened.get(uses)
        if screened is None:
            screened = self.screened[uses] = Sentry.scans(self._spec(uses))
        return screened

    def _complete(self, tid: str) -> None:
        """Count ``tid`` as done and release its dependents (settling blocked ones at once).

        A dependent whose needs all failed for good is ``upstream_failed``, one whose needs were
        all skipped is skipped; a need that succeeded touches nothing but the count (the common case).
        """
        stack = [tid]
        sel = self.selected
        results = self.result.tasks
        dependents = self.plan.dependents
        pending, blocked, skips, seeded = self.pending, self.blocked, self.skips, self.seeded
        while stack:
            current = stack.pop()
            self.done += 1
            state = results[current].status
            blocks = state in _BLOCKING and not (
                state is TaskState.FAILED and self.pipeline.tasks[current].continue_on_error)
            skipped = state is TaskState.SKIPPED
            for dep in dependents[current]:
                if dep not in sel:
                    continue
                if blocks:
                    blocked.add(dep)
                if skipped:
                    skips[dep] = skips.get(dep, 0) + 1
                left = pending[dep] - 1
                pending[dep] = left
                if left == 0 and dep not in seeded:
                    if dep in blocked:
                        self._mark(dep, TaskState.UPSTREAM_FAILED)
                        stack.append(dep)
                    elif dep in skips and skips[dep] == self._needs_in_run(dep):  # every need was skipped
                        self._mark(dep, TaskState.SKIPPED)
                        stack.append(dep)
                    else:
                        self._push(dep)
        if self.done >= len(sel):
            self._wake_if_done()

    def _needs_in_run(self, tid: str) -> int:
        """How many of ``tid``'s needs this run runs (all of them, unless ``--only`` left some out)."""
        needs = self.plan.needs[tid]
        return sum(1 for n in needs if n in self.selected) if self.opts.only else len(needs)

    def _hold(self, tid: str) -> None:
        """``tid`` waits for an approval: it and what is downstream of it are done for this process."""
        stack, sel = [tid], self.selected
        while stack:
            current = stack.pop()
            if current in self.held or current not in sel:
                continue
            self.held.add(current)
            self.done += 1
            stack += self.plan.dependents[current]
        self._wake_if_done()

    def _release_decided(self) -> None:
        """Waiting tasks whose decision came meanwhile go back to the ready heap; the rest stay held."""
        assert self.recorder is not None
        waiting = [tid for tid in self.held if self.result.tasks[tid].status is TaskState.WAITING]
        decided = {tid for tid in waiting if (row := Gate(self.pipeline.tasks[tid], self.result.run_id,
                                                             self.recorder.store, self.recorder.redactor).stored())
                   and row["decision"] is not None}
        if not decided:
            return
        self.done -= len(self.held)
        self.held = set()
        for tid in waiting:
            if tid not in decided:
                self._hold(tid)
        for tid in decided:
            self._push(tid)

    def _wake_if_done(self) -> None:
        if self.done >= len(self.selected):
            while self.waiters:
                waiter = self.waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)

    def _mark(self, tid: str, state: TaskState) -> None:
        res = self.result.tasks[tid]
        res.move(state)
        if state is TaskState.UPSTREAM_FAILED:
            failed = [n for n in self.plan.needs[tid] if self.result.tasks.get(n) and
                      self.result.tasks[n].status in _BLOCKING]
            res.error = f"needs {', '.join(failed)}, which did not succeed"
            res.error_class = "upstream"
        assert self.recorder is not None
        self.recorder.task_finished(res)

    # -- one task --------------------------------------------------------------------

    async def _run_task(self, task: Task) -> None:
        res = self.result.tasks[task.id]
        rec, readback = self.recorder, self.readback
        assert rec is not None and readback is not None
        res.move(TaskState.RUNNING)
        res.started_at = time.time()
        rec.task_started(task.id, res.started_at)
        if self.hooks:
            await self.hooks.call("before_task", run_id=self.result.run_id, pipeline=self.pipeline.name,
                                  task_id=task.id, uses=task.uses)
        try:
            if task.if_ is not None and not self._condition(task):
                res.move(TaskState.SKIPPED)
            elif task.approval is not None and not self._approved(task, res):
                res.move(TaskState.WAITING)
            else:
                plugin = self._plugin(task)
                if self.untrusted or self.guard.runtime.seen:
                    self._refuse_untrusted(task)
                if task.foreach is not None:
                    res.output, res.output_json = await self._foreach(task, plugin, res)
                else:
                    attempts = self._attempts if self.cache is not None else self._run_attempts  # no cache: no detour
                    res.output, res.output_json = await attempts(task, plugin, res, self._context_for(task), None)
                res.move(TaskState.CACHED if res.cache_hits and res.cache_hits == (res.items or 1)
                         else TaskState.SUCCEEDED)
        except asyncio.CancelledError:
            res.move(TaskState.CANCELLED)
            res.error, res.error_class = "cancelled", "cancelled"
            raise
        except TaskError as exc:
            res.error, res.error_class = self.recorder.redactor.mask(exc.message), exc.error_class
            if task.fallback in self.standby and await self._fallback(task, res):
                res.move(TaskState.SUCCEEDED)
            else:
                res.move(TaskState.FAILED)
                if res.error_class != "rejected":  # a person's no is a decision, not a letter to replay
                    self._dead_letter(task, res)
        finally:
            res.finished_at = time.time()
            if res.fallback is not None or readback.heard_any or self.guard.runtime.seen:  # (else: nothing to settle)
                self._settle(task, res)
            rec.task_finished(res)
            if self.hooks and res.status not in (TaskState.CANCELLED, TaskState.WAITING):
                await self.hooks.task_finished(run_id=self.result.run_id, pipeline=self.pipeline.name, result=res)

    def _approved(self, task: Task, res: TaskResult) -> bool:
        """Whether ``task``'s approval was given (its decision kept on ``res``); asks for it the first time.

        A rejection raises ``TaskError(rejected)``; see goatclaw.engine.gates.
        """
        assert self.recorder is not None
        if self.opts.parent:  # its caller (a model's tool call) is waiting for an answer, not for a person
            raise TaskError("an approval cannot wait inside a pipeline called as a tool: the calling task holds "
                            "the run", error_class="invalid_input")
        gate = Gate(task, self.result.run_id, self.recorder.store, self.recorder.redactor)
        res.approval = gate.decision()
        if res.approval is not None:
            self.recorder.event("approval.granted", task.id, {"by": res.approval["by"]})
            return True
        if gate.stored() is None:  # the first time here: ask (a request that waits already is not renewed)
            upstream = {n: self.result.tasks[n].output for n in task.needs if n in self.result.tasks}
            shown = gate.request(self._context_for(task), upstream, self._after_gate(task), self.opts.evidence)
            said = {"message": shown["message"], "timeout": shown["timeout"]}
            self.recorder.audited("approval.requested", task.id, said)
            self.recorder.event("approval.requested", task.id, said)
        return False

    def _after_gate(self, task: Task) -> list[str]:
        """What an approval lets run: the gated task itself (unless it is ``uses: approval``) and all after it."""
        follows = [t for t in self.plan.order if t in self.selected and task.id in self.plan.ancestors(t)]
        return follows if task.uses == "approval" else [task.id, *follows]

    def _dead_letter(self, task: Task, res: TaskResult) -> None:
        """A task failed for good: keep its rendered inputs and error for ``goatclaw dlq``."""
        assert self.recorder is not None
        if self.recorder.store is None:
            return
        inputs: dict[str, Any] = {"uses": task.uses}
        try:
            if task.foreach is not None:
                inputs["items"] = self._items(task)
                inputs["with"] = task.with_
            else:
                inputs["with"] = self._inputs(task).render(self._context_for(task))
        except (TaskError, TemplateError):  # inputs that do not render are kept as written
            inputs["with"] = task.with_
        self.recorder.dead_letter(task.id, inputs, res.error_class, res.error)

    async def _fallback(self, task: Task, res: TaskResult) -> bool:
        """Run ``task``'s fallback; its output stands in. Whether it succeeded."""
        assert self.recorder is not None and task.fallback is not None
        standby = self.pipeline.tasks[task.fallback]
        self.recorder.event("task.fallback", task.id, {"fallback": standby.id, "error": res.error,
                                                       "error_class": res.error_class})
        spare = self.result.tasks.setdefault(standby.id, TaskResult(standby.id))
        if spare.status is TaskState.PENDING:
            await self._run_task(standby)
        if spare.status not in (TaskState.SUCCEEDED, TaskState.CACHED):
            res.error = f"{res.error}; fallback '{standby.id}' failed too: {spare.error}"
            return False
        res.output, res.output_json, res.fallback = spare.output, spare.output_json, standby.id
        return True

    def _condition(self, task: Task) -> bool:
        if isinstance(task.if_, bool):
            return task.if_
        try:
            return bool(compile_expression(task.if_ or "true").evaluate(self._context_for(task)))
        except TemplateError as exc:
            raise TaskError(f"if: {exc.message}", error_class=exc.error_class) from None

    def _plugin(self, task: Task) -> Plugin:
        plugin = self.plugins.get(task.uses)
        if plugin is not None:
            return plugin
        try:
            plugin = self.plugins[task.uses] = self.registry.task(task.uses)
        except PluginError as exc:
            raise TaskError(exc.message, error_class="invalid_input") from None
        return plugin

    def _inputs(self, task: Task) -> Compiled:
        compiled = self.compiled.get(task.id)
        if compiled is None:
            try:
                compiled = compile_value(task.with_)
            except TemplateError as exc:
                raise TaskError(f"with: {exc.message}", error_class="invalid_input") from None
            self.compiled[task.id] = compiled
        return compiled

    async def _foreach(self, task: Task, plugin: Plugin, res: TaskResult) -> tuple[list[Any], str]:
        """Every item of a fan-out, ``concurrency`` at a time; (outputs in item order, their JSON list).

        A fixed pool of workers takes the items in order, so a fan-out over a million items
        holds a handful of coroutines, not one asyncio task per item (engine/fanout.py).
        """
        items = self._items(task)
        res.items = len(items)
        limit = task.concurrency or self.opts.concurrency or self.pipeline.concurrency
        outputs: list[Any] = [None] * len(items)
        texts: list[str] = ["null"] * len(items)
        context = self._context_for(task)

        async def one(index: int) -> None:
            ctx = {**context, "item": items[index], "index": index}
            try:
                outputs[index], texts[index] = await self._attempts(task, plugin, res, ctx, index)
            except TaskError as exc:
                if task.fail_fast:  # the task fails with this item's error: say which item it was
                    raise _item_error(exc, index) from exc
                raise

        errors = await fan_out(len(items), limit, one, fail_fast=task.fail_fast)
        if errors:
            index, first = errors[0]
            raise TaskError(f"{len(errors)} of {len(items)} items failed; item {index}: {first.message}",
                            error_class=first.error_class)
        return outputs, "[" + ",".join(texts) + "]"

    def _items(self, task: Task) -> list[Any]:
        spec = task.foreach
        try:
            if isinstance(spec, str) and not has_template(spec):
                value = compile_expression(spec).evaluate(self._context_for(task))
            else:
                value = compile_value(spec).render(self._context_for(task))
        except TemplateError as exc:
            raise TaskError(f"foreach: {exc.message}", error_class=exc.error_class) from None
        if isinstance(value, Mapping):
            return [{"key": k, "value": v} for k, v in value.items()]
        if not isinstance(value, (list, tuple)):
            raise TaskError(f"foreach: expected a list, got {type(value).__name__} {json.dumps(value, default=str)}",
                            error_class="invalid_input")
        return list(value)

    async def _attempts(self, task: Task, plugin: Plugin, res: TaskResult, context: Mapping[str, Any],
                        index: int | None) -> tuple[Any, str]:
        """One task (or item of a fan-out): from the task cache if it may be, else run; (output, JSON)."""
        cache = self.cache
        if cache is None or not (may_cache(task, plugin) and task.cache.enabled):
            return await self._run_attempts(task, plugin, res, context, index)
        key = cache.key(task, plugin, self._inputs(task), context, index)
        if key is None:
            return await self._run_attempts(task, plugin, res, context, index)
        text = cache.lookup(task, key)
        if text is not None:
            output = json.loads(text)
            if not task.validate or self._cached_output_holds(task, output, context, index):
                res.cache_hits += 1
                return output, text
        output, text = await self._run_attempts(task, plugin, res, context, index)
        cache.put(key, plugin, text)
        return output, text

    async def _run_attempts(self, task: Task, plugin: Plugin, res: TaskResult, context: Mapping[str, Any],
                            index: int | None, compiled: Compiled | None = None) -> tuple[Any, str]:
        """Run one task (or one item of a fan-out) with its retry policy; (output, output JSON).

        The first attempt takes a short path; the retry loop starts only after a failure.
        The successful attempt is the task's own row; the attempts table keeps the failures.
        With ``fix:``, a rejected output goes through the fix loop (``compiled`` is given there).
        """
        if compiled is None and task.validate:  # a cascade and a fix loop both need rules to judge by
            if (cascade := self._cascade_of(task, context)) is not None:
                return await self._cascade_loop(task, plugin, res, context, index, cascade)
            if task.fix is not None:
                return await self._fix_loop(task, plugin, res, context, index)
        compiled = compiled or self._inputs(task)
        res.attempts = res.attempts or 1
        started = time.time()
        try:
            return await self._attempt(task, plugin, compiled, context, 1, index)
        except asyncio.CancelledError:
            self._record_attempt(task, index, 1, started, None)
            raise
        except _PLUGIN_FAILURES as exc:
            return await self._retry(task, plugin, res, compiled, context, index, exc, started)

    async def _retry(self, task: Task, plugin: Plugin, res: TaskResult, compiled: Compiled,
                     context: Mapping[str, Any], index: int | None, first: BaseException,
                     started: float) -> tuple[Any, str]:
        policy = task.retry
        backoff = Backoff(policy, self.rng, successes=self._successes_of(task))
        rec = self.recorder
        assert rec is not None
        first_start = time.monotonic() - (time.time() - started)
        exc: BaseException = first
        attempt = 1
        while True:
            err = _as_task_error(exc, task)
            self._record_attempt(task, index, attempt, started, err)
            elapsed = time.monotonic() - first_start
            if (attempt >= policy.attempts or not should_retry(policy, err.error_class)
                    or (policy.max_elapsed is not None and elapsed >= policy.max_elapsed)):
                raise err from exc
            delay = backoff.next_delay(attempt, err.error_class, err.retry_after)
            rec.event("task.retrying", task.id, {"attempt": attempt, "item": index, "delay": round(delay, 3),
                                                 "error_class": err.error_class, "error": err.message})
            await self.opts.sleep(delay)
            attempt += 1
            res.attempts = max(res.attempts, attempt)  # a fan-out counts its busiest item
            started = time.time()
            try:
                return await self._attempt(task, plugin, compiled, context, attempt, index)
            except asyncio.CancelledError:
                self._record_attempt(task, index, attempt, started, None)
                raise
            except _PLUGIN_FAILURES as next_exc:
                exc = next_exc

    def _successes_of(self, task: Task) -> Callable[[], int] | None:
        """For adaptive backoff: successes seen by the task's shared breaker since its last failure."""
        if self.breakers is None or task.breaker is None:
            return None
        return lambda: self.breaker_successes.get(task.id, 0)

    def _record_attempt(self, task: Task, index: int | None, attempt: int, started: float,
                        err: TaskError | None) -> None:
        assert self.recorder is not None
        if err is None:
            self.recorder.attempt(task.id, index, attempt, "cancelled", started, "cancelled", "cancelled")
        else:
            self.recorder.attempt(task.id, index, attempt, "failed", started, err.error_class, err.message)

    async def _attempt(self, task: Task, plugin: Plugin, compiled: Compiled, context: Mapping[str, Any],
                       attempt: int, index: int | None) -> tuple[Any, str]:
        """One attempt; what is logged meanwhile is its log (goatclaw.engine.tasklogs)."""
        assert self.recorder is not None and self.sentry is not None
        token = tasklogs.enter(self.recorder, task.id, index, attempt)
        try:
            try:
                kwargs = compiled.render(context, limit=task.timeout)  # rendering cannot outlast the task's timeout
            except TemplateError as exc:
                raise TaskError(f"with: {exc.message}", error_class=exc.error_class) from None
            if self.secret_reads is not None and self.secret_reads.read:  # resolved for this task's templates
                self.sentry.secrets_read(task.id, index, self.secret_reads.taken())
            ctx = self._task_context(task, attempt, context.get("item") if index is not None else None, index)
            if task.breaker is not None:
                result = await self._guarded(task, plugin, ctx, kwargs, task.breaker)
            elif task.timeout is None and self.inline_async and plugin.is_async:
                output = await plugin.fn(ctx, **kwargs)  # the common case, one coroutine layer less
                result = output, to_json(output)
            else:
                result = await self._call(task, plugin, ctx, kwargs)
            if len(result[1]) * 4 > self.output_limit:  # UTF-8: at most 4 bytes a character
                self._check_size(result[1])
            if task.validate:
                await self._check_output(task, result[0], context, index, kwargs)
            return result
        finally:
            tasklogs.leave(token)

    def _task_context(self, task: Task, attempt: int, item: Any, index: int | None) -> TaskContext:
        """What a plugin (or the engine on the task's behalf) gets: the task's grant, secrets and event channel."""
        assert self.recorder is not None
        res = self.result.tasks.get(task.id)
        return TaskContext(self.result.run_id, task.id, attempt, item, index, self.opts.workspace, self.opts.secrets,
                           task.env, task.timeout, self.guard.grant(task), self._task_event,
                           self.opts.store_path, self.recorder.redactor, self._cache_word(task), task.cache.ttl,
                           self.guard.carried(task.id) if self.untrusted or self.guard.runtime.seen else _NOTHING,
                           self._toolbox_maker(task, attempt, item, index) if "tools" in task.with_ else None,
                           self.mcp, None if res is None else res.approval)

    def _task_event(self, topic: str, data: dict[str, Any]) -> None:
        """What a plugin emits: the run's read-back bookkeeping hears it first, then the recorder."""
        assert self.recorder is not None and self.readback is not None
        self.readback.heard(topic, data)
        self.recorder.task_event(topic, data)

    def _settle(self, task: Task, res: TaskResult) -> None:
        """What ``task``'s output carries at run time (kept as an event, for a resume)."""
        assert self.recorder is not None and self.readback is not None
        if res.fallback is None and self.readback.quiet(task.id):
            return
        origins = self.readback.settle(task.id, (res.fallback,) if res.fallback else ())
        if origins:
            how = self.guard.runtime.how(task.id)
            self.recorder.event(UNTRUSTED_EVENT, task.id, {"origins": sorted(origins), "how": how})

    def _cache_word(self, task: Task) -> bool | None:
        """What ``task`` (and the run) said about caching: ``False`` off, ``True`` asked for, ``None`` silent."""
        if not self.opts.cache or not task.cache.enabled:
            return False
        return True if task.cache.requested else None

    def _check_size(self, text: str) -> None:
        """An output over ``max_output_bytes`` (default :data:`MAX_OUTPUT_BYTES`) fails the task."""
        limit = self.pipeline.max_output_bytes or MAX_OUTPUT_BYTES
        if len(text) * 4 <= limit or len(size := text.encode()) <= limit:  # UTF-8: at most 4 bytes a character
            return
        loc = self.pipeline.locate(("max_output_bytes",)) if self.pipeline.max_output_bytes else None
        where = f"max_output_bytes at {loc}" if loc else "the default max_output_bytes"
        raise TaskError(f"output is {len(size):,} bytes, over {limit:,} ({where})", error_class="invalid_output")

    def _context_for(self, task: Task) -> dict[str, Any]:
        """The template context for ``task``: ``env`` holds only the variables its grant lets it see."""
        grant = self.guard.grant(task)
        if grant.env is True:
            return self.context
        view = self.task_contexts.get(id(grant))
        if view is None:
            view = self.task_contexts[id(grant)] = {**self.context, "env": grant.environment_view(self.context["env"])}
        return view

    def _refuse_untrusted(self, task: Task) -> None:
        """Untrusted output (llm, http) reaching one of the task's sinks without ``trust:``: permission_denied.

        Statically (what the templates read), and at run time (a file or memory an untrusted flow wrote, read back).
        """
        flows = self.guard.flows(task.id) or self.guard.runtime.flows(task.id)
        if flows:
            assert self.recorder is not None
            self.recorder.task_event("audit.permission.denied", {"task": task.id, "item": None,
                                                                 "rule": "trust", "message": flows[0].message})
            raise PermissionDenied(flows[0].message, details={"rule": "trust", "field": flows[0].field})

    def _breakers(self) -> Breakers:
        """The run's circuit breakers, opened when a task (or a tool call, :mod:`toolcalls`) first needs one."""
        if self.breakers is None:
            rec = self.recorder
            assert rec is not None
            self.breakers = Breakers(Store.open(self.opts.store_path) if self.opts.store_path else None,
                                     emit=lambda topic, data: rec.event(topic, None, data), sleep=self.opts.sleep)
        return self.breakers

    async def _guarded(self, task: Task, plugin: Plugin, ctx: TaskContext, kwargs: Mapping[str, Any],
                       policy: BreakerPolicy) -> tuple[Any, str]:
        """A call behind the task's circuit breaker."""
        assert self.breakers is not None
        key = breaker_key(policy, task.uses, kwargs)
        self.breaker_keys[task.id] = key
        await self.breakers.before(key, policy)
        try:
            result = await self._call(task, plugin, ctx, kwargs)
        except asyncio.CancelledError:
            raise
        except _PLUGIN_FAILURES as exc:
            # adaptive backoff reads the successes seen before this failure reset them
            self.breaker_successes[task.id] = self.breakers.failure(key, policy, _as_task_error(exc, task).error_class)
            raise
        self.breakers.success(key)
        return result

    async def _call(self, task: Task, plugin: Plugin, ctx: TaskContext, kwargs: Mapping[str, Any]) -> tuple[Any, str]:
        if task.timeout is not None and plugin.spec.warmup is not None:
            await plugin.spec.warmup()  # what the plugin readies first is not its call's time
        if self.inline_async and plugin.is_async:
            call = plugin.fn(ctx, **kwargs)  # the local executor would only await it: skip a layer
        else:
            call = self.executor.call(plugin, ctx, kwargs, run_on=task.run_on)
        if task.timeout is None:
            output = await call
        else:
            try:
                async with asyncio.timeout(task.timeout):
                    with deadline(task.timeout):  # holds even when the plugin blocks the loop (engine/watchdog.py)
                        output = await call
            except TimeoutError:
                raise TaskTimeout(f"timed out after {task.timeout:g}s") from None
            except Overdue:
                raise TaskTimeout(f"timed out after {task.timeout:g}s (it held the event loop past its timeout)",
                                  details={"blocked_loop": True}) from None
        return output, to_json(output)


class _TaskViews(Mapping[str, Any]):
    """``tasks`` in templates: finished tasks' status, output and error, built when read."""

    def __init__(self, results: Mapping[str, TaskResult]) -> None:
        self._results = results

    def __getitem__(self, tid: str) -> dict[str, Any]:
        res = self._results[tid]
        if not res.status.is_terminal():
            raise KeyError(tid)
        return res.view()

    def __iter__(self) -> Iterator[str]:
        return (tid for tid, r in self._results.items() if r.status.is_terminal())

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _as_task_error(exc: BaseException, task: Task) -> TaskError:
    """The boundary between plugin code and the engine: every failure becomes a TaskError."""
    if isinstance(exc, TaskError):
        return exc
    if isinstance(exc, GoatclawError):
        return TaskError(exc.message, error_class="internal")
    if isinstance(exc, ModuleNotFoundError):  # not there now, not there on a retry: say what to install, once
        wrapped = TaskError(missing_message(exc) or f"{type(exc).__name__}: {exc}", error_class="invalid_input")
        wrapped.__cause__ = exc
        return wrapped
    wrapped = TaskError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                        error_class=type(exc).__name__)
    wrapped.__cause__ = exc
    return wrapped


def _item_error(exc: TaskError, index: int) -> TaskError:
    """An item's error as its fan-out task's: the same class and hints, the message naming the item."""
    return TaskError(f"item {index}: {exc.message}", error_class=exc.error_class, retry_after=exc.retry_after,
                     details=exc.details)


def _group_order(group: Mapping[str, Task]) -> list[str]:
    """File order, moved only as far as needs within the group require."""
    order: list[str] = []
    placed: set[str] = set()
    remaining = list(group)
    while remaining:
        for tid in remaining:
            if all(n in placed or n not in group for n in group[tid].needs):
                order.append(tid)
                placed.add(tid)
                remaining.remove(tid)
                break
        else:  # a cycle: validate reports it; run the rest in file order
            order += remaining
            break
    return order


def _pending(needs: Mapping[str, Sequence[str]], selected: Mapping[str, None]) -> tuple[dict[str, int], list[str]]:
    """Each selected task's count of needs (all in the run), and the tasks that need none, in plan order."""
    counts = {tid: len(needs[tid]) for tid in selected}
    return counts, [tid for tid, left in counts.items() if left == 0]


def _warm_uses(tasks: Mapping[str, Task], selected: Iterable[str]) -> tuple[tuple[str, ...], bool]:
    """The plugins the selected tasks use, each once, and whether a judge rule or a repair fix calls an LLM."""
    uses: dict[str, None] = {}
    judged = False
    for tid in selected:
        task = tasks[tid]
        if task.uses:
            uses[task.uses] = None
        if (task.validate or task.fix is not None) and not judged:
            judged = any(r.kind == "judge" for r in task.validate) or (task.fix is not None
                                                                       and task.fix.mode == "repair")
    return tuple(uses), judged


def _standby(pipeline: Any) -> frozenset[str]:
    """Tasks that are only someone's ``fallback``: they run when needed, not on their own."""
    fallbacks = {t.fallback for t in pipeline.tasks.values() if t.fallback}
    if not fallbacks:
        return frozenset()
    needed = {n for t in pipeline.tasks.values() for n in t.needs}
    return frozenset(f for f in fallbacks if f in pipeline.tasks and f not in needed)


async def _quietly(warmup: Callable[[], Awaitable[None]]) -> None:
    """A warm-up in the background: its failure is the task's to report when it runs, not the run's."""
    with contextlib.suppress(Exception):  # the attempt awaits the warm-up again and sees the error there
        await warmup()


def _select(plan: Plan, only: tuple[str, ...], standby: frozenset[str] = frozenset()) -> dict[str, None]:
    """The tasks to run, in plan order: all, or ``only`` plus everything they need."""
    if not only:
        return {tid: None for tid in plan.order if tid not in standby}
    unknown = [t for t in only if t not in plan.pipeline.tasks]
    if unknown:
        raise GoatclawError(f"--only names unknown task(s): {', '.join(unknown)}")
    wanted = set(only)
    for tid in only:
        wanted |= plan.ancestors(tid)
    return {tid: None for tid in plan.order if tid in wanted and tid not in standby}
