"""Recording a run: events to the bus, rows to the store, in group commits.

Every event gets a sequence number and is published on the bus at once (the live view
sees it immediately). Rows are buffered and committed in one transaction per batch:
tasks finishing together share a commit, and a finished task is durable a moment after
it finishes. Runs of fewer than 4,000 tasks commit in-line at the end of the event
loop's current turn (cheaper than starting a process for them); larger runs hand their
batches to a writer process on the other core, so SQLite's work overlaps with the run.
Declared secret values are masked in everything written.

A commit that fails is never silent. The store tries it again for about two seconds
(:meth:`Store.commit`); if it still fails, the batch stays here (its rows go back in
front of what came since), no task starts any more (:meth:`Recorder.task_started`
raises the store's error), and the run's last commit tries everything once more. Should
that fail too, the audit rows of side effects that already happened are the last thing
given up: they are written alone, with a ``store.lost`` audit row counting what is lost,
the run is marked failed, and :meth:`Recorder.finish_run` raises a
:class:`~goatclaw.errors.StoreError` naming the store, the cause and what was lost. A
run whose commit failed never ends ``succeeded``, even when a later try stored it all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from goatclaw.engine import tasklogs
from goatclaw.engine.state import RunResult, RunStatus, TaskResult, TaskState
from goatclaw.errors import GoatclawError, StoreError
from goatclaw.events import Bus, Event
from goatclaw.jsontext import dumps, plain
from goatclaw.plugin import AUDIT_PREFIX
from goatclaw.security.audit import sealer
from goatclaw.security.auditkey import audit_key, with_audit_key
from goatclaw.security.secrets import Redactor
from goatclaw.spec.model import Pipeline
from goatclaw.store import DERIVED_ENDS, LOST_ACTION, Store, TaskRow, describe_rows, plain_end

__all__ = ["Recorder"]

_FLUSH_ROWS = 2000
#: From this many tasks on, a child process may commit the rows (see :func:`_writer_wanted`); smaller
#: runs write in-line. (benchmarks/engine.py: in-line is faster up to a few thousand no-op tasks;
#: forking the writer and copying pages on write cost more than the commits it takes over.)
_PROCESS_WRITER_TASKS = 4000
#: Chooses where a run's rows are committed: ``auto`` (the default), ``process`` or ``inline``.
WRITER_ENV = "GOATCLAW_WRITER"
_PROCESS_FLUSH_SECONDS = 0.01
#: How long the end of a run waits for the writer process to commit what it was sent.
_WRITER_ANSWER_SECONDS = 300.0
#: The kinds of rows a batch holds (keyword arguments of Store.write_batch).
_ROWS = ("events", "tasks", "attempts", "cache", "dead", "audit", "origins", "logs")
#: Task log lines are committed at most this long after they are logged (``runs logs --follow`` sees them).
_LOG_FLUSH_SECONDS = 0.25
#: Task starts are committed at most this long after they happen (a reader of the store sees tasks running).
_START_FLUSH_SECONDS = 0.2

_TOPICS = {state: f"task.{state.value}" for state in TaskState}
_VALUES = {state: state.value for state in TaskState}  # (an enum's .value is a property: slow, once a task)
#: The states whose plain end a task row stands for (goatclaw.store: one row a task, its events read from it).
_DERIVED = frozenset(state for state in TaskState if state.value in DERIVED_ENDS)
#: Every event's data as JSON text (orjson; the stdlib for what it refuses).
_EVENT_JSON = dumps


class Recorder:
    """Turns what the engine does into events and stored rows."""

    def __init__(self, store: Store | None, bus: Bus, run_id: str, *,
                 secrets: tuple[str, ...] | Mapping[str, str] = ()) -> None:
        self.store = store
        self.bus = bus
        self.run_id = run_id
        key = audit_key()
        if key is not None:  # the audit key is masked like a declared secret
            secrets = (with_audit_key(secrets) if isinstance(secrets, Mapping)
                       else (*secrets, key.decode("utf-8", "replace")))
        values = secrets.values() if isinstance(secrets, Mapping) else secrets
        self.secrets = tuple(sorted((s for s in values if s and len(s) >= 3), key=len, reverse=True))
        #: Masks the secrets (by name) and their encoded forms (base64, URL, hex, JSON) in everything written.
        self.redactor = Redactor(secrets if isinstance(secrets, Mapping) else self.secrets)
        self._masks = bool(self.redactor)  # whether anything is masked at all (no secrets, no audit key: nothing)
        self.seq = 0
        self.plugins: Mapping[str, str] = {}  # task id -> plugin, stored with each task row
        self.events: list[tuple[Any, ...]] = []
        #: Tasks started since the last commit: ``task id -> (seq, ts)`` of their ``task.started``, which their
        #: row keeps if they end before the next commit (else it is stored as an event then: see :meth:`_take`).
        self.starts: dict[str, tuple[int, float]] = {}
        self.tasks: list[tuple[Any, ...]] = []
        self.attempts: list[tuple[Any, ...]] = []
        self.cache: list[tuple[Any, ...]] = []
        self.dead: list[tuple[Any, ...]] = []
        self.audit: list[tuple[Any, ...]] = []
        self.origins: list[tuple[Any, ...]] = []  # files written, with the untrusted origins of their content
        self.logs: list[tuple[Any, ...]] = []  # task log lines (goatclaw.engine.tasklogs), masked
        self.log_scopes: dict[Any, tasklogs.Scope] = {}  # attempts in progress that logged (their bounds)
        self._log_flush_pending = False
        self._capturing = False  # tasklogs.install() was called for this run (undone at its end)
        self._run_token: Any = None
        self._loop_thread = threading.get_ident()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._audit_lock = threading.Lock()
        self._seal = sealer(key)  # keyed when the audit key is given (goatclaw.security.auditkey)
        self.denials_audited: set[str | None] = set()  # tasks whose permission.denied is in the chain already
        self._bus_errors = len(bus.errors)
        self._flush_pending = False
        self._start_flush_pending = False
        self._writer: _Writer | None = None
        #: The first commit that failed for good: nothing more starts, and the run ends failed.
        self.failure: StoreError | None = None

    # -- run -------------------------------------------------------------------------

    def start_run(self, pipeline: Pipeline, *, vars: dict[str, Any], started_at: float, tasks: list[str],
                  resume: bool = False, trigger: str | None = None) -> None:
        """Record the run as started (committed at once: a crash after this still shows the run).

        With ``resume`` the stored run is marked running again and its event numbers go on.
        ``trigger`` (what started it: ``cli``, ``schedule``, …) goes into the ``run.started`` event.
        """
        self.plugins = pipeline.plugins()
        try:
            self._loop = asyncio.get_running_loop()  # where log lines logged in a plugin's thread schedule their commit
        except RuntimeError:
            self._loop = None
        self._loop_thread = threading.get_ident()
        started = {"pipeline": pipeline.name, "tasks": tasks, **({"trigger": trigger} if trigger else {})}
        if self.store is not None and not resume:  # the run's row and its run.started event: one commit
            ts = time.time()
            self.event("run.started", None, started, ts=ts, publish=False)  # published once it is stored
            first, self.events = self.events, []
            self.store.create_run(self.run_id, pipeline.name, file=str(pipeline.file) if pipeline.file else None,
                                  digest=pipeline.digest, vars=self.redactor.mask_data(vars),
                                  started_at=started_at, events=first)
            if self.bus.handlers("run.started"):
                self.publish("run.started", None, started, seq=self.seq, ts=ts)
        else:
            if self.store is not None:
                self.seq = self.store.resume_run(self.run_id)
            self.event("run.resumed" if resume else "run.started", None, started)
        self._write()
        self.check()
        self._run_token = tasklogs.run_started(self)
        if self.store is not None and not self._capturing:
            tasklogs.install()
            self._capturing = True
        if self.store is not None and _writer_wanted(len(tasks)):
            self._writer = _Writer(self.store, self.run_id)

    def finish_run(self, result: RunResult, *, last_look: Callable[[Store, RunResult], Any] | None = None) -> None:
        """Record the run's end and commit everything still kept (one transaction).

        After a commit that failed, the run ends failed and this raises :class:`StoreError`
        (what was lost, if the last commit fails too: see the module's docstring).
        ``last_look`` is called with the store and ``result`` once everything is committed,
        before the store closes; an exception from it is logged, and the run is not touched.
        """
        failure = self._failure()
        if failure is not None:  # a run whose rows could not be committed never reports success
            result.status = RunStatus.FAILED
            result.error = result.error or str(failure)
        topic, ts = f"run.{result.status.value}", time.time()
        counts = result.counts()
        data = {"counts": counts, "error": result.error,
                "duration": None if result.finished_at is None else result.finished_at - result.started_at}
        self.event(topic, None, data, ts=ts, publish=False)  # published once it is known whether it was stored
        seq = self.seq
        summary = json.dumps({"counts": counts, "critical_path": result.critical_path})
        run = (result.status.value, result.finished_at, self._mask(result.error), summary, self.run_id)
        try:
            error = self._write_last(run)
            failure = self._failure()
            if error is None and failure is not None and self.store is not None:
                error = f"{failure}; everything was stored on a later try, and the run is marked failed"
                try:
                    self.store.fail_run(self.run_id, self._mask(error) or "", pauses=())
                except StoreError as exc:
                    error += f" (marking it failed did not work either: {exc})"
            if error is not None:
                result.status, result.error = RunStatus.FAILED, self._mask(error)
                topic, data = "run.failed", {**data, "error": result.error}
            if self.bus.handlers(topic):
                self.publish(topic, None, data, seq=seq, ts=ts)
            if error is None and len(self.bus.errors) > self._bus_errors:
                self._subscriber_failed()  # a subscriber that raised on the run's end: its dead letter is kept too
                self._write()
            if error is None and last_look is not None and self.store is not None:
                try:
                    last_look(self.store, result)
                except Exception:  # a reader's problem, after the run was stored: logged, not the run's
                    logging.getLogger("goatclaw.engine").debug("the last look at run %s's store failed",
                                                               self.run_id, exc_info=True)
        finally:
            if self._capturing:
                tasklogs.uninstall()
                self._capturing = False
            if self._run_token is not None:
                tasklogs.run_ended(self._run_token)
                self._run_token = None
            if self.store is not None:
                self.store.close()
                self.store = None
        if error is not None:
            raise StoreError(error)

    def check(self) -> None:
        """Raise the store's error if a commit failed for good (the run stops: nothing may run unrecorded)."""
        failure = self._failure()
        if failure is not None:
            raise StoreError(f"{failure}; the run stops") from None

    def _failure(self) -> StoreError | None:
        if self.failure is None and self._writer is not None and self._writer.failure is not None:
            self._failed(self._writer.failure)
        return self.failure

    # -- tasks -----------------------------------------------------------------------

    def task_started(self, task_id: str, at: float) -> None:
        """A task began; refused (:meth:`check`) once a commit failed for good.

        Published at once; stored with the task's row if it ends before the next commit.
        """
        if self.failure is not None or self._writer is not None:
            self.check()
        seq = self._numbered("task.started", task_id, None, at)
        if self.store is not None:
            self.starts[task_id] = (seq, at)
        self._check_subscribers()
        if not self._start_flush_pending:
            self._flush_starts()

    def _flush_starts(self) -> None:
        """Commit task starts within :data:`_START_FLUSH_SECONDS`, not only with the next task to finish.

        A reader of the store (the dashboard's live run, ``runs events --follow``) then sees a
        long task running while it runs; at most a few extra commits a second, whatever the run.
        """
        if self._start_flush_pending or self.store is None or self._loop is None:
            return
        self._start_flush_pending = True

        def flush() -> None:
            self._start_flush_pending = False
            self._write()

        try:
            asyncio.get_running_loop().call_later(_START_FLUSH_SECONDS, flush)
        except RuntimeError:
            self._start_flush_pending = False

    def task_finished(self, res: TaskResult) -> None:
        """A task reached a terminal state: store its row and publish ``task.<state>``.

        A plain end (no error, no fan-out) of a task that succeeded, was cached or skipped is
        kept in the task's row with its start, not as event rows (goatclaw.store).
        """
        topic = _TOPICS[res.status]
        start = self.starts.pop(res.id, None)
        if res.error is None and res.items is None and res.status in _DERIVED and res.finished_at is not None and (
                self.store is None or not self._masks or self._plain_end_kept(res)):
            seq = self._numbered(topic, res.id, lambda: {"attempts": res.attempts, "duration": _rounded(res.duration)},
                                 res.finished_at)
            self._keep_row(res, None if start is None else start[0], seq)
            self._check_subscribers()
            if not self._flush_pending:
                self._schedule_flush()
            return
        if start is not None:
            self.events.append((self.run_id, start[0], start[1], "task.started", res.id, None))
        self.task_kept(res)
        data: dict[str, Any] = {"attempts": res.attempts, "duration": _rounded(res.duration)}
        if res.error is not None:
            data["error"] = res.error
            data["error_class"] = res.error_class
        if res.items is not None:
            data["items"] = res.items
        self.event(topic, res.id, data, ts=res.finished_at)
        self._schedule_flush()

    def _plain_end_kept(self, res: TaskResult) -> bool:
        """Whether masking leaves ``res``'s plain end as it is (a secret like ``1, "d`` would mask it in an event)."""
        text = plain_end(res.attempts, res.duration)
        return self._mask(text) == text

    def task_kept(self, res: TaskResult) -> None:
        """Store a task's row without publishing anything (a fork's copy of a task it did not run)."""
        self._keep_row(res, None, None)

    def _keep_row(self, res: TaskResult, started_seq: int | None, finished_seq: int | None) -> None:
        output, error = res.output_json, res.error
        if output is None and res.output is not None:
            output = dumps(res.output)
        if self._masks:
            output, error = self._mask(output), self._mask(error)
        self.tasks.append((self.run_id, res.id, _VALUES[res.status], res.attempts, res.started_at, res.finished_at,
                           output, error, res.error_class, self.plugins.get(res.id), started_seq, finished_seq))

    def attempt(self, task_id: str, index: int | None, attempt: int, status: str, started: float,
                error_class: str | None, error: str | None) -> None:
        """One attempt of a task (or of one item of a fan-out) ended."""
        self.attempts.append((self.run_id, task_id, -1 if index is None else index, attempt, status, started,
                              time.time(), error_class, self._mask(error)))
        if status == "failed":
            self.event("task.attempt_failed", task_id, {"attempt": attempt, "item": index,
                                                        "error_class": error_class, "error": error})

    def stored_tasks(self, run_id: str | None = None) -> list[TaskRow]:
        """The run's (or another stored run's) task rows as stored (what a resume starts from)."""
        return [] if self.store is None else self.store.tasks(run_id or self.run_id)

    def cached(self, key: str, ttl: float | None) -> str | None:
        """A cached output's JSON, if the store has one under ``key`` (younger than ``ttl``)."""
        return None if self.store is None else self.store.cached(key, ttl)

    def cached_many(self, keys: list[str]) -> dict[str, tuple[str, float]]:
        """Cached outputs and their age for many keys at once (see :meth:`Store.cached_many`)."""
        return {} if self.store is None or not keys else self.store.cached_many(keys)

    def cache_put(self, key: str, plugin: str, output_json: str) -> None:
        """Keep a task's output under its cache key (committed with the task's row)."""
        masked = self._mask(output_json)
        if masked == output_json:  # an output holding a secret is never cached
            self.cache.append((key, plugin, output_json, time.time()))

    def dead_letter(self, task_id: str | None, inputs: Any, error_class: str | None, error: str | None, *,
                    kind: str = "task", topic: str | None = None) -> None:
        """Keep a task that failed for good (or an event a subscriber choked on) with its inputs."""
        text = json.dumps(inputs, ensure_ascii=False, default=plain)
        self.dead.append((kind, self.run_id, task_id, topic, self._mask(text), error_class, self._mask(error),
                          time.time()))
        self.event("dead_letter.added", task_id, {"kind": kind, "topic": topic, "error_class": error_class})

    def task_event(self, topic: str, data: dict[str, Any]) -> None:
        """An event a plugin emitted through its TaskContext (``audit.*`` go to the audit chain)."""
        if topic.startswith(AUDIT_PREFIX):
            self.audited(topic[len(AUDIT_PREFIX):], data.pop("task", None), data)
            return
        self.event(topic, data.get("task"), data)
        if topic == "llm.call":  # every LLM call (llm tasks, judges, repairs, plugins using goatclaw.llm)
            self.audited("llm.called", data.get("task"), {
                "item": data.get("item"), "model": data.get("model"), "tokens": data.get("usage"),
                "cost_usd": data.get("cost_usd"), "source": data.get("source")})

    def task_log(self, scope: Any, ts: float, level: int, source: str, message: str) -> None:
        """One line of a task attempt's log (:mod:`goatclaw.engine.tasklogs`), masked; committed within a moment.

        Called from the event loop or from a blocking plugin's thread.
        """
        message = self._mask(message) or ""
        if self.bus.handlers(tasklogs.TOPIC):  # published, never stored as an event (the OTel exporter hears it)
            self._publish_log(scope, ts, level, source, message)
        if self.store is None:
            return
        row = (self.run_id, scope.task_id, -1 if scope.item is None else scope.item, scope.attempt, ts, level,
               source, message)
        with self._audit_lock:
            self.logs.append(row)
            if self._log_flush_pending or self._loop is None:
                return
            self._log_flush_pending = True
        try:
            self._loop.call_soon_threadsafe(self._loop.call_later, _LOG_FLUSH_SECONDS, self._flush_logs)
        except RuntimeError:  # the loop is closed: the run's last commit takes the line
            pass

    def _publish_log(self, scope: Any, ts: float, level: int, source: str, message: str) -> None:
        data = {"level": level, "source": source, "message": message, "item": scope.item, "attempt": scope.attempt}
        if threading.get_ident() == self._loop_thread or self._loop is None:
            self.publish(tasklogs.TOPIC, scope.task_id, data, seq=self.seq, ts=ts)
            return
        try:  # from a blocking plugin's thread: the bus is the event loop's
            self._loop.call_soon_threadsafe(lambda: self.publish(tasklogs.TOPIC, scope.task_id, data, seq=self.seq,
                                                                 ts=ts))
        except RuntimeError:
            pass

    def _flush_logs(self) -> None:
        with self._audit_lock:
            self._log_flush_pending = False
        self.flush()

    def file_origins(self, rows: list[tuple[Any, ...]]) -> None:
        """Files a task wrote ``(real_path, sha256, origins_json, run_id, task_id, ts)``: committed with its row."""
        if self.store is not None:
            self.origins += rows

    def audited(self, action: str, task_id: str | None, detail: dict[str, Any]) -> None:
        """A side effect for the audit chain (secrets masked); committed with the next batch, in order."""
        if action == "permission.denied":
            self.denials_audited.add(task_id)
        if self.store is None:
            return
        text = self._mask(_EVENT_JSON(detail)) or "{}"
        with self._audit_lock:  # blocking plugins audit from their threads
            self.audit.append((time.time(), self.run_id, task_id, action, text))

    # -- events ----------------------------------------------------------------------

    def event(self, topic: str, task_id: str | None, data: dict[str, Any] | None, *, ts: float | None = None,
              publish: bool = True) -> None:
        """Publish an event now (unless ``publish`` is false: see :meth:`publish`) and buffer it for the store."""
        ts = time.time() if ts is None else ts
        if publish:
            seq = self._numbered(topic, task_id, data, ts)
        else:
            self.seq += 1
            seq = self.seq
        if self.store is not None:
            text = self._mask(_EVENT_JSON(data)) if data is not None else None
            self.events.append((self.run_id, seq, ts, topic, task_id, text))
            if len(self.events) >= _FLUSH_ROWS:
                self.flush()
        self._check_subscribers()

    def _numbered(self, topic: str, task_id: str | None, data: dict[str, Any] | Callable[[], dict[str, Any]] | None,
                  ts: float) -> int:
        """The next event number, with the event published under it (``data`` may be built only if heard)."""
        self.seq += 1
        if self.bus.handlers(topic):
            payload = {} if data is None else data() if callable(data) else data
            self.publish(topic, task_id, payload, seq=self.seq, ts=ts)
        return self.seq

    def _check_subscribers(self) -> None:
        """Subscribers that raised on events numbered so far become dead letters (after the event is kept)."""
        if len(self.bus.errors) > self._bus_errors:
            self._subscriber_failed()

    def publish(self, topic: str, task_id: str | None, data: dict[str, Any], *, seq: int, ts: float) -> None:
        """Publish an event numbered ``seq`` on the bus (secrets masked), without storing it."""
        if self.redactor:  # the live view and every subscriber see what the store keeps
            data = self.redactor.mask_data(data)
        self.bus.publish(Event(topic, self.run_id, seq, ts, task_id, data))

    def _subscriber_failed(self) -> None:
        """Subscribers that raised: each event and error becomes a dead letter (never an exception)."""
        failures = self.bus.errors[self._bus_errors:]
        self._bus_errors = len(self.bus.errors)
        for ev, exc in failures:
            if ev.topic == "dead_letter.added":
                continue  # a subscriber failing on dead-letter news would loop
            self.dead_letter(ev.task, {"topic": ev.topic, "seq": ev.seq, "task": ev.task, "data": ev.data},
                             type(exc).__name__, str(exc), kind="subscriber", topic=ev.topic)

    # -- writing ---------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if self._flush_pending or self.store is None:  # (task_finished checks the first on its own, the hot path)
            return
        if len(self.tasks) >= _FLUSH_ROWS:
            self.flush()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_pending = True
        if self._writer is None:
            loop.call_soon(self.flush)
        else:  # the writer process commits every few milliseconds; each send has a fixed cost
            loop.call_later(_PROCESS_FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        """Commit everything buffered in one transaction (never raises: a failure is kept in :attr:`failure`)."""
        self._flush_pending = False
        self._write()

    def _write(self) -> None:
        if self.store is None or not (self.events or self.tasks or self.attempts or self.audit or self.logs
                                      or self.starts):
            return
        if self._writer is not None:
            self._send(self._take())
        elif self.failure is None:  # after a failure the rows wait for the run's last commit
            batch = self._take()
            try:
                self.store.write_batch(**batch)
            except StoreError as exc:
                self._keep(batch)
                self._failed(exc)
            except BaseException:  # Ctrl-C while the commit waited to try again: the rows wait for the last commit
                self._keep(batch)
                raise

    def _write_last(self, run: tuple[Any, ...]) -> str | None:
        """The run's last commit (through the writer process if there is one); its error, if it failed for good."""
        if self.store is None:
            return None
        if self._writer is not None:
            self._send(self._take(run))
        if self._writer is not None:
            writer, self._writer = self._writer, None
            error = writer.close()
            self.failure = self.failure or writer.failure
            return error
        lost = _commit_last(self.store, self._take(run), self.run_id)
        return None if lost is None else str(lost)

    def _send(self, batch: dict[str, Any]) -> None:
        """A batch to the writer process; if it died, the batch is kept and the rows are written here from now on."""
        assert self._writer is not None
        try:
            self._writer.put(batch)
        except StoreError as exc:
            self._keep(batch)
            self._writer.abandon()
            self._writer = None
            if self.failure is None:
                self._failed(exc)
            return
        if self.failure is None and self._writer.failure is not None:
            self._failed(self._writer.failure)

    def _failed(self, exc: StoreError) -> None:
        """A commit failed for good: nothing more starts (the live view hears it; stored if a later try works)."""
        self.failure = exc
        self.event("store.failed", None, {"error": str(exc)})

    def _take(self, run: tuple[Any, ...] | None = None) -> dict[str, Any]:
        """Everything buffered, as one batch (the buffers start again empty)."""
        if self.starts:  # tasks still running: their starts are stored as events now (readers see them run)
            self.events += [(self.run_id, seq, ts, "task.started", tid, None) for tid, (seq, ts) in self.starts.items()]
            self.starts = {}
        batch = {"events": self.events, "tasks": self.tasks, "attempts": self.attempts, "run": run,
                 "cache": self.cache, "dead": self.dead, "origins": self.origins, "seal": self._seal}
        self.origins = []
        with self._audit_lock:
            batch["audit"], self.audit = self.audit, []
            batch["logs"], self.logs = self.logs, []
        self.events, self.tasks, self.attempts, self.cache, self.dead = [], [], [], [], []
        return batch

    def _keep(self, batch: dict[str, Any]) -> None:
        """A batch that could not be committed goes back in front of what was buffered since."""
        self.events[:0] = batch["events"]
        self.tasks[:0] = batch["tasks"]
        self.attempts[:0] = batch["attempts"]
        self.cache[:0] = batch["cache"]
        self.dead[:0] = batch["dead"]
        self.origins[:0] = batch["origins"]
        with self._audit_lock:
            self.audit[:0] = batch["audit"]
            self.logs[:0] = batch["logs"]

    def _mask(self, text: str | None) -> str | None:
        return self.redactor.mask(text)


def _rounded(duration: float | None) -> float | None:
    """A duration as events give it (to the microsecond)."""
    return None if duration is None else round(duration, 6)


def _writer_wanted(tasks: int) -> bool:
    """Whether a run of ``tasks`` tasks hands its commits to a writer process (:data:`WRITER_ENV`).

    ``process`` always does and ``inline`` never does. ``auto`` does from
    :data:`_PROCESS_WRITER_TASKS` tasks on, and only while the machine has two cores to spare
    (load average at most the cores less two): the writer overlaps SQLite's work with the
    run only on a core of its own, next to the run's. With one row a task, committing
    in-line costs the run little, and the writer loses wherever it shares a core
    (benchmarks/engine.py on 2 cores, 10k no-op tasks: 25.6 µs a task in-line against 32.5
    through the writer at load 1, 25 against 32 at load 3; at 100k 29.7 against 30.4).
    """
    how = os.environ.get(WRITER_ENV, "auto").strip().lower() or "auto"
    if how not in ("auto", "process", "inline"):
        raise GoatclawError(f"{WRITER_ENV} must be auto, process or inline, not {how!r}")
    if how != "auto":
        return how == "process"
    if tasks < _PROCESS_WRITER_TASKS:
        return False
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average here: assume the machine is as busy as it can be
        return False
    return cores >= 3 and load <= cores - 2


def _merge(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """Several queued batches as one transaction's worth of rows."""
    if len(batches) == 1:
        return batches[0]
    merged: dict[str, Any] = {"events": [], "tasks": [], "attempts": [], "run": None, "cache": [], "dead": [],
                              "audit": [], "origins": [], "logs": []}
    for batch in batches:
        for key in _ROWS:
            merged[key] += batch.get(key, [])
        merged["run"] = batch["run"] or merged["run"]
        merged["seal"] = batch.get("seal") or merged.get("seal")
    return merged


def _commit_last(store: Store, batch: dict[str, Any], run_id: str) -> StoreError | None:
    """A run's last commit: everything kept, tried again briefly; the error if it still failed, naming what was lost.

    Failing that, what matters most is written, one try each: the audit rows of side
    effects that already happened with a ``store.lost`` row counting what is lost (or
    that row alone), then the run marked failed.
    """
    try:
        store.write_batch(**batch)
        return None
    except StoreError as exc:
        cause = str(exc)
    lost = {name: len(batch[name]) for name in _ROWS if batch[name]}
    saved = ""
    for audit in (batch["audit"], []):
        counts = {name: n for name, n in lost.items() if name != "audit" or not audit}
        marker = (time.time(), run_id, None, LOST_ACTION, dumps({"cause": cause, "lost": counts}))
        rows = [*audit, marker] if counts else audit
        if not rows:
            continue
        try:
            store.write_batch(audit=rows, seal=batch["seal"], pauses=())
        except StoreError:
            continue
        lost = counts
        kept = [f"its {len(audit)} audit rows"] if audit else []
        kept += [f"a {LOST_ACTION} row in the audit chain that records the loss"] if counts else []
        saved = "; kept: " + " and ".join(kept)
        break
    what = describe_rows(lost) or "nothing but the run's end"
    message = f"{cause}; lost: {what}{saved}"
    try:
        store.fail_run(run_id, message, unstored=lost, pauses=())
    except StoreError:
        message += " (the run could not be marked failed in the store either)"
    return StoreError(message)


class _Writer:
    """A child process that commits batches in order, on its own core.

    SQLite's work and the Python-to-C binding of every row then cost the run only the
    pickling of each batch. The child opens its own connection; when the parent dies
    (even by SIGKILL) the child sees the pipe close, commits what it received and exits.
    When a commit fails for good the child says so at once (:attr:`failure`), keeps what
    it was sent, and makes the run's last commit (:func:`_commit_last`) when told to stop.

    The child is forked (fast) when this process has a single thread; with other threads
    it is spawned, because a fork copies locks that another thread may hold at that
    instant (SQLite's own mutexes among them) and the child would wait on them forever.
    """

    def __init__(self, store: Store, run_id: str) -> None:
        import multiprocessing  # only runs this large have a writer: a small run does not pay its imports (7 ms)

        ctx = multiprocessing.get_context("fork" if threading.active_count() == 1 else "spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_writer_main, args=(child, str(store.path), run_id),
                                   name="goatclaw-store-writer", daemon=True)
        self.process.start()
        child.close()
        #: The child's first commit that failed for good (it keeps the rows for the last commit).
        self.failure: StoreError | None = None

    def put(self, batch: dict[str, Any]) -> None:
        """Send a batch to be committed (and read whether a commit failed meanwhile)."""
        try:
            self.conn.send_bytes(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
            while self.conn.poll():
                self._answer(self.conn.recv_bytes())
        except (BrokenPipeError, ConnectionResetError, EOFError) as exc:
            raise StoreError(f"the store writer process died ({exc}): what it had not committed is lost") from None

    def close(self) -> str | None:
        """Commit everything sent and stop the child; the error of its last commit, if it failed."""
        error: str | None = None
        try:
            self.conn.send_bytes(b"")
            deadline = time.monotonic() + _WRITER_ANSWER_SECONDS
            while True:
                if not self.conn.poll(max(0.0, deadline - time.monotonic())):
                    error = f"the store writer process did not finish within {_WRITER_ANSWER_SECONDS:g}s"
                    break
                answer = self._answer(self.conn.recv_bytes())
                if answer is not None:
                    error = answer or None
                    break
        except (BrokenPipeError, ConnectionResetError, EOFError) as exc:
            error = f"the store writer process died ({exc}): what it had not committed is lost"
        self.abandon()
        return error

    def abandon(self) -> None:
        """Stop the child (a stuck one is killed) and close the pipe."""
        self.conn.close()
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)

    def _answer(self, message: bytes) -> str | None:
        """The child's word: ``F`` its first failed commit (``None`` here), ``D`` the last commit's error or ''."""
        text = message[1:].decode()
        if message[:1] == b"F":
            self.failure = self.failure or StoreError(text)
            return None
        return text


def _writer_main(conn: Any, path: str, run_id: str) -> None:
    """The writer process: receive pickled batches and commit them (merging what queued up), in order.

    After a commit that failed for good, batches are kept, and the last commit (told by an
    empty message, or by the parent's death) tries them all once more.
    """
    error = ""
    try:
        store = Store.open(path)
    except StoreError as exc:
        _say(conn, b"D", str(exc))
        return
    kept: list[dict[str, Any]] = []
    failed = False
    try:
        stop = False
        while not stop:
            received, stop = _receive(conn)
            kept += received
            if kept and not failed:
                try:
                    store.write_batch(**_merge(kept))
                    kept = []
                except StoreError as exc:
                    failed = True
                    _say(conn, b"F", str(exc))
        if kept:
            lost = _commit_last(store, _merge(kept), run_id)
            error = "" if lost is None else str(lost)
    except Exception as exc:  # reported to the parent on close
        error = f"the store writer failed: {type(exc).__name__}: {exc}"
    finally:
        store.close()
    _say(conn, b"D", error)


def _receive(conn: Any) -> tuple[list[dict[str, Any]], bool]:
    """The next batch and those queued behind it (up to 64); and whether the parent said stop (or is gone)."""
    batches: list[dict[str, Any]] = []
    while not batches or (conn.poll() and len(batches) < 64):
        try:
            data = conn.recv_bytes()
        except EOFError:  # the parent is gone: keep what arrived
            return batches, True
        if not data:
            return batches, True
        batches.append(pickle.loads(data))
    return batches, False


def _say(conn: Any, kind: bytes, text: str) -> None:
    try:
        conn.send_bytes(kind + text.encode("utf-8", "backslashreplace"))
    except OSError:
        pass
