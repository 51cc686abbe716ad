"""Recording a run: events to the bus, rows to the store, in group commits.

Every event gets a sequence number and is published on the bus at once (the live view
sees it immediately). Rows are buffered and committed in one transaction per batch:
tasks finishing together share a commit, and a finished task is durable a moment after
it finishes. Runs of fewer than 4,000 tasks commit in-line at the end of the event
loop's current turn (cheaper than starting a process for them); larger runs hand their
batches to a writer process on the other core, so SQLite's work overlaps with the run.
Declared secret values are masked in everything written.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import pickle
import threading
import time
from collections.abc import Mapping
from typing import Any

from goatclaw.engine.state import RunResult, TaskResult, TaskState
from goatclaw.errors import StoreError
from goatclaw.events import Bus, Event
from goatclaw.jsontext import dumps, plain
from goatclaw.plugin import AUDIT_PREFIX
from goatclaw.security.audit import sealer
from goatclaw.security.auditkey import audit_key, with_audit_key
from goatclaw.security.secrets import Redactor
from goatclaw.spec.model import Pipeline
from goatclaw.store import Store, TaskRow

__all__ = ["Recorder"]

_FLUSH_ROWS = 2000
#: From this many tasks on, a child process commits the rows; smaller runs write in-line.
#: (benchmarks/engine.py: in-line is faster up to a few thousand no-op tasks; forking the
#: writer and copying pages on write cost more than the commits it takes over.)
_PROCESS_WRITER_TASKS = 4000
_PROCESS_FLUSH_SECONDS = 0.01
#: How long the end of a run waits for the writer process to commit what it was sent.
_WRITER_ANSWER_SECONDS = 300.0



_TOPICS = {state: f"task.{state.value}" for state in TaskState}
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
        self.seq = 0
        self.plugins: dict[str, str] = {}  # task id -> plugin, stored with each task row
        self.events: list[tuple[Any, ...]] = []
        self.tasks: list[tuple[Any, ...]] = []
        self.attempts: list[tuple[Any, ...]] = []
        self.cache: list[tuple[Any, ...]] = []
        self.dead: list[tuple[Any, ...]] = []
        self.audit: list[tuple[Any, ...]] = []
        self.origins: list[tuple[Any, ...]] = []  # files written, with the untrusted origins of their content
        self._audit_lock = threading.Lock()
        self._seal = sealer(key)  # keyed when the audit key is given (goatclaw.security.auditkey)
        self.denials_audited: set[str | None] = set()  # tasks whose permission.denied is in the chain already
        self._bus_errors = len(bus.errors)
        self._flush_pending = False
        self._writer: _Writer | None = None

    # -- run -------------------------------------------------------------------------

    def start_run(self, pipeline: Pipeline, *, vars: dict[str, Any], started_at: float, tasks: list[str],
                  resume: bool = False) -> None:
        """Record the run as started (committed at once: a crash after this still shows the run).

        With ``resume`` the stored run is marked running again and its event numbers go on.
        """
        self.plugins = {tid: t.uses for group in (pipeline.tasks, pipeline.on_failure, pipeline.finally_)
                        for tid, t in group.items()}
        if self.store is not None and resume:
            self.seq = self.store.resume_run(self.run_id)
        elif self.store is not None:
            self.store.create_run(self.run_id, pipeline.name, file=str(pipeline.file) if pipeline.file else None,
                                  digest=pipeline.digest, vars=self.redactor.mask_data(vars),
                                  started_at=started_at)
        self.event("run.resumed" if resume else "run.started", None, {"pipeline": pipeline.name, "tasks": tasks})
        self._write()
        if self.store is not None and len(tasks) >= _PROCESS_WRITER_TASKS:
            self._writer = _Writer(self.store)

    def finish_run(self, result: RunResult) -> None:
        """Record the run's end and flush everything (one transaction)."""
        self.event(f"run.{result.status.value}", None,
                   {"counts": result.counts(), "error": result.error,
                    "duration": None if result.finished_at is None else result.finished_at - result.started_at})
        summary = json.dumps({"counts": result.counts(), "critical_path": result.critical_path})
        self._write(run=(result.status.value, result.finished_at, self._mask(result.error), summary, self.run_id))
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.store is not None:
            self.store.close()
            self.store = None

    # -- tasks -----------------------------------------------------------------------

    def task_started(self, task_id: str, at: float) -> None:
        """A task began."""
        self.event("task.started", task_id, None, ts=at)

    def task_finished(self, res: TaskResult) -> None:
        """A task reached a terminal state: store its row and publish ``task.<state>``."""
        output = res.output_json
        if output is None and res.output is not None:
            output = dumps(res.output)
        self.tasks.append((self.run_id, res.id, res.status.value, res.attempts, res.started_at, res.finished_at,
                           self._mask(output), self._mask(res.error), res.error_class, self.plugins.get(res.id)))
        topic = _TOPICS[res.status]
        duration = None if res.duration is None else round(res.duration, 6)
        if res.error is None and res.items is None:
            # the common case, formatted without the json module (this runs once per task)
            shown = "null" if res.duration is None else f"{res.duration:.6f}"
            text = f'{{"attempts": {res.attempts}, "duration": {shown}}}'
            self.event(topic, res.id, None, ts=res.finished_at, text=text,
                       lazy=lambda: {"attempts": res.attempts, "duration": duration})
        else:
            data: dict[str, Any] = {"attempts": res.attempts, "duration": duration}
            if res.error is not None:
                data["error"] = res.error
                data["error_class"] = res.error_class
            if res.items is not None:
                data["items"] = res.items
            self.event(topic, res.id, data, ts=res.finished_at)
        self._schedule_flush()

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
              text: str | None = None, lazy: Any = None) -> None:
        """Publish an event now and buffer it for the store.

        ``text`` is the data already as JSON (then ``lazy`` builds the dict for subscribers).
        """
        self.seq += 1
        ts = time.time() if ts is None else ts
        if self.bus.handlers(topic):
            payload = data if data is not None else (lazy() if lazy is not None else {})
            if self.redactor:  # the live view and every subscriber see what the store keeps
                payload = self.redactor.mask_data(payload)
            self.bus.publish(Event(topic, self.run_id, self.seq, ts, task_id, payload))
        if self.store is not None:
            if text is None and data is not None:
                text = _EVENT_JSON(data)
            text = self._mask(text)
            self.events.append((self.run_id, self.seq, ts, topic, task_id, text))
            if len(self.events) >= _FLUSH_ROWS:
                self.flush()
        if len(self.bus.errors) > self._bus_errors:  # after this event is numbered and kept
            self._subscriber_failed()

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
        if self._flush_pending or self.store is None:
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
        """Commit everything buffered in one transaction."""
        self._flush_pending = False
        self._write()

    def _write(self, run: tuple[Any, ...] | None = None) -> None:
        if self.store is None or not (self.events or self.tasks or self.attempts or run or self.audit):
            return
        batch = {"events": self.events, "tasks": self.tasks, "attempts": self.attempts, "run": run,
                 "cache": self.cache, "dead": self.dead, "origins": self.origins}
        self.origins = []
        with self._audit_lock:
            batch["audit"], self.audit = self.audit, []
        self.events, self.tasks, self.attempts, self.cache, self.dead = [], [], [], [], []
        if batch["audit"]:
            batch["seal"] = self._seal
        if self._writer is not None:
            self._writer.put(batch)
        else:
            self.store.write_batch(**batch)

    def _mask(self, text: str | None) -> str | None:
        return self.redactor.mask(text)


def _merge(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """Several queued batches as one transaction's worth of rows."""
    merged: dict[str, Any] = {"events": [], "tasks": [], "attempts": [], "run": None, "cache": [], "dead": [],
                              "audit": [], "origins": []}
    for batch in batches:
        for key in ("events", "tasks", "attempts", "cache", "dead", "audit", "origins"):
            merged[key] += batch[key]
        merged["run"] = batch["run"] or merged["run"]
        merged["seal"] = batch.get("seal") or merged.get("seal")
    return merged


class _Writer:
    """A child process that commits batches in order, on its own core.

    SQLite's work and the Python-to-C binding of every row then cost the run only the
    pickling of each batch. The child opens its own connection; when the parent dies
    (even by SIGKILL) the child sees the pipe close, commits what it received and exits.

    The child is forked (fast) when this process has a single thread; with other threads
    it is spawned, because a fork copies locks that another thread may hold at that
    instant (SQLite's own mutexes among them) and the child would wait on them forever.
    """

    def __init__(self, store: Store) -> None:
        ctx = multiprocessing.get_context("fork" if threading.active_count() == 1 else "spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_writer_main, args=(child, str(store.path)), name="goatclaw-store-writer",
                                   daemon=True)
        self.process.start()
        child.close()

    def put(self, batch: dict[str, Any]) -> None:
        try:
            self.conn.send_bytes(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise StoreError(f"the store writer process died ({exc}); the run cannot be recorded") from None

    def close(self) -> None:
        """Commit everything sent, stop the child, and raise the error it reported if any."""
        try:
            self.conn.send_bytes(b"")
            if self.conn.poll(_WRITER_ANSWER_SECONDS):
                error = self.conn.recv_bytes().decode()
            else:
                error = f"the store writer process did not finish within {_WRITER_ANSWER_SECONDS:g}s"
        except (BrokenPipeError, ConnectionResetError, EOFError) as exc:
            error = f"the store writer process died: {exc}"
        self.conn.close()
        self.process.join(timeout=10)
        if self.process.is_alive():  # a stuck writer is stopped (the error above says the run was not all stored)
            self.process.kill()
            self.process.join(timeout=5)
        if error:
            raise StoreError(error)


def _writer_main(conn: Any, path: str) -> None:
    """The writer process: receive pickled batches, commit them (merging what queued up)."""
    store = Store.open(path)
    error = ""
    try:
        while True:
            try:
                data = conn.recv_bytes()
            except EOFError:  # the parent is gone: keep what arrived
                return
            if not data:
                break
            batches = [pickle.loads(data)]
            stop = False
            while conn.poll() and len(batches) < 64:
                more = conn.recv_bytes()
                if not more:
                    stop = True
                    break
                batches.append(pickle.loads(more))
            store.write_batch(**_merge(batches))
            if stop:
                break
    except Exception as exc:  # reported to the parent on close
        error = f"the store writer failed: {type(exc).__name__}: {exc}"
    finally:
        store.close()
    try:
        conn.send_bytes(error.encode())
    except OSError:
        pass
