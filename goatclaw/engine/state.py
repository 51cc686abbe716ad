"""A run's one mutable object: task states with explicit transitions, and the results."""

from __future__ import annotations

import enum
import json
import operator
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from goatclaw.errors import TaskError
from goatclaw.jsontext import storable

__all__ = ["RunResult", "RunStatus", "TaskResult", "TaskState", "to_json"]


class TaskState(str, enum.Enum):
    """Where a task is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    UPSTREAM_FAILED = "upstream_failed"
    CANCELLED = "cancelled"
    CACHED = "cached"
    WAITING = "waiting"  # for a person's decision (an approval): not done, and nothing held while it waits

    def is_terminal(self) -> bool:
        """Whether the task is done, one way or another."""
        return self not in (TaskState.PENDING, TaskState.RUNNING, TaskState.WAITING)

    def __str__(self) -> str:
        return self.value


_STATUS = operator.attrgetter("status")

_ALLOWED: dict[TaskState, frozenset[TaskState]] = {
    TaskState.PENDING: frozenset({TaskState.RUNNING, TaskState.SKIPPED, TaskState.UPSTREAM_FAILED,
                                  TaskState.CANCELLED, TaskState.SUCCEEDED, TaskState.CACHED}),
    TaskState.RUNNING: frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.SKIPPED,
                                  TaskState.CANCELLED, TaskState.CACHED, TaskState.WAITING}),
    TaskState.WAITING: frozenset({TaskState.CANCELLED, TaskState.RUNNING}),  # running: decided while the run went on
}


class RunStatus(str, enum.Enum):
    """How a run ended (or that it is still going)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    BLOCKED = "blocked"  # stopped by its threat score (goatclaw.security.threat)
    WAITING = "waiting"  # stopped at an approval: a decision resumes it (docs/approvals.md); no process held

    def __str__(self) -> str:
        return self.value


@dataclass(slots=True)
class TaskResult:
    """One task's outcome: status, output, error, attempts and timings."""

    id: str
    status: TaskState = TaskState.PENDING
    output: Any = None
    error: str | None = None
    error_class: str | None = None
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    items: int | None = None
    output_json: str | None = field(default=None, repr=False)
    fallback: str | None = None  # the task whose output stands in for this one
    cache_hits: int = 0  # calls (items of a fan-out) answered from the task cache
    fixes: int = 0  # fix attempts (fix:) its output needed, counted apart from retries
    approval: dict[str, Any] | None = None  # the decision its approval gate got (``tasks.<id>.approval``)

    @property
    def duration(self) -> float | None:
        """Seconds the task ran, if it ran."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def move(self, to: TaskState) -> None:
        """Change state, refusing a transition that makes no sense (a bug, not user error)."""
        if to not in _ALLOWED.get(self.status, frozenset()):
            raise RuntimeError(f"task {self.id}: illegal transition {self.status} -> {to}")
        self.status = to

    def view(self) -> dict[str, Any]:
        """What templates see as ``tasks.<id>``."""
        view: dict[str, Any] = {"status": self.status.value, "output": self.output, "error": self.error}
        if self.items is not None:
            view["outputs"] = self.output
        if self.approval is not None:
            view["approval"] = self.approval
        return view


@dataclass
class RunResult:
    """What :func:`goatclaw.run` returns: the run's status and each task's result."""

    run_id: str
    pipeline: str
    status: RunStatus = RunStatus.RUNNING
    tasks: dict[str, TaskResult] = field(default_factory=dict)
    started_at: float = 0.0
    finished_at: float | None = None
    error: str | None = None
    store_path: str | None = None
    resumed: tuple[str, ...] = ()  # tasks whose stored result a resume kept (they did not run again)
    #: The chain of tasks that set the run's length: ``[{task, duration, wait}]`` (goatclaw.engine.metrics).
    critical_path: list[dict[str, Any]] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"RunResult(run_id={self.run_id!r}, status={self.status.value!r}, tasks={len(self.tasks)})"

    @property
    def ok(self) -> bool:
        """Whether the run succeeded."""
        return self.status is RunStatus.SUCCEEDED

    @property
    def outputs(self) -> dict[str, Any]:
        """Each task's output by id."""
        return {tid: t.output for tid, t in self.tasks.items()}

    def counts(self) -> dict[str, int]:
        """How many tasks ended in each state."""
        out = Counter(map(_STATUS, self.tasks.values()))  # in the order the states first appear
        return {state.value: n for state, n in out.items()}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready document of the run."""
        return {
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "status": self.status.value,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration": None if self.finished_at is None else round(self.finished_at - self.started_at, 6),
            "error": self.error,
            "store": self.store_path,
            "counts": self.counts(),
            "resumed": list(self.resumed),
            "critical_path": self.critical_path,
            "tasks": {
                tid: {"status": t.status.value, "output": t.output, "error": t.error, "error_class": t.error_class,
                      "attempts": t.attempts, "fallback": t.fallback,
                      "duration": None if t.duration is None else round(t.duration, 6)}
                for tid, t in self.tasks.items()
            },
        }


_ENCODER = json.JSONEncoder(allow_nan=False, ensure_ascii=False)
#: What orjson must hand back to the stdlib's judgement rather than encode its own way.
_STRICT = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS


def to_json(output: Any) -> str:
    """Outputs are stored and read by later tasks: they must be finite JSON. Returns the text.

    orjson encodes (about ten times the stdlib's speed); what it refuses (integers over 64
    bits, non-string keys, subclasses of built-in types, dates, dataclasses) and any text
    with a ``null`` in it (orjson writes NaN and infinities as ``null``) go through the
    stdlib's strict encoder, which decides: the same text or the same error as before. A
    lone surrogate in a string (orjson refuses it, UTF-8 cannot hold it) is written as its
    JSON escape (:func:`goatclaw.jsontext.storable`): the output is accepted and stored as
    the same value.
    """
    try:
        data = orjson.dumps(output, option=_STRICT)
    except (TypeError, orjson.JSONEncodeError):
        pass
    else:
        if b"null" not in data:
            return data.decode()
    try:
        return storable(_ENCODER.encode(output))
    except (TypeError, ValueError) as exc:
        raise TaskError(f"output is not JSON-serialisable: {exc}", error_class="invalid_output") from None
