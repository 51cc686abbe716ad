"""Finding task plugins: built-ins and entry points, loaded only when a name is needed.

Third parties publish plugins in the entry-point groups ``goatclaw.tasks``,
``goatclaw.validators`` and ``goatclaw.hooks``. The built-in tasks are declared the same
way (as ``module:attribute`` references) and go through the same loading code. A plugin
that fails to import or has the wrong shape is reported with its package and version,
and never breaks the others.
"""

from __future__ import annotations

import collections.abc as abc
import importlib
import inspect
import json
import re
import threading
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from goatclaw.errors import PluginError, Problem
from goatclaw.extras import DISTRIBUTION, missing, missing_message
from goatclaw.plugin import PluginSpec, spec_of

__all__ = ["BUILTIN_HOOKS", "BUILTIN_TASKS", "GROUPS", "HOOK_EVENTS", "KINDS", "Plugin", "PluginInfo", "Registry",
           "default_registry", "reference_problems"]

GROUPS = ("goatclaw.tasks", "goatclaw.validators", "goatclaw.hooks")
#: The entry-point group of each kind of plugin.
KINDS: Mapping[str, str] = {"task": "goatclaw.tasks", "validator": "goatclaw.validators", "hook": "goatclaw.hooks"}

#: Built-in task plugins, loaded exactly like an entry point's ``module:attribute``.
BUILTIN_TASKS: Mapping[str, str] = {
    "echo": "goatclaw.tasks.echo:echo",
    "shell": "goatclaw.tasks.shell:shell",
    "python": "goatclaw.tasks.python:python",
    "file.read": "goatclaw.tasks.files:read",
    "file.write": "goatclaw.tasks.files:write",
    "file.list": "goatclaw.tasks.files:list_files",
    "file.glob": "goatclaw.tasks.files:glob",
    "http": "goatclaw.tasks.http:http",
    "graphql": "goatclaw.tasks.graphql:graphql",
    "memory": "goatclaw.tasks.memory:memory",
    "llm": "goatclaw.tasks.llm:llm",
    "mcp": "goatclaw.tasks.mcp:mcp",
    "agent": "goatclaw.tasks.agent:agent",
    "file.copy": "goatclaw.tasks.fileops:copy",
    "file.move": "goatclaw.tasks.fileops:move",
    "file.delete": "goatclaw.tasks.fileops:delete",
    "file.mkdir": "goatclaw.tasks.fileops:mkdir",
    "file.archive": "goatclaw.tasks.fileops:archive",
    "file.extract": "goatclaw.tasks.fileops:extract",
    "check": "goatclaw.tasks.health:check",
    "wait": "goatclaw.tasks.wait:wait",
    "data": "goatclaw.tasks.data:data",
    "data.convert": "goatclaw.tasks.data:convert",
    "research": "goatclaw.tasks.research:research",
    "code": "goatclaw.tasks.code:code",
    "approval": "goatclaw.tasks.approval:approval",
}

#: Built-in lifecycle hooks (``hooks: [{use: notify, with: ...}]``), loaded the same way.
BUILTIN_HOOKS: Mapping[str, str] = {
    "notify": "goatclaw.notify:Notify",
}

#: Built-in tasks that need an extra: the extra, and the modules without which the task cannot run at all.
#: ``goatclaw validate`` reports a missing one at the task's ``uses:`` line, with the install line.
BUILTIN_EXTRAS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "llm": ("llm", ("litellm",)),
    "agent": ("llm", ("litellm",)),
    "memory": ("memory", ("numpy",)),
    "mcp": ("mcp", ("mcp",)),
    "data": ("data", ("duckdb",)),
    "data.convert": ("data", ("duckdb",)),
    "research": ("research", ("trafilatura", "numpy")),
    "code": ("llm", ("litellm",)),
}


@dataclass(frozen=True)
class _Source:
    """Where a plugin comes from, before it is loaded."""

    name: str
    ref: str
    package: str
    version: str
    loader: Callable[[], Any] | None = None


@dataclass(frozen=True)
class Plugin:
    """A loaded plugin: the callable, what it declared, and where it came from."""

    name: str
    fn: Callable[..., Any]
    spec: PluginSpec
    package: str
    version: str
    is_async: bool
    params: Mapping[str, inspect.Parameter] = field(repr=False)
    accepts_any: bool = False
    hints: Mapping[str, Any] = field(default_factory=dict, repr=False)
    kind: str = "task"

    @property
    def doc(self) -> str:
        """The first line of the plugin's docstring."""
        return (inspect.getdoc(self.fn) or "").strip().splitlines()[0] if inspect.getdoc(self.fn) else ""

    @property
    def origin(self) -> str:
        """``package version`` for messages."""
        return f"{self.package} {self.version}".strip()

    def arguments(self) -> list[dict[str, Any]]:
        """Each ``with:`` argument: name, type (as text), whether required, and its default."""
        out = []
        for name, p in self.params.items():
            required = p.default is inspect.Parameter.empty
            out.append({"name": name, "type": type_text(self.hints.get(name, Any)), "required": required,
                        "default": None if required else p.default})
        return out

    def check_args(self, args: Mapping[str, Any]) -> list[tuple[str | None, str]]:
        """Problems with ``with:`` arguments: (argument or None, message).

        Unknown and missing arguments and constant values of the wrong type (from the type
        hints), or, when the plugin declared ``schema=``, what that JSON Schema rejects.
        Values holding a ``${{ }}`` template are only known at run time and are not typed.
        """
        if self.spec.schema is not None:
            return self._check_schema(args)
        problems: list[tuple[str | None, str]] = []
        if not self.accepts_any:
            for name in args:
                if name not in self.params:
                    known = ", ".join(sorted(self.params)) or "none"
                    problems.append((name, f"'{self.name}' takes no argument '{name}' (it takes: {known})"))
        for name, p in self.params.items():
            if p.default is inspect.Parameter.empty and name not in args:
                problems.append((None, f"'{self.name}' needs argument '{name}'"))
        for name, value in args.items():
            hint = self.hints.get(name)
            if hint is None or name not in self.params or _templated(value):
                continue
            if _matches(value, hint) is False:
                problems.append((name, f"'{self.name}' argument '{name}' expects {type_text(hint)}, "
                                       f"got {_value_text(value)}{self._list_hint(name, value, hint)}"))
        return problems

    def _list_hint(self, name: str, value: Any, hint: Any) -> str:
        """For a string where a list goes (``run: echo hi``): the list it splits into, and ``script`` if taken."""
        import shlex

        if not isinstance(value, str):
            return ""
        try:
            words = shlex.split(value)
        except ValueError:
            words = value.split()
        if not words or _matches(words, hint) is not True:
            return ""
        shown = ", ".join(w if re.fullmatch(r"[A-Za-z0-9_./=+-]+", w) else json.dumps(w) for w in words)
        alternative = f", or script: {json.dumps(value)} for a command line the shell parses" \
            if "script" in self.params and name != "script" else ""
        return f"; write a list: {name}: [{shown}]{alternative}"

    def _check_schema(self, args: Mapping[str, Any]) -> list[tuple[str | None, str]]:
        from goatclaw.spec.schema import check_instance

        schema = dict(self.spec.schema or {})
        templated = {k for k, v in args.items() if _templated(v)}
        if templated and isinstance(schema.get("required"), list):
            schema["required"] = [r for r in schema["required"] if r not in templated]
        constant = {k: v for k, v in args.items() if k not in templated}
        problems: list[tuple[str | None, str]] = []
        for message in check_instance(constant, schema):
            head = message.split(":", 1)[0].split(".", 1)[0].split("[", 1)[0]
            problems.append((head if head in constant and ":" in message else None, f"'{self.name}': {message}"))
        return problems


class Registry:
    """Plugins by group and name; discovery happens on first use, loading per name."""

    def __init__(self, *, entry_points: bool = True, allow: tuple[str, ...] | None = None,
                 deny: tuple[str, ...] = ()) -> None:
        self._use_entry_points = entry_points
        self._allow = allow
        self._deny = deny
        self._sources: dict[str, dict[str, _Source]] | None = None
        self._loaded: dict[tuple[str, str], Plugin] = {}
        self._lock = threading.Lock()

    # -- registration ----------------------------------------------------------------

    def register_task(self, name: str, fn: Callable[..., Any]) -> None:
        """Register a task plugin from Python (tests, embedding)."""
        self._register("goatclaw.tasks", name, fn)

    def register_validator(self, name: str, fn: Callable[..., Any]) -> None:
        """Register a custom validator from Python."""
        self._register("goatclaw.validators", name, fn)

    def register_hook(self, name: str, fn: Any) -> None:
        """Register a lifecycle hook from Python."""
        self._register("goatclaw.hooks", name, fn)

    def _register(self, group: str, name: str, fn: Any) -> None:
        sources = self._discover()
        module = getattr(fn, "__module__", "") or ""
        sources[group][name] = _Source(name, f"{module}:{getattr(fn, '__qualname__', name)}", "(registered)", "",
                                       loader=lambda: fn)
        self._loaded.pop((group, name), None)

    # -- lookup ----------------------------------------------------------------------

    def names(self, group: str = "goatclaw.tasks") -> list[str]:
        """Every plugin name in ``group``, without loading any."""
        return sorted(self._discover()[group])

    def source(self, name: str, group: str = "goatclaw.tasks") -> _Source | None:
        """Where ``name`` would be loaded from, or ``None`` if unknown."""
        return self._discover()[group].get(name)

    def task(self, name: str) -> Plugin:
        """The task plugin ``name``, loaded on first use; :class:`PluginError` if unusable."""
        return self._get("goatclaw.tasks", name)

    def validator(self, name: str) -> Plugin:
        """The custom validator ``name`` (called as ``(output, **params)``); :class:`PluginError` if unusable."""
        return self._get("goatclaw.validators", name)

    def hook(self, name: str) -> Plugin:
        """The hook ``name``: ``fn`` is the loaded object (instance, class or module).

        For a class, ``params`` are its constructor's: what the pipeline's ``with:`` may pass.
        """
        return self._get("goatclaw.hooks", name)

    def plugins(self, kind: str | None = None) -> list[PluginInfo]:
        """Every plugin (of one ``kind``: task, validator, hook), loaded to describe it.

        A plugin that cannot be loaded is listed with its ``error``; it never hides the others.
        """
        out = []
        for k, group in KINDS.items():
            if kind is not None and k != kind:
                continue
            for name in self.names(group):
                src = self._discover()[group][name]
                try:
                    out.append(PluginInfo.of(self._get(group, name)))
                except PluginError as exc:
                    out.append(PluginInfo(name, k, src.package, src.version, src.ref, error=exc.message))
        return out

    def info(self, name: str, kind: str | None = None) -> PluginInfo:
        """One plugin's description (tasks first, then validators, then hooks, unless ``kind`` says).

        A plugin that cannot load is described with its ``error``; an unknown name is a
        :class:`PluginError` with a suggestion.
        """
        kinds = [kind] if kind is not None else list(KINDS)
        for k in kinds:
            src = self.source(name, KINDS[k])
            if src is not None:
                try:
                    return PluginInfo.of(self._get(KINDS[k], name))
                except PluginError as exc:
                    return PluginInfo(name, k, src.package, src.version, src.ref, error=exc.message)
        everything = [n for k in kinds for n in self.names(KINDS[k])]
        import difflib

        close = difflib.get_close_matches(name, everything, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else " (see `goatclaw plugins`)"
        raise PluginError(f"no plugin '{name}'{hint}")

    def _get(self, group: str, name: str) -> Plugin:
        key = (group, name)
        plugin = self._loaded.get(key)
        if plugin is not None:
            return plugin
        with self._lock:
            plugin = self._loaded.get(key)
            if plugin is None:
                plugin = self._load(group, name)
                self._loaded[key] = plugin
        return plugin

    def _load(self, group: str, name: str) -> Plugin:
        kind = group.split(".")[1][:-1]
        src = self._builtin(group, name) or self._discover()[group].get(name)
        if src is None:
            raise PluginError(f"unknown {kind} '{name}'{self._suggest(group, name)}")
        if name in self._deny or (self._allow is not None and name not in self._allow):
            raise PluginError(f"{kind} '{name}' ({src.package} {src.version}) is disabled in goatclaw.yaml")
        _require_extra(group, name, src)
        try:
            obj = src.loader() if src.loader is not None else _import_ref(src.ref)
        except Exception as exc:
            raise PluginError(f"{kind} '{name}' from {src.package} {src.version} failed to load: "
                              f"{type(exc).__name__}: {exc}") from exc
        if group == "goatclaw.hooks":
            return _describe_hook(name, obj, src)
        if not callable(obj):
            raise PluginError(f"{kind} '{name}' from {src.package} {src.version} is not callable "
                              f"({src.ref} is a {type(obj).__name__})")
        return _describe(name, obj, src, kind=kind)

    def _suggest(self, group: str, name: str) -> str:
        import difflib

        close = difflib.get_close_matches(name, self.names(group), n=1, cutoff=0.6)
        return f" (did you mean '{close[0]}'?)" if close else " (is its package installed? see `goatclaw plugins`)"

    # -- discovery -------------------------------------------------------------------

    def _builtin(self, group: str, name: str) -> _Source | None:
        """A built-in task found before any discovery: entry points cannot shadow one, so none are read for it.

        (Reading every installed distribution's entry points costs tens of milliseconds, more than
        ``goatclaw validate`` of a small pipeline does otherwise.) Once discovery ran, its table
        answers, a task registered from Python included.
        """
        if self._sources is not None or group != "goatclaw.tasks" or name not in BUILTIN_TASKS:
            return None
        return _Source(name, BUILTIN_TASKS[name], "goatclaw", _own_version())

    def _discover(self) -> dict[str, dict[str, _Source]]:
        if self._sources is None:
            sources: dict[str, dict[str, _Source]] = {g: {} for g in GROUPS}
            version = _own_version()
            for name, ref in BUILTIN_TASKS.items():
                sources["goatclaw.tasks"][name] = _Source(name, ref, "goatclaw", version)
            for name, ref in BUILTIN_HOOKS.items():
                sources["goatclaw.hooks"][name] = _Source(name, ref, "goatclaw", version)
            if self._use_entry_points:
                from importlib import metadata

                found = metadata.entry_points()  # every distribution read once, not once per group
                for group in GROUPS:
                    for ep in found.select(group=group):
                        dist = getattr(ep, "dist", None)
                        package = dist.name if dist is not None else "?"
                        builtin = (group == "goatclaw.tasks" and ep.name in BUILTIN_TASKS) or (
                            group == "goatclaw.hooks" and ep.name in BUILTIN_HOOKS)
                        if _normal(package) == DISTRIBUTION or builtin:
                            continue  # built-ins come from the table above; they cannot be shadowed
                        sources[group][ep.name] = _Source(ep.name, ep.value, package,
                                                          dist.version if dist is not None else "",
                                                          loader=ep.load)
            self._sources = sources
        return self._sources


def _require_extra(group: str, name: str, src: _Source) -> None:
    """A built-in task whose extra is not installed is a :class:`PluginError` saying which and how to add it."""
    if group != "goatclaw.tasks" or src.loader is not None or name not in BUILTIN_EXTRAS:
        return
    extra, modules = BUILTIN_EXTRAS[name]
    module = missing(extra, modules)
    if module is not None:
        raise PluginError(missing_message(extra=extra, module=module, needed_by=f"task '{name}'") or "")


def _import_ref(ref: str) -> Any:
    module_name, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _own_version() -> str:
    """The version of the goatclaw that is running (the built-ins' version)."""
    from goatclaw import __version__

    return __version__


def _normal(name: str) -> str:
    """A distribution name as PEP 503 compares them (``Goatclaw_Pipelines`` is ``goatclaw-pipelines``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


_FIRST = {"task": "the TaskContext", "validator": "the output"}


def _describe(name: str, fn: Callable[..., Any], src: _Source, *, kind: str) -> Plugin:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise PluginError(f"{kind} '{name}' from {src.package} {src.version}: cannot read its signature: "
                          f"{exc}") from exc
    params = list(sig.parameters.values())
    if kind in _FIRST:
        if not params or params[0].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                                inspect.Parameter.POSITIONAL_OR_KEYWORD):
            raise PluginError(f"{kind} '{name}' from {src.package} {src.version} has the wrong shape: its first "
                              f"parameter must take {_FIRST[kind]} (signature: {name}{sig})")
        params = params[1:]
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    named = {p.name: p for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                      inspect.Parameter.KEYWORD_ONLY)}
    extra_positional = [p for p in params if p.kind is inspect.Parameter.POSITIONAL_ONLY]
    if extra_positional:
        raise PluginError(f"{kind} '{name}' from {src.package} {src.version} has the wrong shape: arguments after "
                          f"{_FIRST.get(kind, 'the first')} must be keyword arguments (signature: {name}{sig})")
    return Plugin(name, fn, spec_of(fn), src.package, src.version,
                  inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__),
                  named, accepts_any, _hints(fn), kind)


#: The methods a hook may implement (any subset), each called with keyword arguments only.
HOOK_EVENTS = ("on_run_start", "before_task", "after_task", "on_task_success", "on_task_failure", "on_run_end")


def _describe_hook(name: str, obj: Any, src: _Source) -> Plugin:
    """A hook is an object, class or module with some of :data:`HOOK_EVENTS` as methods/functions."""
    if not any(callable(getattr(obj, event, None)) for event in HOOK_EVENTS):
        raise PluginError(f"hook '{name}' from {src.package} {src.version} has the wrong shape: {src.ref} "
                          f"implements none of {', '.join(HOOK_EVENTS)}")
    if not inspect.isclass(obj):
        return Plugin(name, obj, PluginSpec(), src.package, src.version, False, {}, False, {}, "hook")
    described = _describe(name, obj, src, kind="hook")  # the constructor's parameters: what with: may pass
    return Plugin(name, obj, PluginSpec(), src.package, src.version, False, described.params,
                  described.accepts_any, _hints(obj.__init__), "hook")


@dataclass(frozen=True)
class PluginInfo:
    """A plugin as ``goatclaw plugins`` lists it; ``error`` says why a broken one cannot load."""

    name: str
    kind: str
    package: str
    version: str
    ref: str = ""
    doc: str = ""
    full_doc: str = ""
    signature: str = ""
    arguments: tuple[dict[str, Any], ...] = ()
    spec: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None

    @classmethod
    def of(cls, plugin: Plugin) -> PluginInfo:
        """Describe a loaded plugin."""
        fn = plugin.fn
        try:
            signature = str(inspect.signature(fn))
        except (TypeError, ValueError):
            signature = ""
        spec = plugin.spec
        declared = {"cacheable": spec.cacheable, "cpu_bound": spec.cpu_bound, "permissions": list(spec.permissions),
                    "side_effects": spec.side_effects, "schema": dict(spec.schema) if spec.schema else None}
        if plugin.kind == "hook":
            declared = {"events": [e for e in HOOK_EVENTS if callable(getattr(fn, e, None))]}
        module = getattr(fn, "__module__", None) or getattr(fn, "__name__", "")
        return cls(plugin.name, plugin.kind, plugin.package, plugin.version,
                   f"{module}:{getattr(fn, '__qualname__', '')}".rstrip(":"), plugin.doc,
                   inspect.getdoc(fn) or "", signature, tuple(plugin.arguments()), declared)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {"name": self.name, "kind": self.kind, "package": self.package, "version": self.version,
                "ref": self.ref, "doc": self.doc, "signature": self.signature,
                "arguments": [{**a, "default": _jsonable(a["default"])} for a in self.arguments],
                "spec": self.spec, "error": self.error, "full_doc": self.full_doc}


def reference_problems(pipeline: Any, registry: Registry) -> list[Problem]:
    """Problems with the validators (``use:`` rules) and hooks a pipeline names, at file:line:col.

    Unknown or broken plugins and bad ``with:`` arguments; task plugins are checked by the API.
    """
    problems: list[Problem] = []
    for group in (pipeline.tasks, pipeline.on_failure, pipeline.finally_):
        for task in group.values():
            for rule in task.validate:
                if rule.kind == "use" and isinstance(rule.arg, str):
                    problems += _use_problems(pipeline, registry.validator, rule.arg, rule.options.get("with"),
                                              rule.path, keyed=True)
    for i, hook in enumerate(pipeline.hooks):  # the schema reported items that are neither a name nor a mapping
        name, args = (hook, None) if isinstance(hook, str) else (hook.get("use"), hook.get("with")) \
            if isinstance(hook, dict) else (None, None)
        if isinstance(name, str):
            problems += _use_problems(pipeline, registry.hook, name, args, ("hooks", i), keyed=isinstance(hook, dict))
    return problems


def _use_problems(pipeline: Any, get: Callable[[str], Plugin], name: str, args: Any,
                  path: tuple[str | int, ...], *, keyed: bool) -> list[Problem]:
    from goatclaw.spec.loader import dotted

    try:
        plugin = get(name)
    except PluginError as exc:
        where = (*path, "use") if keyed else path
        return [Problem(pipeline.locate(where), dotted(where), exc.message)]
    problems = []
    for arg, message in plugin.check_args(args if isinstance(args, Mapping) else {}):
        where = (*path, "with", arg) if arg else (*path, "with") if args else path
        problems.append(Problem(pipeline.locate(where, key=arg is not None), dotted(where), message))
    return problems


# -- argument types ------------------------------------------------------------------


def _hints(fn: Any) -> dict[str, Any]:
    """Resolved type hints, or none when they cannot be resolved (then types are not checked)."""
    try:
        target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else getattr(fn, "__call__", fn)  # noqa: B004
        hints = typing.get_type_hints(target)
    except Exception:
        return {}
    hints.pop("return", None)
    return hints


def _templated(value: Any) -> bool:
    """Whether a ``with:`` value holds a ``${{ }}`` template anywhere (its type is only known at run time)."""
    if isinstance(value, str):
        return "${{" in value
    if isinstance(value, Mapping):
        return any(_templated(k) or _templated(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_templated(v) for v in value)
    return False


_MAPPINGS = (dict, abc.Mapping, abc.MutableMapping)
_SEQUENCES = (list, tuple, abc.Sequence, abc.MutableSequence, abc.Iterable, abc.Collection)


def _matches(value: Any, hint: Any) -> bool | None:
    """Whether a YAML value fits a type hint; ``None`` when the hint is not one we can check."""
    if hint is Any or hint is object or isinstance(hint, typing.TypeVar):
        return True
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(_matches(value, a) is not False for a in args)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin is typing.Annotated:
        return _matches(value, args[0])
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint in (str, bool):
        return isinstance(value, hint)
    if inspect.isclass(hint) and issubclass(hint, PurePath):
        return isinstance(value, str)
    base = origin or hint
    if base in _MAPPINGS:
        if not isinstance(value, Mapping):
            return False
        return not (len(args) == 2 and any(_matches(v, args[1]) is False for v in value.values()))
    if base in _SEQUENCES:
        if not isinstance(value, (list, tuple)):
            return False
        item = args[0] if len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis) else None
        return not (item is not None and any(_matches(v, item) is False for v in value))
    return None


def type_text(hint: Any) -> str:
    """A type hint as a reader expects it: ``int``, ``list[str]``, ``'a' | 'b'``, ``str | None``."""
    if hint is Any:
        return "any"
    if hint is None or hint is type(None):
        return "None"
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(type_text(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join('...' if a is Ellipsis else type_text(a) for a in args)}]" if args else name
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def _value_text(value: Any) -> str:
    names = {str: "string", bool: "boolean", int: "integer", float: "number", list: "list", dict: "mapping"}
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return f"{names.get(type(value), type(value).__name__)} {shown}"


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else repr(value)


_DEFAULT: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry (created on first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Registry()
    return _DEFAULT
