"""Task logs: what each task attempt logs, kept with its run.

While an attempt runs, a context variable names it (run, task, item, attempt). One
:class:`logging.Handler` on the root logger, installed while a run is in progress, hands
every record logged in that context to the run's recorder, which masks the secrets,
buffers the line with the run's other rows and commits it in the same group commits
(:mod:`goatclaw.engine.recorder`). So a plugin's ``ctx.logger`` (``goatclaw.task.<id>``,
captured from ``DEBUG`` up), any other logger its code uses (captured at the level that
logger is enabled for: ``WARNING`` by default, ``--log-level`` lowers it), ``warnings.warn``
inside the task, and a ``shell`` task's stderr lines (logged as they come, source
``stderr``) all land in the attempt's log. The context variable follows the attempt into
the threads of blocking plugins (the executor copies the context); a thread a plugin
starts itself, and a task in a process pool or on a Dask worker, are not followed.

Each attempt keeps at most :data:`MAX_LINES` lines and :data:`MAX_BYTES` of text (a line
is cut at :data:`MAX_LINE`); what goes over is counted, and one last line says how much
was dropped. A task that logs nothing costs a context-variable set and reset (its :class:`Scope` is made on
its first line).
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["MAX_BYTES", "MAX_LINE", "MAX_LINES", "SOURCE", "TASK_LOGGER", "TOPIC", "Scope", "Sink", "current",
           "current_run", "enter", "install", "leave", "run_ended", "run_started", "uninstall"]

#: The bus topic of a task's log line (published when someone listens: the OTel exporter; never stored as an event).
TOPIC = "log.task"
#: The parent of every task's logger (``ctx.logger`` is ``goatclaw.task.<id>``).
TASK_LOGGER = "goatclaw.task"
#: A record's ``extra`` key naming where its line came from, when not its logger (``stderr``).
SOURCE = "goatclaw_source"
#: At most this many lines an attempt …
MAX_LINES = 2000
#: … and this many characters of text in all …
MAX_BYTES = 256 * 1024
#: … each line cut at this many characters.
MAX_LINE = 8 * 1024


class Sink(Protocol):
    """Where a run's lines go (the run's :class:`~goatclaw.engine.recorder.Recorder`)."""

    run_id: str
    #: Masks the run's secrets (goatclaw's own log handlers mask with it too).
    redactor: Any
    #: The scopes of attempts in progress that logged something (made on their first line).
    log_scopes: dict[Any, Scope]

    def task_log(self, scope: Scope, ts: float, level: int, source: str, message: str) -> None:
        """Mask, buffer and commit one line of ``scope``'s log."""


@dataclass(slots=True)
class Scope:
    """The attempt now running in this context, and what its log holds so far."""

    sink: Sink
    task_id: str
    item: int | None
    attempt: int
    lines: int = 0
    size: int = 0
    dropped: int = 0

    @property
    def run_id(self) -> str:
        """The run the attempt belongs to."""
        return self.sink.run_id

    def add(self, ts: float, level: int, source: str, message: str) -> None:
        """One line, within the attempt's bounds (what goes over is counted)."""
        if len(message) > MAX_LINE:
            message = message[:MAX_LINE] + f" [goatclaw: line cut at {MAX_LINE:,} characters]"
        if self.lines >= MAX_LINES or self.size + len(message) > MAX_BYTES:
            self.dropped += 1
            return
        self.lines += 1
        self.size += len(message)
        self.sink.task_log(self, ts, level, source, message)


#: The attempt running in this context as ``(sink, task_id, item, attempt)``: a tuple, because most attempts log
#: nothing (its :class:`Scope`, with the counters, is made on its first line).
_Key = tuple[Sink, str, "int | None", int]
_CURRENT: contextvars.ContextVar[_Key | None] = contextvars.ContextVar("goatclaw_task_log", default=None)
_RUN: contextvars.ContextVar[Sink | None] = contextvars.ContextVar("goatclaw_run_log", default=None)


def run_started(sink: Sink) -> contextvars.Token[Sink | None]:
    """A run is in progress in this context (goatclaw's own log lines then name it)."""
    return _RUN.set(sink)


def run_ended(token: contextvars.Token[Sink | None]) -> None:
    """The run's end (a token from another context is ignored: the run's task ends with its context)."""
    try:
        _RUN.reset(token)
    except ValueError:
        pass


def current_run() -> Sink | None:
    """The run in progress in this context, if any."""
    key = _CURRENT.get()
    return key[0] if key is not None else _RUN.get()


def enter(sink: Sink, task_id: str, item: int | None, attempt: int) -> contextvars.Token[_Key | None]:
    """An attempt begins in this context: what is logged here from now on is its log."""
    return _CURRENT.set((sink, task_id, item, attempt))


def leave(token: contextvars.Token[_Key | None]) -> None:
    """The attempt ended: a line saying how much went over its bounds, if anything did."""
    key = _CURRENT.get()
    _CURRENT.reset(token)
    if key is None or not key[0].log_scopes:  # the common case: nothing logged
        return
    scope = key[0].log_scopes.pop(key, None)
    if scope is not None and scope.dropped:
        scope.sink.task_log(scope, time.time(), logging.WARNING, "goatclaw",
                            f"[goatclaw: {scope.dropped:,} more log lines dropped; an attempt keeps at most "
                            f"{MAX_LINES:,} lines and {MAX_BYTES:,} characters]")


def current() -> Scope | None:
    """The attempt running in this context, if any (goatclaw's own log handlers read its run and task)."""
    key = _CURRENT.get()
    return None if key is None else _scope(key)


def _scope(key: _Key) -> Scope:
    scope = key[0].log_scopes.get(key)
    if scope is None:
        scope = key[0].log_scopes.setdefault(key, Scope(*key))
    return scope


class _Capture(logging.Handler):
    """Hands records logged inside an attempt to its run; outside one, behaves as if absent."""

    def emit(self, record: logging.LogRecord) -> None:
        key = _CURRENT.get()
        if key is None:
            _as_if_absent(self, record)
            return
        scope = _scope(key)
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not fit its format: kept as given
            message = f"{record.msg!r} % {record.args!r}"
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        scope.add(record.created, record.levelno, getattr(record, SOURCE, record.name), message)


def _as_if_absent(handler: logging.Handler, record: logging.LogRecord) -> None:
    """Python's last resort prints a record no handler would take: keep that when this handler is the only one."""
    logger: logging.Logger | None = logging.getLogger(record.name)
    while logger is not None:
        if any(h is not handler for h in logger.handlers):
            return
        logger = logger.parent if logger.propagate else None
    last = logging.lastResort
    if last is not None and record.levelno >= last.level:
        last.handle(record)


_HANDLER = _Capture()
_LOCK = threading.Lock()
_RUNS = 0
_SHOWWARNING: Any = None
_TASK_LEVEL: int = logging.NOTSET


def install() -> None:
    """A run starts: capture (once per process, however many runs are in progress)."""
    global _RUNS, _SHOWWARNING, _TASK_LEVEL
    with _LOCK:
        _RUNS += 1
        if _RUNS > 1:
            return
        logging.getLogger().addHandler(_HANDLER)
        tasks = logging.getLogger(TASK_LOGGER)
        _TASK_LEVEL = tasks.level
        if tasks.level == logging.NOTSET or tasks.level > logging.DEBUG:
            tasks.setLevel(logging.DEBUG)  # a plugin's ctx.logger.debug is kept (bounded) with its attempt
        _SHOWWARNING = warnings.showwarning
        warnings.showwarning = _showwarning


def uninstall() -> None:
    """A run ended: the last one to end stops capturing and puts back what it changed."""
    global _RUNS
    with _LOCK:
        _RUNS -= 1
        if _RUNS > 0:
            return
        logging.getLogger().removeHandler(_HANDLER)
        logging.getLogger(TASK_LOGGER).setLevel(_TASK_LEVEL)
        if warnings.showwarning is _showwarning:
            warnings.showwarning = _SHOWWARNING


def _showwarning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
    """A warning inside an attempt goes to its log (logger ``py.warnings``); outside one, where it went before."""
    if _CURRENT.get() is None or file is not None:
        _SHOWWARNING(message, category, filename, lineno, file, line)
        return
    text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
    logging.getLogger("py.warnings").warning("%s", text)
