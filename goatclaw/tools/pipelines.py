"""A pipeline file as a tool: its ``vars`` as the parameters, its ``outputs:`` as the result.

A ``tools:`` entry ``{pipeline: pipelines/lookup.yaml, with, name, description, retry, cache, trust,
breaker}``
becomes a :class:`~goatclaw.tools.Tool` whose plugin runs the pipeline: the engine hands in
``run`` (``async (ctx, vars) -> result``), which starts the child run in the same store under
the calling task's grant. What this module decides is what the model sees: each var is a
parameter, typed by its default (a var whose default is ``null`` must be given), the fixed
``with:`` vars left out; the tool needs what the child's tasks need (so a task that is not
granted it never offers the tool), and its result is untrusted when any of those tasks'
outputs are.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from goatclaw.errors import TaskError
from goatclaw.plugin import PluginSpec
from goatclaw.registry import Plugin
from goatclaw.tools.plugins import Tool, model_sinks, schema_of_hint, trust_of

__all__ = ["PIPELINE_ENTRY_KEYS", "pipeline_tool", "vars_schema"]

PIPELINE_ENTRY_KEYS = frozenset({"pipeline", "with", "name", "description", "retry", "cache", "trust", "breaker"})
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

#: ``run(ctx, vars)``: the engine's child run of the pipeline; the result the model reads.
RunPipeline = Callable[[Any, dict[str, Any]], Awaitable[Any]]


def vars_schema(variables: Mapping[str, Any], fixed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON Schema of a pipeline's ``vars`` as parameters, without the ``fixed`` ones.

    A var's type and default come from its default value; a var whose default is ``null``
    has no type and is required.
    """
    fixed = fixed or {}
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, default in variables.items():
        if name in fixed:
            continue
        if default is None:
            properties[name] = {}
            required.append(name)
        else:
            properties[name] = schema_of_hint(_kind(default), _plain(default))
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _kind(value: Any) -> Any:
    if isinstance(value, bool):
        return bool
    if isinstance(value, int):
        return int
    if isinstance(value, float):
        return float
    if isinstance(value, str):
        return str
    if isinstance(value, Mapping):
        return dict
    if isinstance(value, (list, tuple)):
        return list
    return Any


def _plain(value: Any) -> Any:
    """A frozen default (mapping proxies, tuples) as plain JSON values."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def pipeline_tool(index: int, entry: Mapping[str, Any], pipeline: Any, needs: tuple[str, ...], untrusted: bool,
                  run: RunPipeline, sink_vars: Sequence[str] = ()) -> Tool:
    """The tool ``entry`` (``tools[index]``) makes of ``pipeline`` (loaded by the engine); ``invalid_input`` if none.

    ``needs`` are the permissions its tasks' plugins declare, ``untrusted`` whether any of
    their outputs is; ``run`` starts the child run. ``sink_vars`` are the vars that reach a
    sink argument of one of its tasks (a URL, a path, a command): the model may fill those
    only as far as the entry's ``trust:`` allows.
    """
    where = f"tools[{index}]"
    extra = sorted(set(entry) - PIPELINE_ENTRY_KEYS)
    if extra:
        raise TaskError(f"{where} takes no {', '.join(extra)} (it takes {', '.join(sorted(PIPELINE_ENTRY_KEYS))})",
                        error_class="invalid_input")
    fixed = entry.get("with") or {}
    if not isinstance(fixed, Mapping):
        raise TaskError(f"{where}.with must be a mapping", error_class="invalid_input")
    unknown = sorted(set(fixed) - set(pipeline.vars))
    if unknown:
        raise TaskError(f"{where}.with: pipeline '{pipeline.name}' has no vars {', '.join(unknown)} (it has: "
                        f"{', '.join(pipeline.vars) or 'none'})", error_class="invalid_input")
    name = entry.get("name") or re.sub(r"[^A-Za-z0-9_-]", "_", pipeline.name)[:64]
    if not isinstance(name, str) or not _NAME.match(name):
        raise TaskError(f"{where}.name '{name}' must be 1 to 64 letters, digits, _ or -", error_class="invalid_input")
    description = entry.get("description") or pipeline.description or f"runs the pipeline {pipeline.name}"
    parameters = vars_schema(pipeline.vars, fixed)

    async def run_pipeline(ctx: Any, **given: Any) -> Any:
        return await run(ctx, {**given, **fixed})

    run_pipeline.__doc__ = str(description)
    spec = PluginSpec(cacheable=False, permissions=needs, schema=parameters, side_effects=True,
                      untrusted_output=untrusted)
    plugin = Plugin(name=f"pipeline:{entry['pipeline']}", fn=run_pipeline, spec=spec, package="pipeline",
                    version=pipeline.digest[:12], is_async=True, params={}, accepts_any=True, kind="pipeline")
    sinks = model_sinks(tuple(sink_vars), pipeline.vars, fixed, trust_of(entry, where))
    return Tool(name, f"pipeline:{entry['pipeline']}", plugin, str(description).strip(), parameters, {},
                retry=entry.get("retry"), cache=entry.get("cache", True) is not False, untrusted_sinks=sinks,
                breaker=entry.get("breaker"))

