"""A task plugin as a tool: its ``with:`` arguments as the JSON Schema a model fills in.

:func:`parameters_of` reads the plugin as ``goatclaw validate`` does (:meth:`Plugin.check_args`):
a declared ``schema=`` as it is, else the signature's parameters, type hints and defaults.
Arguments an entry fixes in ``with:`` are left out, so the model never sees (or changes)
them. :class:`Toolbox` offers the tools and answers each call with the result the model
reads next, or the error (message and class) when the call failed.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
import types
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from goatclaw.errors import PluginError, TaskError
from goatclaw.registry import Plugin

__all__ = ["MAX_RESULT_CHARS", "Tool", "Toolbox", "mcp_tool", "model_sinks", "parameters_of", "plugin_tool",
           "schema_of_hint", "trust_of"]

#: The most characters of one tool result the model reads (the rest is cut, and it is told).
MAX_RESULT_CHARS = 32_000
#: The names a model may call (the OpenAI API's rule).
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ENTRY_KEYS = frozenset({"uses", "with", "name", "description", "retry", "cache", "trust", "breaker"})


@dataclass(frozen=True)
class Tool:
    """One tool a model may call: a plugin, the arguments fixed for it, and what the model is told."""

    name: str
    uses: str
    plugin: Plugin | None = field(repr=False)  # ``None``: a tool of an MCP server
    description: str
    parameters: Mapping[str, Any]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    #: For a tool of an MCP server: the server's name and the tool's own name there.
    server: str | None = None
    remote: str | None = None
    #: The entry's ``retry:`` as written (``None``: the calling task's policy applies to each call).
    retry: Any = None
    #: ``False``: a call is never answered from the task cache (``cache: false`` on the entry).
    cache: bool = True
    #: Sink arguments (a URL, a path, a command) the model would fill and the entry's ``trust:`` does not
    #: allow: such a tool is never offered (a model's text never becomes a command or a path without ``trust:``).
    untrusted_sinks: tuple[str, ...] = ()
    #: The entry's ``breaker:`` as written (``None``: the calling task's ``breaker:``, if any, guards each call).
    breaker: Any = None

    def openai(self) -> dict[str, Any]:
        """The tool as the OpenAI chat API (and litellm) takes it."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": copy.deepcopy(dict(self.parameters))}}


def plugin_tool(index: int, entry: Any, get: Callable[[str], Plugin]) -> Tool:
    """The tool ``entry`` (``tools[index]`` of a task) describes; ``invalid_input`` when it cannot be one."""
    where = f"tools[{index}]"
    if not isinstance(entry, Mapping) or not isinstance(entry.get("uses"), str) or not entry["uses"]:
        raise TaskError(f"{where} must be a mapping with uses: (a task plugin) and optionally with:, name:, "
                        "description:", error_class="invalid_input")
    extra = sorted(set(entry) - _ENTRY_KEYS)
    if extra:
        raise TaskError(f"{where} takes no {', '.join(extra)} (it takes uses, with, name, description, retry, "
                        "cache)",
                        error_class="invalid_input")
    uses = entry["uses"]
    fixed = entry.get("with") or {}
    if not isinstance(fixed, Mapping):
        raise TaskError(f"{where}.with must be a mapping", error_class="invalid_input")
    try:
        plugin = get(uses)
    except PluginError as exc:
        raise TaskError(f"{where}: {exc.message}", error_class="invalid_input") from None
    name = entry.get("name") or re.sub(r"[^A-Za-z0-9_-]", "_", uses)
    if not isinstance(name, str) or not _NAME.match(name):
        raise TaskError(f"{where}.name '{name}' must be 1 to 64 letters, digits, _ or -", error_class="invalid_input")
    description = entry.get("description") or (inspect.getdoc(plugin.fn) or f"the {uses} task").strip()
    sinks = model_sinks(plugin.spec.sinks, plugin.params, fixed, trust_of(entry, where), plugin.accepts_any)
    return Tool(name, uses, plugin, str(description), parameters_of(plugin, fixed), dict(fixed),
                retry=entry.get("retry"), cache=entry.get("cache", True) is not False, untrusted_sinks=sinks,
                breaker=entry.get("breaker"))


def trust_of(entry: Mapping[str, Any], where: str) -> bool | frozenset[str]:
    """A tool entry's ``trust:``: ``True`` (the model may fill every sink argument) or the names it may fill."""
    value = entry.get("trust", False)
    if value is True or value is False:
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value):
        return frozenset(value)
    raise TaskError(f"{where}.trust must be true or a list of argument names the model may fill although they "
                    "are sinks (a URL, a path, a command)", error_class="invalid_input")


def model_sinks(sinks: Sequence[str], params: Iterable[str], fixed: Mapping[str, Any],
                trust: bool | frozenset[str], open_ended: bool = False) -> tuple[str, ...]:
    """The sink arguments a model would fill (not ``fixed``) that ``trust`` does not allow, in order.

    ``sinks`` are the plugin's (``"*"``: every argument, then ``params`` names them; an
    ``open_ended`` plugin, one taking ``**kwargs``, takes arguments no list can name, so
    ``"*"`` itself stays unless ``trust: true``).
    """
    if trust is True or not sinks:
        return ()
    named = [p for p in params if p not in fixed] + (["*"] if open_ended else []) if "*" in sinks else list(sinks)
    allowed = trust if isinstance(trust, frozenset) else frozenset()
    return tuple(dict.fromkeys(s for s in named if s not in fixed and s not in allowed))


def mcp_tool(server: str, name: str, description: str, schema: Mapping[str, Any]) -> Tool:
    """A tool an MCP server lists, as the model is offered it (named ``server_tool``, at most 64 characters)."""
    called = re.sub(r"[^A-Za-z0-9_-]", "_", f"{server}_{name}")[:64]
    parameters = copy.deepcopy(dict(schema)) if isinstance(schema, Mapping) else {}
    parameters.setdefault("type", "object")
    return Tool(called, f"mcp:{server}", None, description or f"the tool {name} of the MCP server {server}",
                parameters, server=server, remote=name)


def parameters_of(plugin: Plugin, fixed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON Schema of ``plugin``'s ``with:`` without the ``fixed`` arguments."""
    fixed = fixed or {}
    if plugin.spec.schema is not None:
        schema = copy.deepcopy(dict(plugin.spec.schema))
        schema.setdefault("type", "object")
    else:
        properties = {name: schema_of_hint(plugin.hints.get(name, Any), p.default)
                      for name, p in plugin.params.items()}
        required = [name for name, p in plugin.params.items() if p.default is inspect.Parameter.empty]
        schema = {"type": "object", "properties": properties, "required": required}
        if not plugin.accepts_any:
            schema["additionalProperties"] = False
    props = schema.get("properties")
    if isinstance(props, dict):
        schema["properties"] = {k: v for k, v in props.items() if k not in fixed}
    if isinstance(schema.get("required"), list):
        schema["required"] = [r for r in schema["required"] if r not in fixed]
    return schema


_SIMPLE = {str: "string", bool: "boolean", int: "integer", float: "number"}
_MAPPINGS = (dict, Mapping, typing.Mapping, typing.MutableMapping)
_SEQUENCES = (list, tuple, Sequence, set, frozenset, typing.Sequence, typing.Iterable)


def schema_of_hint(hint: Any, default: Any = inspect.Parameter.empty) -> dict[str, Any]:
    """A type hint as JSON Schema (``{}`` for what a schema cannot say); a JSON default is kept."""
    schema = _schema(hint)
    if default is not inspect.Parameter.empty and default is not None and _jsonable(default):
        schema["default"] = default
    return schema


def _schema(hint: Any) -> dict[str, Any]:
    if hint is Any or hint is object or isinstance(hint, typing.TypeVar):
        return {}
    if hint is None or hint is type(None):
        return {"type": "null"}
    if hint in _SIMPLE:
        return {"type": _SIMPLE[hint]}
    if inspect.isclass(hint) and issubclass(hint, PurePath):
        return {"type": "string"}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return _schema(args[0])
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin is typing.Union or origin is types.UnionType:
        options = [_schema(a) for a in args]
        return {} if any(o == {} for o in options) else {"anyOf": options}
    base = origin or hint
    if base in _MAPPINGS:
        values = _schema(args[1]) if len(args) == 2 else {}
        return {"type": "object", **({"additionalProperties": values} if values else {})}
    if base in _SEQUENCES:
        item = args[0] if len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis) else None
        items = _schema(item) if item is not None else {}
        return {"type": "array", **({"items": items} if items else {})}
    return {}


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


#: ``run(tool, kwargs)``: the engine's attempt of one call; the output's JSON text (secrets masked).
RunTool = Callable[[Tool, dict[str, Any]], Awaitable[str]]


class Toolbox:
    """The tools one task offers a model, and how a call of the model is answered.

    ``refused`` are the tools the task is not granted (name → why): they are never offered,
    and a call to one anyway is answered ``permission_denied``. A call rejected before it
    runs (that, an unknown tool, arguments that do not fit) goes to ``on_rejected(name, error)``.
    """

    def __init__(self, tools: Sequence[Tool], run: RunTool, refused: Mapping[str, str] | None = None,
                 on_rejected: Callable[[str, TaskError], None] | None = None) -> None:
        names = [t.name for t in tools]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise TaskError(f"tools: two tools are called {', '.join(twice)}; give one of them a name:",
                            error_class="invalid_input")
        self.tools = {t.name: t for t in tools}
        self.refused = dict(refused or {})
        self._run = run
        self._on_rejected = on_rejected

    def schemas(self) -> list[dict[str, Any]]:
        """The offered tools as the model's request carries them."""
        return [t.openai() for t in self.tools.values()]

    async def call(self, name: str, arguments: str) -> dict[str, Any]:
        """Answer one call: ``{content, error_class, uses}``; a failure is a result too, never an exception."""
        tool = self.tools.get(name)
        try:
            if tool is None:
                why = self.refused.get(name) or next(  # a tool of an MCP server the task is granted nothing of
                    (w for k, w in self.refused.items() if k.startswith("mcp:") and name.startswith(k[4:] + "_")), None)
                err = TaskError(f"no tool '{name}'" + (f": {why}" if why else f" (tools: {', '.join(self.tools)})"),
                                error_class="permission_denied" if why else "invalid_input")
                if self._on_rejected is not None:
                    self._on_rejected(name, err)
                raise err
            try:
                kwargs = self._kwargs(tool, arguments)
            except TaskError as err:
                if self._on_rejected is not None:
                    self._on_rejected(tool.name, err)
                raise
            text = _bounded(await self._run(tool, kwargs))
        except TaskError as err:
            return {"content": json.dumps({"error": err.message, "error_class": err.error_class}, ensure_ascii=False),
                    "error_class": err.error_class, "uses": tool.uses if tool else None}
        return {"content": text, "error_class": None, "uses": tool.uses}

    def _kwargs(self, tool: Tool, arguments: str) -> dict[str, Any]:
        """The call's ``with:``: the model's arguments (a JSON object) and the fixed ones, as validate checks them."""
        try:
            given = json.loads(arguments or "{}", parse_constant=_refuse_constant)
        except ValueError as exc:
            raise TaskError(f"{tool.name}: the arguments are not JSON: {exc}", error_class="invalid_input") from None
        if not isinstance(given, dict):
            raise TaskError(f"{tool.name}: the arguments must be a JSON object", error_class="invalid_input")
        clash = sorted(set(given) & set(tool.fixed))
        if clash:
            raise TaskError(f"{tool.name}: {', '.join(clash)} is fixed by the pipeline and cannot be given",
                            error_class="invalid_input")
        kwargs = {**given, **tool.fixed}
        if tool.plugin is None:  # an MCP server checks its own tool's arguments (an error comes back as the result)
            return kwargs
        problems = tool.plugin.check_args(kwargs)
        if problems:
            raise TaskError(f"{tool.name}: " + "; ".join(m for _, m in problems[:5]), error_class="invalid_input")
        return kwargs


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _bounded(text: str) -> str:
    if len(text) <= MAX_RESULT_CHARS:
        return text
    return text[:MAX_RESULT_CHARS] + f"… (cut: {len(text) - MAX_RESULT_CHARS} more characters)"
