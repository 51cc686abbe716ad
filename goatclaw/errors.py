"""Every error goatclaw raises, in one shallow tree.

::

    GoatclawError                 the root: ``except GoatclawError`` catches them all
    ├── SpecError                 the pipeline or project file is invalid (exit code 2);
    │                             carries every Problem found, each with its location
    ├── TaskError                 a task failed; carries an error class for retry policies
    │   ├── TaskTimeout           error class ``timeout``
    │   └── PermissionDenied      error class ``permission_denied``
    ├── TemplateError             a ${{ }} template or expression cannot be compiled or rendered
    ├── PluginError               a plugin is missing, broken or has the wrong shape
    ├── StoreError                the SQLite store cannot be opened or read
    └── RunCancelled              the run was cancelled (Ctrl-C), exit code 130

A user-facing error carries a :class:`Location` when it has one, so that the CLI can
print ``pipelines/x.yaml:12:5: tasks.fetch.retry.attempts: -1 is less than 1`` and never
a traceback for a mistake that is the user's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "ERROR_CLASSES",
    "GoatclawError",
    "Location",
    "PermissionDenied",
    "PluginError",
    "Problem",
    "RunCancelled",
    "SpecError",
    "StoreError",
    "TaskError",
    "TaskTimeout",
    "TemplateError",
    "error_line",
]

#: The error classes that retry policies, breakers and fallbacks reason about.
ERROR_CLASSES = (
    "timeout",
    "rate_limit",
    "server_error",
    "connection",
    "auth",
    "invalid_input",
    "invalid_output",
    "validation",
    "context_length",
    "permission_denied",
    "upstream",
    "internal",
    "rejected",  # a person rejected the task's approval, or it timed out (docs/approvals.md)
)


@dataclass(frozen=True, order=True)
class Location:
    """A place in a source file: 1-based line and column."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a file: where, which field, and what."""

    location: Location | None
    path: str
    message: str
    severity: str = "error"

    def sort_key(self) -> tuple[str, int, int, str, str]:
        """Order problems by file, line, column, then path and message."""
        loc = self.location
        return (loc.file, loc.line, loc.col, self.path, self.message) if loc else ("", 0, 0, self.path, self.message)

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        field_ = f"{self.path}: " if self.path else ""
        return f"{where}{field_}{self.message}"


class GoatclawError(Exception):
    """The root of every error goatclaw raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str, *, location: Location | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.location = location

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message


class SpecError(GoatclawError):
    """A pipeline or project file is invalid. ``problems`` lists everything found, sorted."""

    exit_code = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=Problem.sort_key)
        first = self.problems[0] if self.problems else None
        super().__init__("\n".join(str(p) for p in self.problems) or "invalid file",
                         location=first.location if first else None)

    def __str__(self) -> str:
        return self.message


class TaskError(GoatclawError):
    """A task failed. ``error_class`` is one of :data:`ERROR_CLASSES` or an exception name.

    Plugins raise it (or call :func:`goatclaw.plugin.fail`) to say *why* they failed, so
    that retry policies can tell a transient error from a permanent one. ``retry_after``
    carries a server's hint in seconds (HTTP ``Retry-After``, provider rate limits).
    """

    def __init__(
        self,
        message: str,
        *,
        error_class: str = "internal",
        retry_after: float | None = None,
        details: dict[str, Any] | None = None,
        location: Location | None = None,
    ) -> None:
        super().__init__(message, location=location)
        self.error_class = error_class
        self.retry_after = retry_after
        self.details = details or {}


class TaskTimeout(TaskError):
    """A task ran longer than its ``timeout``."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, error_class="timeout", **kwargs)


class PermissionDenied(TaskError):
    """A task tried something its permissions do not grant."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, error_class="permission_denied", **kwargs)


class TemplateError(GoatclawError):
    """A template or expression failed to compile or render. ``lineno`` is inside the text.

    ``error_class`` is what a task that hit it fails with: ``invalid_input``, or
    ``permission_denied`` when the template read something its task is not granted
    (an environment variable outside ``permissions.env``).
    """

    def __init__(self, message: str, *, lineno: int | None = None, location: Location | None = None,
                 error_class: str = "invalid_input") -> None:
        super().__init__(message, location=location)
        self.lineno = lineno
        self.error_class = error_class


class PluginError(GoatclawError):
    """A plugin cannot be found, imported or called; names its package and version."""


class StoreError(GoatclawError):
    """The SQLite store cannot be opened, migrated or read."""


def error_line(error_class: str | None, message: object) -> str:
    """``class: message``, with the class once: a message that already starts with it keeps it as is.

    A plugin's exception is stored as ``ValueError: bad`` with class ``ValueError``, and a
    budget refusal says ``budget: …`` with class ``budget``; shown as ``class: message``
    they would read ``ValueError: ValueError: bad``.
    """
    text = "" if message is None else str(message)
    if not error_class or text == error_class or text.startswith((f"{error_class}:", f"{error_class} ")):
        return text
    return f"{error_class}: {text}" if text else error_class


class RunCancelled(GoatclawError):
    """The run was cancelled before it finished."""

    exit_code = 130

    def __init__(self, run_id: str = "", reason: str = "cancelled") -> None:
        super().__init__(f"run {run_id} {reason}".replace("  ", " ").strip())
        self.run_id = run_id
        self.reason = reason
