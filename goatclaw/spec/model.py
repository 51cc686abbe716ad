"""The checked pipeline as frozen data: Pipeline, Task, RetryPolicy, Rule, Permissions and friends.

Nothing here changes after it is built. :func:`build_pipeline` turns a schema-checked
:class:`~goatclaw.spec.loader.Document` into a :class:`Pipeline`; it is defensive, so it
can also run on a document with schema errors to find more problems in one pass.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from goatclaw.errors import Location

__all__ = [
    "ApprovalPolicy",
    "Budget",
    "BreakerPolicy",
    "CachePolicy",
    "Defaults",
    "FixPolicy",
    "NO_PERMISSIONS",
    "Permissions",
    "Pipeline",
    "RetryPolicy",
    "Rule",
    "Schedule",
    "Task",
    "Webhook",
    "build_defaults",
    "build_pipeline",
    "memoized",
    "parse_duration",
]

_T = TypeVar("_T")


def memoized(memo: dict[str, Any], key: str, make: Callable[[], _T]) -> _T:
    """``memo[key]``, made by ``make`` the first time (a pipeline's or a plan's derived data: read-only)."""
    try:
        return memo[key]  # type: ignore[no-any-return]
    except KeyError:
        found = memo[key] = make()
        return found

_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_EMPTY: Mapping[str, Any] = MappingProxyType({})


def parse_duration(value: Any) -> float | None:
    """``500ms``, ``10s``, ``2m``, ``1h`` or a number of seconds → seconds (``None`` stays ``None``)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"'{value}' is not a duration (use 500ms, 10s, 2m, 1h or seconds)")
    return float(m.group(1)) * _UNIT[m.group(2)]


def _duration(value: Any, default: float | None = None) -> float | None:
    try:
        parsed = parse_duration(value)
    except ValueError:
        return default
    return default if parsed is None else parsed


def _freeze(value: Any) -> Mapping[str, Any]:
    return MappingProxyType(dict(value)) if isinstance(value, dict) else _EMPTY


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


@dataclass(frozen=True)
class RetryPolicy:
    """How a failed attempt is retried; see docs for each backoff's formula."""

    attempts: int = 1
    backoff: str = "exponential"
    delay: float = 1.0
    max_delay: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.0
    max_elapsed: float | None = None
    on: tuple[str, ...] = ()
    never_on: tuple[str, ...] = ("auth", "invalid_input", "permission_denied", "context_length", "validation",
                                 "breaker_open")

    @classmethod
    def from_data(cls, data: Any, base: RetryPolicy | None = None) -> RetryPolicy:
        """Build from a ``retry:`` mapping, or ``retry: N`` (``{attempts: N}``), filling gaps from ``base``."""
        base = base or cls()
        if data is False:
            return cls(attempts=1)
        if isinstance(data, (int, float)) and not isinstance(data, bool) and float(data).is_integer():
            data = {"attempts": int(data)}
        if not isinstance(data, dict):
            return base
        jitter = data.get("jitter", base.jitter)
        jitter_f = 1.0 if jitter is True else 0.0 if jitter is False else float(jitter) if isinstance(
            jitter, (int, float)) else base.jitter
        return cls(
            attempts=_integer(data.get("attempts"), max(base.attempts, 3)) if "attempts" in data
            else max(base.attempts, 3),
            backoff=data.get("backoff", base.backoff) if isinstance(data.get("backoff", ""), str) else base.backoff,
            delay=_duration(data.get("delay"), base.delay) or 0.0,
            max_delay=_duration(data.get("max_delay"), base.max_delay) or 0.0,
            multiplier=float(data["multiplier"]) if isinstance(data.get("multiplier"), (int, float))
            else base.multiplier,
            jitter=jitter_f,
            max_elapsed=_duration(data.get("max_elapsed"), base.max_elapsed),
            on=_strings(data["on"]) if "on" in data else base.on,
            # classes named in an explicit ``on`` are retried even if the default never_on lists them
            never_on=_strings(data["never_on"]) if "never_on" in data else tuple(
                c for c in base.never_on if c not in _strings(data.get("on"))),
        )


@dataclass(frozen=True)
class BreakerPolicy:
    """A circuit breaker: ``failures`` within ``window`` opens it; ``reset`` half-opens it."""

    failures: int = 5
    window: float = 60.0
    reset: float = 30.0
    key: str | None = None
    wait: bool = False

    @classmethod
    def from_data(cls, data: Any, base: BreakerPolicy | None = None) -> BreakerPolicy | None:
        """Build from a ``breaker:`` mapping; ``false`` turns an inherited breaker off."""
        if data is False:
            return None
        if not isinstance(data, dict):
            return base
        b = base or cls()
        return cls(
            failures=data["failures"] if isinstance(data.get("failures"), int) else b.failures,
            window=_duration(data.get("window"), b.window) or b.window,
            reset=_duration(data.get("reset"), b.reset) or b.reset,
            key=data["key"] if isinstance(data.get("key"), str) else b.key,
            wait=bool(data.get("wait", b.wait)),
        )


@dataclass(frozen=True)
class CachePolicy:
    """Whether a task's stored output may be reused, and for how long."""

    enabled: bool = True
    ttl: float | None = None
    key: str = ""
    requested: bool = False  # the task itself said ``cache: true`` or ``cache: {...}`` (not only its defaults)

    @classmethod
    def from_data(cls, data: Any, base: CachePolicy | None = None) -> CachePolicy:
        """Build from ``cache: true|false|{ttl, key}``."""
        base = base or cls()
        if isinstance(data, bool):
            return cls(enabled=data, ttl=base.ttl, key=base.key, requested=data)
        if isinstance(data, dict):
            return cls(True, _duration(data.get("ttl"), base.ttl), str(data.get("key", base.key)), requested=True)
        return cls(base.enabled, base.ttl, base.key) if base.requested else base


@dataclass(frozen=True)
class FixPolicy:
    """What to do when validation rejects an output."""

    attempts: int = 2
    model: str | None = None
    mode: str = "feedback"


@dataclass(frozen=True)
class Rule:
    """One validation rule: its ``kind`` (schema, expr, type, …), its argument and options."""

    kind: str
    arg: Any
    message: str | None = None
    severity: str = "error"
    options: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    path: tuple[str | int, ...] = ()


RULE_KINDS = ("schema", "expr", "type", "range", "length", "format", "regex", "one_of", "judge", "use")


@dataclass(frozen=True)
class Permissions:
    """What a pipeline or task may do. ``None`` in a field means "not said here"."""

    shell: bool | tuple[str, ...] | None = None
    network: bool | tuple[str, ...] | None = None
    files_read: tuple[str, ...] | None = None
    files_write: tuple[str, ...] | None = None
    env: bool | tuple[str, ...] | None = None
    python: bool | tuple[str, ...] | None = None
    mcp: bool | tuple[str, ...] | None = None

    @classmethod
    def from_data(cls, data: Any) -> Permissions:
        """Build from a ``permissions:`` mapping."""
        if not isinstance(data, dict):
            return NO_PERMISSIONS

        def flag(v: Any) -> bool | tuple[str, ...] | None:
            return v if isinstance(v, bool) else _strings(v) if isinstance(v, list) else None

        files = data.get("files") if isinstance(data.get("files"), dict) else {}
        return cls(
            shell=flag(data.get("shell")),
            network=flag(data.get("network")),
            files_read=_strings(files["read"]) if "read" in files else None,
            files_write=_strings(files["write"]) if "write" in files else None,
            env=flag(data.get("env")),
            python=flag(data.get("python")),
            mcp=flag(data.get("mcp")),
        )


#: What a pipeline or task that says nothing about permissions has (one shared, frozen instance).
NO_PERMISSIONS = Permissions()


@dataclass(frozen=True)
class Budget:
    """A dollar limit for a run, with an optional cheaper model to switch to."""

    usd: float
    downgrade: str | None = None


@dataclass(frozen=True)
class ApprovalPolicy:
    """A person's approval before a task runs (``approval:``, or the task ``uses: approval``)."""

    message: str | None = None  # a template over upstream tasks, rendered when the request is made
    timeout: float | None = None  # seconds the request may wait; past them it counts as a rejection
    inputs: Mapping[str, Any] | None = None  # the JSON Schema of what the approver fills in

    @classmethod
    def from_task(cls, d: Mapping[str, Any]) -> ApprovalPolicy | None:
        """From a task's ``approval:`` (``true``, a message, or a mapping); a ``uses: approval`` task always has one.

        A ``uses: approval`` task's own ``timeout:`` (not one inherited from ``defaults:``) is
        its approval's timeout when ``approval:`` gives none.
        """
        raw = d.get("approval")
        gate = d.get("uses") == "approval"
        if raw is None or raw is False:
            raw = {} if gate else None
        if raw is None:
            return None
        data = {"message": raw} if isinstance(raw, str) else raw if isinstance(raw, dict) else {}
        timeout = data.get("timeout", d.get("timeout") if gate else None)
        inputs = data.get("inputs")
        return cls(message=data["message"] if isinstance(data.get("message"), str) else None,
                   timeout=_duration(timeout),
                   inputs=MappingProxyType(dict(inputs)) if isinstance(inputs, dict) else None)


@dataclass(frozen=True)
class Defaults:
    """Task settings that apply where a task says nothing."""

    timeout: float | None = None
    retry: RetryPolicy = RetryPolicy()
    breaker: BreakerPolicy | None = None
    cache: CachePolicy = CachePolicy()


@dataclass(frozen=True)
class Task:
    """One task of a pipeline, as written (templates unrendered)."""

    id: str
    uses: str
    with_: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    needs: tuple[str, ...] = ()
    if_: str | bool | None = None
    foreach: Any = None
    concurrency: int | None = None
    fail_fast: bool = True
    timeout: float | None = None
    retry: RetryPolicy = RetryPolicy()
    validate: tuple[Rule, ...] = ()
    fix: FixPolicy | None = None
    breaker: BreakerPolicy | None = None
    priority: int = 0
    cache: CachePolicy = CachePolicy()
    continue_on_error: bool = False
    fallback: str | None = None
    run_on: str | None = None
    inputs: tuple[str, ...] = ()
    permissions: Permissions = NO_PERMISSIONS
    trust: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    approval: ApprovalPolicy | None = None  # a person approves before it runs (docs/approvals.md)
    name: str | None = None
    description: str | None = None
    order: int = 0
    path: tuple[str | int, ...] = ()
    group: str = "tasks"

    @property
    def title(self) -> str:
        """The display name: ``name`` if given, else the id."""
        return self.name or self.id


@dataclass(frozen=True)
class Schedule:
    """One ``schedule:`` entry: when the server starts a run (the timetable is :mod:`goatclaw.schedule`)."""

    cron: str
    name: str = "0"
    timezone: str = "UTC"
    overlap: str = "skip"  # skip | queue | cancel
    catch_up: str = "latest"  # latest | all | none
    vars: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    path: tuple[str | int, ...] = ("schedule",)  # where it is written (for located errors)


#: The largest webhook body accepted when ``max_bytes`` is not given (1 MiB).
WEBHOOK_MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class Webhook:
    """``on: webhook``: a signed POST starts a run, its payload checked and offered as vars."""

    secret: str | None = None  # the environment variable (or .env entry) holding the signing secret
    schema: Mapping[str, Any] | None = None
    vars: Mapping[str, str] = field(default_factory=lambda: _EMPTY)  # var name -> dotted path into the payload
    max_bytes: int = WEBHOOK_MAX_BYTES
    path: tuple[str | int, ...] = ("on",)


@dataclass(frozen=True)
class Pipeline:
    """A checked pipeline file. Build it with :func:`goatclaw.load`."""

    name: str
    tasks: Mapping[str, Task]
    version: int = 1
    description: str | None = None
    vars: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    secrets: tuple[str, ...] = ()
    defaults: Defaults = Defaults()
    concurrency: int = 4
    timeout: float | None = None
    permissions: Permissions = NO_PERMISSIONS
    budget: Budget | None = None
    hooks: tuple[Any, ...] = ()
    on_failure: Mapping[str, Task] = field(default_factory=lambda: _EMPTY)
    finally_: Mapping[str, Task] = field(default_factory=lambda: _EMPTY)
    threat_threshold: float | None = None
    max_output_bytes: int | None = None
    #: What a run of the pipeline gives back as a whole (a pipeline tool's result): name -> template over tasks.
    outputs: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    #: When ``goatclaw serve`` starts runs by itself (``schedule:``), and whether a webhook may (``on:``).
    schedules: tuple[Schedule, ...] = ()
    webhook: Webhook | None = None
    file: Path | None = None
    digest: str = ""
    source: Any = field(default=None, repr=False, compare=False)  # the loader Document
    project: Any = field(default=None, repr=False, compare=False)  # the Project it was loaded with
    memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # derived data (the plan)

    def __repr__(self) -> str:
        return f"Pipeline(name={self.name!r}, tasks={len(self.tasks)}, file={str(self.file)!r})"

    def all_tasks(self) -> Mapping[str, Task]:
        """Every task: those of ``tasks``, then the ``on_failure`` and ``finally`` ones (built once, read-only)."""
        return memoized(self.memo, "all tasks",
                        lambda: MappingProxyType({**self.tasks, **self.on_failure, **self.finally_}))

    def plugins(self) -> Mapping[str, str]:
        """Task id -> the plugin it ``uses``, for every task (built once, read-only)."""
        return memoized(self.memo, "plugins",
                        lambda: MappingProxyType({tid: t.uses for tid, t in self.all_tasks().items()}))

    def plugin_names(self) -> frozenset[str]:
        """The plugins the tasks use, each once (built once)."""
        return memoized(self.memo, "plugin names", lambda: frozenset(self.plugins().values()))

    def locate(self, path: tuple[str | int, ...], *, key: bool = False) -> Location | None:
        """Where ``path`` (e.g. ``("tasks", "fetch", "needs")``) is in the file, if known."""
        return self.source.locate(path, key=key) if self.source is not None else None


def build_pipeline(doc: Any, *, default_name: str = "pipeline", project_defaults: Any = None,
                   file: Path | None = None, project: Any = None) -> Pipeline:
    """Turn a loaded document into a :class:`Pipeline` (lenient with bad types)."""
    data = doc.data if isinstance(doc.data, dict) else {}
    defaults = build_defaults(data.get("defaults"), project_defaults)
    budget = data.get("budget")
    return Pipeline(
        name=data["name"] if isinstance(data.get("name"), str) else default_name,
        tasks=_task_map(data.get("tasks"), defaults, "tasks"),
        version=data.get("version", 1) if isinstance(data.get("version"), int) else 1,
        description=data.get("description") if isinstance(data.get("description"), str) else None,
        vars=_freeze(data.get("vars")),
        outputs=_freeze(data.get("outputs")),
        secrets=_strings(data.get("secrets")),
        defaults=defaults,
        concurrency=_positive_int(data.get("concurrency"), 4),
        timeout=_duration(data.get("timeout")),
        permissions=Permissions.from_data(data.get("permissions")),
        budget=Budget(float(budget["usd"]), budget.get("downgrade")) if isinstance(budget, dict) and isinstance(
            budget.get("usd"), (int, float)) else None,
        hooks=tuple(data["hooks"]) if isinstance(data.get("hooks"), list) else (),
        on_failure=_task_map(data.get("on_failure"), defaults, "on_failure"),
        finally_=_task_map(data.get("finally"), defaults, "finally"),
        threat_threshold=data.get("threat_threshold") if isinstance(data.get("threat_threshold"), (int, float))
        else None,
        max_output_bytes=data.get("max_output_bytes") if isinstance(data.get("max_output_bytes"), int) else None,
        schedules=_schedules(data.get("schedule")),
        webhook=_webhook(data.get("on")),
        file=file,
        digest=_digest(doc, data),
        source=doc,
        project=project,
    )


def _schedules(data: Any) -> tuple[Schedule, ...]:
    """``schedule:`` as written: one cron expression, one mapping, or a list of either."""
    if data is None:
        return ()
    entries = list(enumerate(data)) if isinstance(data, list) else [(None, data)]
    out = []
    for i, entry in entries:
        path: tuple[str | int, ...] = ("schedule",) if i is None else ("schedule", i)
        if isinstance(entry, str):
            out.append(Schedule(cron=entry, name=str(i or 0), path=path))
        elif isinstance(entry, dict) and isinstance(entry.get("cron"), str):
            name, zone = entry.get("name"), entry.get("timezone")
            overlap, catch_up = entry.get("overlap"), entry.get("catch_up")
            out.append(Schedule(
                cron=entry["cron"], name=name if isinstance(name, str) else str(i or 0),
                timezone=zone if isinstance(zone, str) else "UTC",
                overlap=overlap if overlap in ("skip", "queue", "cancel") else "skip",
                catch_up=catch_up if catch_up in ("latest", "all", "none") else "latest",
                vars=_freeze(entry.get("vars")), path=path))
    return tuple(out)


def _webhook(data: Any) -> Webhook | None:
    """``on: webhook`` or ``on: {webhook: {secret, schema, vars, max_bytes}}``."""
    if data == "webhook":
        return Webhook()
    settings = data.get("webhook") if isinstance(data, dict) else None
    if not isinstance(settings, dict):
        return Webhook(path=("on", "webhook")) if isinstance(data, dict) and "webhook" in data else None
    secret, schema, max_bytes = settings.get("secret"), settings.get("schema"), settings.get("max_bytes")
    fields = settings.get("vars") if isinstance(settings.get("vars"), dict) else {}
    return Webhook(
        secret=secret if isinstance(secret, str) else None,
        schema=MappingProxyType(dict(schema)) if isinstance(schema, dict) else None,
        vars=MappingProxyType({str(k): v for k, v in fields.items() if isinstance(v, str)}),
        max_bytes=max_bytes if isinstance(max_bytes, int) and not isinstance(max_bytes, bool) and max_bytes > 0
        else WEBHOOK_MAX_BYTES,
        path=("on", "webhook"))


def _digest(doc: Any, data: Any) -> str:
    """A short hash of the pipeline: of its text when known (cheap), else of its data."""
    text = getattr(doc, "text", "") or json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_WHOLE_TEMPLATE = re.compile(r"^\s*\$\{\{(?P<expr>.*)\}\}\s*$", re.S)


def _bare(expression: str) -> str:
    """``if: ${{ x }}`` (a GitHub Actions habit) means the bare expression ``x``; anything else stays as written."""
    whole = _WHOLE_TEMPLATE.match(expression)
    if whole is None or "${{" in whole.group("expr") or "}}" in whole.group("expr") or not whole.group("expr").strip():
        return expression
    return whole.group("expr").strip()


def _integer(value: Any, default: int) -> int:
    """An integer, also when YAML wrote it as ``2.0`` (JSON Schema's ``integer`` accepts that)."""
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return default


def _positive_int(value: Any, default: int) -> int:
    number = _integer(value, default)
    return number if number >= 1 else default


def build_defaults(data: Any, project: Defaults | None) -> Defaults:
    """Task defaults from a `defaults:` mapping, over the project's (or the embedded) ones."""
    base = project or Defaults()
    if not isinstance(data, dict):
        return base
    return Defaults(
        timeout=_duration(data.get("timeout"), base.timeout),
        retry=RetryPolicy.from_data(data.get("retry"), base.retry),
        breaker=BreakerPolicy.from_data(data.get("breaker"), base.breaker) if "breaker" in data else base.breaker,
        cache=CachePolicy.from_data(data.get("cache"), base.cache),
    )


def _task_map(data: Any, defaults: Defaults, group: str) -> Mapping[str, Task]:
    if not isinstance(data, dict):
        return _EMPTY
    return MappingProxyType({
        tid: _task(str(tid), spec, defaults, order, group)
        for order, (tid, spec) in enumerate(data.items())
        if isinstance(spec, dict)
    })


_SIMPLE_KEYS = frozenset({"uses", "with", "needs", "name", "description"})


def _task(tid: str, d: dict[str, Any], defaults: Defaults, order: int, group: str) -> Task:
    path = (group, tid)
    if d.keys() <= _SIMPLE_KEYS:  # most tasks of a large pipeline: skip the policy fields
        uses, name, description = d.get("uses"), d.get("name"), d.get("description")
        return Task(id=tid, uses=uses if isinstance(uses, str) else "", with_=_freeze(d.get("with")),
                    needs=_strings(d.get("needs")), timeout=defaults.timeout, retry=defaults.retry,
                    breaker=defaults.breaker, cache=defaults.cache,
                    name=name if isinstance(name, str) else None,
                    description=description if isinstance(description, str) else None,
                    approval=ApprovalPolicy.from_task(d) if uses == "approval" else None,
                    order=order, path=path, group=group)
    fix = d.get("fix")
    return Task(
        id=tid,
        uses=d["uses"] if isinstance(d.get("uses"), str) else "",
        with_=_freeze(d.get("with")),
        needs=_strings(d.get("needs")),
        if_=_bare(d["if"]) if isinstance(d.get("if"), str) else d["if"] if isinstance(d.get("if"), bool) else None,
        foreach=d.get("foreach"),
        concurrency=_positive_int(d.get("concurrency"), 0) or None,
        fail_fast=bool(d.get("fail_fast", True)),
        timeout=_duration(d.get("timeout"), defaults.timeout),
        retry=RetryPolicy.from_data(d["retry"], defaults.retry) if "retry" in d else defaults.retry,
        validate=_rules(d.get("validate"), path),
        fix=FixPolicy(
            attempts=fix.get("attempts", 2) if isinstance(fix.get("attempts", 2), int) else 2,
            model=fix.get("model") if isinstance(fix.get("model"), str) else None,
            mode=fix.get("mode", "feedback") if isinstance(fix.get("mode", ""), str) else "feedback",
        ) if isinstance(fix, dict) else None,
        breaker=BreakerPolicy.from_data(d["breaker"], defaults.breaker) if "breaker" in d else defaults.breaker,
        priority=_integer(d.get("priority"), 0),
        cache=CachePolicy.from_data(d.get("cache"), defaults.cache),
        continue_on_error=d.get("continue_on_error") is True,
        fallback=d["fallback"] if isinstance(d.get("fallback"), str) else None,
        run_on=d["run_on"] if isinstance(d.get("run_on"), str) else None,
        inputs=_strings(d.get("inputs")),
        permissions=Permissions.from_data(d.get("permissions")),
        trust=_strings(d.get("trust")),
        env=MappingProxyType({str(k): str(v) for k, v in d["env"].items()}) if isinstance(d.get("env"), dict)
        else _EMPTY,
        approval=ApprovalPolicy.from_task(d),
        name=d["name"] if isinstance(d.get("name"), str) else None,
        description=d["description"] if isinstance(d.get("description"), str) else None,
        order=order,
        path=path,
        group=group,
    )


#: The types a rule's argument and options must have (the schema's); a rule or option of another type
#: was reported by the schema check and is left out, so that no later check meets a type it does not expect.
_RULE_ARG_TYPES: Mapping[str, tuple[type, ...]] = MappingProxyType({
    "schema": (dict,), "expr": (str,), "type": (str,), "range": (dict,), "length": (int, dict), "format": (str,),
    "regex": (str,), "one_of": (list,), "judge": (str,), "use": (str,)})
_RULE_OPTION_TYPES: Mapping[str, tuple[type, ...]] = MappingProxyType({
    "with": (dict,), "model": (str,), "threshold": (int, float)})


def _rules(data: Any, task_path: tuple[str | int, ...]) -> tuple[Rule, ...]:
    if not isinstance(data, list):
        return ()
    rules = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            continue
        kind = next((k for k in RULE_KINDS if k in item), None)
        if kind is None or not _is(item[kind], _RULE_ARG_TYPES[kind]):
            continue
        options = {k: v for k, v in item.items() if k in _RULE_OPTION_TYPES and _is(v, _RULE_OPTION_TYPES[k])}
        message = item.get("message")
        arg = _bare(item[kind]) if kind == "expr" else item[kind]
        rules.append(Rule(kind, arg, message if isinstance(message, str) else None,
                          "warn" if item.get("severity") == "warn" else "error",
                          MappingProxyType(options), (*task_path, "validate", i)))
    return tuple(rules)


def _is(value: Any, types: tuple[type, ...]) -> bool:
    """``isinstance`` as JSON Schema means it: a boolean is not a number."""
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
