"""goatclaw's own logs: a level, a file, plain text or one JSON object a line.

``configure(level="info", path="ci.log", fmt="json")`` (the CLI's ``--log-level``,
``GOATCLAW_LOG``, ``--log-file`` and ``--log-format``) sends the records of every logger at
that level or above to the file (stderr without one; never stdout, where ``--output json``
prints its one document). Inside a run each line names the run, and inside a task attempt
the task, its item and attempt; the run's declared secrets are masked in every line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from goatclaw.engine import tasklogs
from goatclaw.errors import GoatclawError

__all__ = ["ENV", "FORMATS", "LEVELS", "configure", "level_of"]

#: The environment variable that sets the level when ``--log-level`` is not given.
ENV = "GOATCLAW_LOG"
LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("text", "json")
_FIELDS = ("run", "task", "item", "attempt")


def level_of(text: str, where: str = "--log-level") -> int:
    """A level name (any case) as a :mod:`logging` number; a clear error naming ``where`` otherwise."""
    name = text.strip().lower()
    if name not in LEVELS:
        raise GoatclawError(f"{where}: '{text}' is not a log level (one of {', '.join(LEVELS)})")
    return int(getattr(logging, name.upper()))


def configure(level: str | None = None, path: str | os.PathLike[str] | None = None,
              fmt: str = "text") -> logging.Handler | None:
    """Send goatclaw's own logs (every logger's records at ``level`` and up) to ``path`` or stderr.

    ``level`` defaults to ``$GOATCLAW_LOG``; with neither, nor ``path`` nor a JSON format,
    nothing changes (warnings are printed as Python prints them). The handler added, if any.
    """
    where = "--log-level"
    if not level and os.environ.get(ENV):
        level, where = os.environ[ENV], ENV
    if not level and path is None and fmt == "text":
        return None
    number = level_of(level, where) if level else logging.INFO
    if fmt not in FORMATS:
        raise GoatclawError(f"--log-format: '{fmt}' is not a log format (text or json)")
    handler = _open(path)
    _replace(handler)
    handler.setLevel(number)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(min(number, root.level) if root.level != logging.NOTSET else number)
    return handler


_ADDED: list[logging.Handler] = []


def _replace(handler: logging.Handler) -> None:
    """Configuring again (one process, several commands) replaces the handler added before."""
    root = logging.getLogger()
    while _ADDED:
        old = _ADDED.pop()
        root.removeHandler(old)
        old.close()
    _ADDED.append(handler)


def _open(path: str | os.PathLike[str] | None) -> logging.Handler:
    if path is None:
        return logging.StreamHandler(sys.stderr)
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return logging.FileHandler(target, encoding="utf-8", delay=False)
    except OSError as exc:
        raise GoatclawError(f"--log-file: cannot write {target}: {exc.strerror or exc}") from None


def _context() -> tuple[dict[str, Any], Any]:
    """The run (and task attempt) in progress here, and the run's redactor."""
    scope = tasklogs.current()
    run = tasklogs.current_run()
    fields: dict[str, Any] = {}
    if run is not None:
        fields["run"] = run.run_id
    if scope is not None:
        fields.update(task=scope.task_id, item=scope.item, attempt=scope.attempt)
    return fields, None if run is None else run.redactor


def _message(record: logging.LogRecord, redactor: Any) -> str:
    try:
        text = record.getMessage()
    except Exception:
        text = f"{record.msg!r} % {record.args!r}"
    if record.exc_info:
        text += "\n" + logging.Formatter().formatException(record.exc_info)
    return text if not redactor else str(redactor.mask(text))


class _JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and the run, task, item and attempt."""

    def format(self, record: logging.LogRecord) -> str:
        fields, redactor = _context()
        line: dict[str, Any] = {"ts": round(record.created, 6), "level": record.levelname.lower(),
                                "logger": record.name, "message": _message(record, redactor)}
        source = getattr(record, tasklogs.SOURCE, None)
        if source is not None:
            line["source"] = source
        line.update(fields)
        return json.dumps(line, ensure_ascii=False, default=str)


class _TextFormatter(logging.Formatter):
    """``time level logger [run task] message``."""

    def format(self, record: logging.LogRecord) -> str:
        fields, redactor = _context()
        where = " ".join(f"{k}={fields[k]}" for k in _FIELDS if fields.get(k) is not None)
        stamp = self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
        return (f"{stamp} {record.levelname.lower():<8} {record.name}" + (f" [{where}]" if where else "")
                + f" {_message(record, redactor)}")
