"""Finding task plugins: built-ins and entry points, loaded only when a name is needed.

Third parties publish plugins in the entry-point groups ``goatclaw.tasks``,
``goatclaw.validators`` and ``goatclaw.hooks``. The built-in tasks are declared the same
way (as ``module:attribute`` references) and go through the same loading code. A plugin
that fails to import or has the wrong shape is reported with its package and version,
and never breaks the others.
"""

from __future__ import annotations

import importlib
import inspect
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from goatclaw.errors import PluginError
from goatclaw.plugin import PluginSpec, spec_of

__all__ = ["BUILTIN_TASKS", "Plugin", "Registry", "default_registry"]

GROUPS = ("goatclaw.tasks", "goatclaw.validators", "goatclaw.hooks")

#: Built-in task plugins, loaded exactly like an entry point's ``module:attribute``.
BUILTIN_TASKS: Mapping[str, str] = {
    "echo": "goatclaw.tasks.echo:echo",
    "shell": "goatclaw.tasks.shell:shell",
    "python": "goatclaw.tasks.python:python",
    "file.read": "goatclaw.tasks.files:read",
    "file.write": "goatclaw.tasks.files:write",
    "file.list": "goatclaw.tasks.files:list_files",
    "http": "goatclaw.tasks.http:http",
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

    @property
    def doc(self) -> str:
        """The first line of the plugin's docstring."""
        return (inspect.getdoc(self.fn) or "").strip().splitlines()[0] if inspect.getdoc(self.fn) else ""

    @property
    def origin(self) -> str:
        """``package version`` for messages."""
        return f"{self.package} {self.version}".strip()

    def check_args(self, args: Mapping[str, Any]) -> list[tuple[str | None, str]]:
        """Problems with ``with:`` arguments: (argument or None, message)."""
        if self.spec.schema is not None:
            return []  # checked against the declared schema by the caller
        problems: list[tuple[str | None, str]] = []
        if not self.accepts_any:
            for name in args:
                if name not in self.params:
                    known = ", ".join(sorted(self.params)) or "none"
                    problems.append((name, f"'{self.name}' takes no argument '{name}' (it takes: {known})"))
        for name, p in self.params.items():
            if p.default is inspect.Parameter.empty and name not in args:
                problems.append((None, f"'{self.name}' needs argument '{name}'"))
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
        src = self._discover()[group].get(name)
        if src is None:
            raise PluginError(f"unknown {kind} '{name}'{self._suggest(group, name)}")
        if name in self._deny or (self._allow is not None and name not in self._allow):
            raise PluginError(f"{kind} '{name}' ({src.package} {src.version}) is disabled in goatclaw.yaml")
        try:
            obj = src.loader() if src.loader is not None else _import_ref(src.ref)
        except Exception as exc:
            raise PluginError(f"{kind} '{name}' from {src.package} {src.version} failed to load: "
                              f"{type(exc).__name__}: {exc}") from exc
        if not callable(obj):
            raise PluginError(f"{kind} '{name}' from {src.package} {src.version} is not callable "
                              f"({src.ref} is a {type(obj).__name__})")
        return _describe(name, obj, src, first_is_context=group == "goatclaw.tasks")

    def _suggest(self, group: str, name: str) -> str:
        import difflib

        close = difflib.get_close_matches(name, self.names(group), n=1, cutoff=0.6)
        return f" (did you mean '{close[0]}'?)" if close else " (is its package installed? see `goatclaw plugins`)"

    # -- discovery -------------------------------------------------------------------

    def _discover(self) -> dict[str, dict[str, _Source]]:
        if self._sources is None:
            sources: dict[str, dict[str, _Source]] = {g: {} for g in GROUPS}
            version = _own_version()
            for name, ref in BUILTIN_TASKS.items():
                sources["goatclaw.tasks"][name] = _Source(name, ref, "goatclaw", version)
            if self._use_entry_points:
                for group in GROUPS:
                    for ep in metadata.entry_points(group=group):
                        dist = getattr(ep, "dist", None)
                        package = dist.name if dist is not None else "?"
                        if package == "goatclaw" or (group == "goatclaw.tasks" and ep.name in BUILTIN_TASKS):
                            continue  # built-ins come from the table above; they cannot be shadowed
                        sources[group][ep.name] = _Source(ep.name, ep.value, package,
                                                          dist.version if dist is not None else "",
                                                          loader=ep.load)
            self._sources = sources
        return self._sources


def _import_ref(ref: str) -> Any:
    module_name, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _own_version() -> str:
    try:
        return metadata.version("goatclaw")
    except metadata.PackageNotFoundError:
        return "dev"


def _describe(name: str, fn: Callable[..., Any], src: _Source, *, first_is_context: bool) -> Plugin:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise PluginError(f"plugin '{name}' from {src.package} {src.version}: cannot read its signature: "
                          f"{exc}") from exc
    params = list(sig.parameters.values())
    if first_is_context:
        if not params or params[0].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                                inspect.Parameter.POSITIONAL_OR_KEYWORD):
            raise PluginError(f"task '{name}' from {src.package} {src.version} has the wrong shape: its first "
                              f"parameter must take the TaskContext (signature: {name}{sig})")
        params = params[1:]
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    named = {p.name: p for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                      inspect.Parameter.KEYWORD_ONLY)}
    extra_positional = [p for p in params if p.kind is inspect.Parameter.POSITIONAL_ONLY]
    if extra_positional:
        raise PluginError(f"task '{name}' from {src.package} {src.version} has the wrong shape: arguments after "
                          f"the context must be keyword arguments (signature: {name}{sig})")
    return Plugin(name, fn, spec_of(fn), src.package, src.version,
                  inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__),
                  named, accepts_any)


_DEFAULT: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry (created on first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Registry()
    return _DEFAULT
