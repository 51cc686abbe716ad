"""Recording a run: events to the bus, rows to the store, in group commits.

Every event gets a sequence number and is published on the bus at once (the live view
sees it immediately). Rows are buffered and handed, at the end of the event loop's
current turn, to one writer thread that commits each batch in one transaction: tasks
finishing together share a commit, a finished task is durable a moment after it
finishes, and SQLite's work (which releases the GIL) overlaps with the run instead of
stalling the event loop. Declared secret values are masked in everything written.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from typing import Any

from goatclaw.engine.state import RunResult, TaskResult, TaskState
from goatclaw.events import Bus, Event
from goatclaw.spec.model import Pipeline
from goatclaw.store import Store

__all__ = ["Recorder"]

_FLUSH_ROWS = 2000
_MASK = "***"



_TOPICS = {state: f"task.{state.value}" for state in TaskState}


class Recorder:
    """Turns what the engine does into events and stored rows."""

    def __init__(self, store: Store | None, bus: Bus, run_id: str, *, secrets: tuple[str, ...] = ()) -> None:
        self.store = store
        self.bus = bus
        self.run_id = run_id
        self.secrets = tuple(sorted((s for s in secrets if s and len(s) >= 3), key=len, reverse=True))
        self.seq = 0
        self.events: list[tuple[Any, ...]] = []
        self.tasks: list[tuple[Any, ...]] = []
        self.attempts: list[tuple[Any, ...]] = []
        self._flush_pending = False
        self._writer: _Writer | None = None

    # -- run -------------------------------------------------------------------------

    def start_run(self, pipeline: Pipeline, *, vars: dict[str, Any], started_at: float, tasks: list[str]) -> None:
        """Record the run as started (committed at once: a crash after this still shows the run)."""
        if self.store is not None:
            self.store.create_run(self.run_id, pipeline.name, file=str(pipeline.file) if pipeline.file else None,
                                  digest=pipeline.digest, vars=vars, started_at=started_at)
        self.event("run.started", None, {"pipeline": pipeline.name, "tasks": tasks})
        self._write()
        if self.store is not None:
            self._writer = _Writer(self.store)

    def finish_run(self, result: RunResult) -> None:
        """Record the run's end and flush everything (one transaction)."""
        self.event(f"run.{result.status.value}", None,
                   {"counts": result.counts(), "error": result.error,
                    "duration": None if result.finished_at is None else result.finished_at - result.started_at})
        summary = json.dumps({"counts": result.counts()})
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
            output = json.dumps(res.output, ensure_ascii=False, default=str)
        output = self._mask(output)
        self.tasks.append((self.run_id, res.id, res.status.value, res.attempts, res.started_at, res.finished_at,
                           output, self._mask(res.error), res.error_class))
        topic = _TOPICS[res.status]
        duration = None if res.duration is None else round(res.duration, 6)
        if res.error is None and res.items is None:
            # the common case, formatted without the json module (this runs once per task)
            text = f'{{"attempts": {res.attempts}, "duration": {"null" if duration is None else duration}}}'
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

    def task_event(self, topic: str, data: dict[str, Any]) -> None:
        """An event a plugin emitted through its TaskContext."""
        self.event(topic, data.get("task"), data)

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
            self.bus.publish(Event(topic, self.run_id, self.seq, ts, task_id, payload))
        if self.store is not None:
            if text is None and data is not None:
                text = json.dumps(data, ensure_ascii=False, default=str)
            text = self._mask(text)
            self.events.append((self.run_id, self.seq, ts, topic, task_id, text))
            if len(self.events) >= _FLUSH_ROWS:
                self.flush()

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
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Commit everything buffered in one transaction."""
        self._flush_pending = False
        self._write()

    def _write(self, run: tuple[Any, ...] | None = None) -> None:
        if self.store is None or not (self.events or self.tasks or self.attempts or run):
            return
        batch = {"events": self.events, "tasks": self.tasks, "attempts": self.attempts, "run": run}
        self.events, self.tasks, self.attempts = [], [], []
        if self._writer is not None:
            self._writer.put(batch)
        else:
            self.store.write_batch(**batch)

    def _mask(self, text: str | None) -> str | None:
        if text is None or not self.secrets:
            return text
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, _MASK)
        return text


class _Writer:
    """One thread that commits batches in order; :meth:`close` waits for all of them."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="goatclaw-store-writer", daemon=True)
        self.thread.start()

    def put(self, batch: dict[str, Any]) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(batch)

    def _loop(self) -> None:
        while True:
            batch = self.queue.get()
            if batch is None:
                return
            # merge what queued up meanwhile into one transaction
            merged = {"events": list(batch["events"]), "tasks": list(batch["tasks"]),
                      "attempts": list(batch["attempts"]), "run": batch["run"]}
            done = False
            while merged["run"] is None:
                try:
                    more = self.queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    done = True
                    break
                for key in ("events", "tasks", "attempts"):
                    merged[key] += more[key]
                merged["run"] = more["run"]
            try:
                self.store.write_batch(**merged)
            except BaseException as exc:  # surfaced on the next put and on close
                self.error = exc
                return
            if done:
                return

    def close(self) -> None:
        """Commit everything queued, stop the thread, and raise a write error if one happened."""
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
