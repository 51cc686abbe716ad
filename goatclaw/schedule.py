"""The timetable: when a pipeline's ``schedule:`` fires, and what to fire after downtime.

A :class:`Timetable` is one checked :class:`~goatclaw.spec.model.Schedule` with its cron
expression compiled (by `cronsim <https://pypi.org/project/cronsim/>`_, the evaluator
Healthchecks.io runs in production) in its IANA time zone. Every method takes the time
it asks about (``now``, seconds since the epoch) instead of reading a clock, so the
server's loop and the tests decide what time it is.

Times are read as the wall clock of the schedule's time zone, as cron does:

* **Spring forward** (the clock jumps from 02:00 to 03:00): a fire whose time does not
  exist that day (``30 2 * * *``) happens once, at the first moment after the gap (03:00).
  An expression that fires every few minutes (``*/15 * * * *``) skips the missing hour.
* **Fall back** (the clock goes from 03:00 back to 02:00): a fire at a fixed time in the
  repeated hour (``30 2 * * *``) happens once, at its first occurrence; an expression
  whose hour field is ``*`` (``*/15 * * * *``) follows the clock and fires in both passes
  of that hour, as Vixie cron and cronie do.

Under ``UTC`` (the default) neither happens.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from goatclaw.errors import Problem
from goatclaw.spec.loader import dotted
from goatclaw.spec.model import Pipeline, Schedule

__all__ = ["MACROS", "MAX_CATCH_UP", "Timetable", "constrained", "cron_error", "payload_vars", "pipeline_key",
           "schedule_problems", "timezone_error", "webhook_problems"]

#: The ``@`` shorthands cron users know, as the five fields they stand for.
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
#: The most missed fires ``catch_up: all`` runs after downtime (the latest ones; older ones are dropped).
MAX_CATCH_UP = 100
_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")


def _expand(expr: str) -> str:
    return MACROS.get(expr.strip().lower(), expr.strip())


def cron_error(expr: str) -> str | None:
    """Why ``expr`` is not a usable five-field cron expression, or ``None`` if it is."""
    fields = _expand(expr).split()
    if expr.strip().startswith("@") and expr.strip().lower() not in MACROS:
        return f"unknown cron shorthand '{expr.strip()}' (use one of {', '.join(sorted(MACROS))})"
    if len(fields) != 5:
        return (f"'{expr}' has {len(fields)} field{'s' if len(fields) != 1 else ''}; a cron expression has five: "
                f"{' '.join(_FIELDS)} (e.g. '0 7 * * 1-5')")
    try:
        CronSim(" ".join(fields), datetime(2000, 1, 1))
    except CronSimError as exc:
        return f"'{expr}' is not a valid cron expression: {str(exc).lower()} (fields: {' '.join(_FIELDS)})"
    return None


@cache
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def timezone_error(name: str) -> str | None:
    """Why ``name`` is not an IANA time zone this machine knows, or ``None``."""
    try:
        _zone(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return f"unknown time zone '{name}' (an IANA name such as UTC, Europe/Berlin or America/New_York)"
    return None


@dataclass(frozen=True)
class Timetable:
    """The fire times of one schedule. Build with :meth:`of` (checked: a bad schedule raises ``ValueError``)."""

    schedule: Schedule
    expression: str
    zone: ZoneInfo

    @classmethod
    def of(cls, schedule: Schedule) -> Timetable:
        """The timetable of a checked schedule; ``ValueError`` for a bad cron expression or time zone."""
        why = cron_error(schedule.cron) or timezone_error(schedule.timezone)
        if why:
            raise ValueError(why)
        return cls(schedule, " ".join(_expand(schedule.cron).split()), _zone(schedule.timezone))

    def _forward(self, after: float) -> Iterator[float]:
        start = datetime.fromtimestamp(after, self.zone).replace(microsecond=0)
        for when in CronSim(self.expression, start):
            yield when.timestamp()

    def next_after(self, after: float) -> float:
        """The first fire strictly after ``after``."""
        for when in self._forward(after):
            if when > after:
                return when
        raise ValueError(f"'{self.schedule.cron}' never fires")  # pragma: no cover - cronsim refuses those

    def upcoming(self, now: float, n: int = 5) -> list[float]:
        """The next ``n`` fires after ``now``."""
        out: list[float] = []
        for when in self._forward(now):
            if when > now:
                out.append(when)
                if len(out) >= n:
                    break
        return out

    def _backward(self, now: float) -> Iterator[float]:
        """Fires at or before ``now``, latest first (cronsim's reverse excludes its start: start a second later)."""
        start = datetime.fromtimestamp(math.floor(now) + 1, self.zone)
        for when in CronSim(self.expression, start, reverse=True):
            t = when.timestamp()
            if t <= now:
                yield t

    def latest_until(self, now: float) -> float | None:
        """The last fire at or before ``now`` (``None`` if there was none in the last 5 years)."""
        for t in self._backward(now):
            return t if now - t < 5 * 366 * 86400 else None
        return None  # pragma: no cover - the iteration is endless

    def missed(self, done_until: float | None, now: float) -> list[float]:
        """What to fire at ``now`` for the fires after ``done_until`` and up to ``now``, per ``catch_up``.

        ``done_until`` is the time up to which every fire was handled (fired or skipped);
        ``None`` (a schedule never seen before) misses nothing. ``latest`` gives the last
        missed fire, ``all`` every one, oldest first (the latest :data:`MAX_CATCH_UP` of them),
        ``none`` nothing.
        """
        if done_until is None or now <= done_until or self.schedule.catch_up == "none":
            return []
        limit = 1 if self.schedule.catch_up == "latest" else MAX_CATCH_UP
        fires: list[float] = []
        for t in self._backward(now):  # from now back: a year of downtime costs no more than an hour of it
            if t <= done_until:
                break
            fires.append(t)
            if len(fires) >= limit:
                break
        return fires[::-1]

    def local(self, when: float) -> str:
        """``when`` as the schedule's wall clock, ISO 8601 with its offset (``2026-12-04T07:00:00+01:00``)."""
        return datetime.fromtimestamp(when, self.zone).isoformat()


def pipeline_key(pipeline: Pipeline) -> str:
    """How the store names a scheduled pipeline: its file relative to the project folder (posix), else its name."""
    if pipeline.file is None:
        return pipeline.name
    file = Path(pipeline.file).resolve()
    root = getattr(pipeline.project, "root", None)
    if root is not None and file.is_relative_to(Path(root).resolve()):
        return file.relative_to(Path(root).resolve()).as_posix()
    return file.as_posix()


def schedule_problems(pipeline: Pipeline) -> list[Problem]:
    """Bad cron expressions, unknown time zones and repeated schedule names, at file:line:col."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for schedule in pipeline.schedules:
        written = isinstance(_data_at(pipeline, schedule.path), dict)
        where = (*schedule.path, "cron") if written else schedule.path
        why = cron_error(schedule.cron)
        if why:
            problems.append(Problem(pipeline.locate(where), dotted(where), why))
        zone = timezone_error(schedule.timezone)
        if zone:
            problems.append(Problem(pipeline.locate((*schedule.path, "timezone")), dotted((*schedule.path, "timezone")),
                                    zone))
        for name in schedule.vars:
            if name not in pipeline.vars:
                at = (*schedule.path, "vars", name)
                problems.append(Problem(pipeline.locate(at, key=True), dotted(at), _undeclared(name)))
        if schedule.name in seen:
            at = (*schedule.path, "name") if written else schedule.path
            problems.append(Problem(pipeline.locate(at), dotted(at), f"two schedules are named '{schedule.name}' "
                                    "(a schedule's name keeps its memory of the last fire: give each its own)"))
        seen.add(schedule.name)
    return problems


def webhook_problems(pipeline: Pipeline) -> list[Problem]:
    """A webhook without a secret, or whose vars the pipeline does not declare, at file:line:col."""
    hook = pipeline.webhook
    if hook is None:
        return []
    problems: list[Problem] = []
    if hook.secret is None:
        problems.append(Problem(pipeline.locate(hook.path, key=True), dotted(hook.path),
                                "a webhook needs the secret its sender signs with: on: {webhook: {secret: NAME}} "
                                "(NAME an environment variable or .env entry); unsigned, anyone could run this "
                                "pipeline"))
    for name in hook.vars:
        if name not in pipeline.vars:
            where = (*hook.path, "vars", name)
            problems.append(Problem(pipeline.locate(where, key=True), dotted(where), _undeclared(name)))
    if hook.schema is not None:
        from goatclaw.spec.schema import check_schema

        why = check_schema(dict(hook.schema))
        if why:
            where = (*hook.path, "schema")
            problems.append(Problem(pipeline.locate(where), dotted(where), f"not a valid JSON Schema: {why}"))
    return problems


def payload_vars(pipeline: Pipeline, payload: Any) -> tuple[dict[str, Any], list[str]]:
    """A webhook payload checked against ``on.webhook.schema`` and the vars its ``vars:`` paths pick out.

    Returns ``(vars, problems)``: each problem names where in the payload it is
    (``payload.head_commit.id: ...``); with any problem, ``vars`` is empty. The payload is
    the sender's data: its schema check runs its patterns on RE2 (no catastrophic backtracking).
    """
    hook = pipeline.webhook
    if hook is None:
        return {}, ["this pipeline has no webhook"]
    problems: list[str] = []
    if hook.schema is not None:
        from goatclaw.spec.schema import check_instance

        problems += check_instance(payload, _plain(hook.schema), root="payload")
        if problems:
            return {}, problems
    found: dict[str, Any] = {}
    for name, path in hook.vars.items():
        value, ok = _pick(payload, path)
        if ok:
            found[name] = value
        else:
            problems.append(f"payload.{path}: not in the payload (on.webhook.vars.{name} reads it)")
    return ({} if problems else found), problems


def constrained(schema: Mapping[str, Any] | None, path: str) -> bool:
    """Whether ``schema`` pins the payload field at dotted ``path`` down: an ``enum``, a ``const`` or a ``pattern``."""
    node: Any = schema
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return False
        if part.isdigit() and isinstance(node.get("items"), Mapping):
            node = node["items"]
        else:
            props = node.get("properties")
            node = props.get(part) if isinstance(props, Mapping) else None
    return isinstance(node, Mapping) and any(k in node for k in ("enum", "const", "pattern"))


def _pick(data: Any, path: str) -> tuple[Any, bool]:
    """``data`` at a dotted path (``commits.0.id``: a number indexes a list)."""
    for part in path.split("."):
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None, False
    return data, True


def _plain(value: Any) -> Any:
    """A frozen mapping (and what it holds) as plain dicts and lists, as jsonschema expects."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _undeclared(name: str) -> str:
    return f"the pipeline declares no var '{name}' (declare it under vars: with a default)"


def _data_at(pipeline: Pipeline, path: tuple[str | int, ...]) -> Any:
    data: Any = pipeline.source.data if pipeline.source is not None else None
    for key in path:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return None
    return data
