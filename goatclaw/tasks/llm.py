"""``llm``: ask a model (through litellm), with fallbacks, JSON output, cost and record/replay.

The output is always the same shape, so later tasks know where to look::

    {"text": "<the reply>",            # always the raw reply
     "data": {...} | null,              # output: json → the parsed (and schema-checked) reply
     "model": "openai/gpt-4o-mini",     # the model that answered
     "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
     "cost_usd": 5.85e-06,              # 0 from the cache or a cassette, and for unpriced models
     "latency_ms": 412.0,
     "hops": [{"model": ..., "error_class": "rate_limit", "message": ...}],   # models that failed first
     "source": "live" | "cache" | "cassette",
     "key": "<sha256 of the request>"}

``model`` is one model or a list (the primary, then its fallbacks); an entry may be a
mapping ``{name, api_base, api_key}`` for a model on a server of its own. A single model is
followed by the project's ``fallbacks:``; with no model, the project's ``model:`` is used
(or, with none in goatclaw.yaml, the one goatclaw chose from the providers it found).
``model: {cascade: [cheap, middle, strong], feedback: true}`` is a cascade: the engine
asks each model in turn until an answer passes the task's ``validate:`` rules (``at`` is
the one this call asks), and the output gains ``cascade`` (docs/llm.md, Cascades).
litellm is imported in a thread when a run's plan holds an ``llm`` task (the event loop
runs on meanwhile, and no ``timeout`` counts the import), never when goatclaw is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from goatclaw.plugin import TaskContext, fail, task

__all__ = ["llm"]

_ROLES = ("system", "user", "assistant", "tool", "developer")


async def _warmup() -> None:
    """Litellm's import, in a thread, started when the run's plan holds an ``llm`` task (no timeout counts it)."""
    from goatclaw import llm as room

    await room.warm()


@task(cacheable=False, permissions=("network",), untrusted_output=True, warmup=_warmup)
async def llm(ctx: TaskContext, *, prompt: str | None = None, messages: list[dict[str, Any]] | None = None,
              model: str | dict[str, Any] | list[str | dict[str, Any]] | None = None, system: str | None = None,
              temperature: float | None = None,
              max_tokens: int | None = None, output: Literal["text", "json"] = "text",
              schema: dict[str, Any] | None = None, api_base: str | None = None, api_key: str | None = None,
              timeout: float | None = 120, stream: bool = False, tools: list[dict[str, Any]] | None = None,
              max_turns: int = 10, max_tool_calls: int = 20, approve: bool | list[str] | None = None) -> dict[str, Any]:
    """Ask a model: ``prompt`` (or chat ``messages``) → text, or parsed JSON with ``output: json``.

    ``schema`` (a JSON Schema) checks the parsed reply (``invalid_output`` when it does not
    match). ``api_base`` points at another OpenAI-compatible server (a local one, say).
    ``stream`` shows the answer in the live view as it arrives (``task.progress`` events);
    the output is the same either way. The answer is reused from the LLM answer cache
    only at ``temperature: 0`` or when the task says ``cache: true`` (docs/llm.md); the
    task cache never holds it. ``tools`` lists task plugins (``{uses, with, name, description}``),
    pipeline files (``{pipeline, with, ...}``) and MCP servers' tools (``{mcp: server}``) the model
    may call; each call runs as an attempt of this task, at most ``max_tool_calls`` of them over at
    most ``max_turns`` model calls, and the output gains the ``trajectory`` (docs/llm.md, Tools).
    ``approve`` names the tools (``true``: all) whose calls a person must allow first.
    """
    from goatclaw import llm as room

    s = room.session()
    if model is None and s.cascade:
        model = {"cascade": list(s.cascade)}
    cascade = _cascade(model)
    if cascade is not None:
        model = cascade[0][cascade[1]]
    elif model is None and s.chosen:
        ctx.emit("llm.choice", model=s.model, why=s.chosen)
    models, endpoints = _chain(model, s)
    request = room.Request(
        models=models,
        endpoints=endpoints,
        messages=tuple(_messages(prompt, messages, system)),
        temperature=_number("temperature", temperature),
        max_tokens=_count("max_tokens", max_tokens),
        output=output,
        schema=_schema(schema, output),
        api_base=api_base or None,
        api_key=api_key or None,
        timeout=_number("timeout", timeout),
        stream=stream is True,
        cache=ctx.cache,
        cache_ttl=ctx.cache_ttl,
    )
    for name in request.models:  # each model's own host (a chain can span servers)
        ctx.require_models((name,), *room.endpoint(name, request))
    if tools is None:
        response = await room.complete(request, emit=ctx.emit, secrets=list(ctx.secrets.values()))
        out = response.as_output()
    else:
        out = await _with_tools(ctx, request, tools, _count("max_turns", max_turns) or 10,
                                _count("max_tool_calls", max_tool_calls) or 20, approve)
    return out if cascade is None else {**out, "cascade": _stage(cascade, out)}


def _cascade(model: Any) -> tuple[list[Any], int, bool] | None:
    """``(entries, at, feedback)`` of ``model: {cascade: [...], at, feedback}``; ``None`` for any other model."""
    if not isinstance(model, dict) or "cascade" not in model:
        return None
    entries, at = model.get("cascade"), model.get("at", 0)
    extra = set(model) - {"cascade", "at", "feedback"}
    if not isinstance(entries, list) or not entries or extra:
        fail("model: {cascade: [...]} needs a non-empty list of models (and optionally feedback: true)"
             + (f", not {', '.join(sorted(extra))}" if extra else ""), error_class="invalid_input")
    if isinstance(at, bool) or not isinstance(at, int) or not 0 <= at < len(entries):
        fail(f"model.at must be the index of a model of the cascade, not {at!r}", error_class="invalid_input")
    return entries, at, model.get("feedback") is True


def _name(entry: Any) -> str:
    return str(entry.get("name") if isinstance(entry, dict) else entry).strip()


def _stage(cascade: tuple[list[Any], int, bool], out: dict[str, Any]) -> dict[str, Any]:
    """What a cascade's answer records: the models, which one answered, what it would have cost at the last's prices."""
    from goatclaw import llm as room

    entries, at, _ = cascade
    last = _name(entries[-1])
    live = out.get("source") == "live"
    return {"models": [_name(e) for e in entries], "at": at, "answered_by": out.get("model"),
            "if_last_usd": room.price(last, out.get("usage") or {}) if live else 0.0}


async def _with_tools(ctx: TaskContext, request: Any, tools: Any, max_turns: int,
                      max_tool_calls: int, approve: Any = None) -> dict[str, Any]:
    """The tool loop: the engine's toolbox offers what the task is granted; the output gains the trajectory."""
    import dataclasses
    import inspect

    from goatclaw import llm as room

    if ctx.tools is None:
        fail("tools: need a local run of the engine (the tool calls run as attempts of this task)",
             error_class="invalid_input")
    box = ctx.tools(tools, approve) if approve is not None else ctx.tools(tools)
    if inspect.isawaitable(box):  # MCP servers' tools are listed first
        box = await box
    request = dataclasses.replace(request, tools=tuple(box.schemas()))
    response, trajectory = await room.converse(request, call_tool=box.call, max_turns=max_turns,
                                               max_tool_calls=max_tool_calls, emit=ctx.emit,
                                               secrets=list(ctx.secrets.values()))
    return {**response.as_output(), "trajectory": trajectory,
            "tools": {"offered": sorted(box.tools), "refused": box.refused}}


def _chain(model: Any, session: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The models to try and the endpoints the task's entries give (``{name, api_base, api_key}``)."""
    from goatclaw import llm as room

    entries = model if isinstance(model, list) else [model] if isinstance(model, dict) else None
    if entries is None:
        return _models(model, session), {}
    names: list[str] = []
    endpoints: dict[str, Any] = {}
    for i, entry in enumerate(entries):
        if isinstance(entry, dict):
            extra = set(entry) - {"name", "api_base", "api_key"}
            if not isinstance(entry.get("name"), str) or extra:
                fail(f"model[{i}] must be a name or a mapping with name and optionally api_base, api_key"
                     + (f" (not {', '.join(sorted(extra))})" if extra else ""), error_class="invalid_input")
            names.append(entry["name"])
            if entry.get("api_base") or entry.get("api_key"):
                endpoints[entry["name"].strip()] = room.Endpoint(entry.get("api_base") or None,
                                                                 entry.get("api_key") or None)
        else:
            names.append(entry)
    return _models(names if isinstance(model, list) else names[0], session), endpoints


def _models(model: str | list[str] | None, session: Any) -> tuple[str, ...]:
    """The chain to try: the task's list, or its model then the project's fallbacks."""
    if isinstance(model, list):
        chain = model
    elif isinstance(model, str) and model:
        chain = [model, *session.fallbacks]
    else:
        chain = [m for m in (session.model, *session.fallbacks) if m]
    if not chain or not all(isinstance(m, str) and m.strip() for m in chain):
        fail("no model: give model: (a litellm name such as openai/gpt-4o-mini, or a list of them) "
             "or set model: in goatclaw.yaml", error_class="invalid_input")
    return tuple(dict.fromkeys(m.strip() for m in chain))


def _messages(prompt: str | None, messages: list[dict[str, Any]] | None, system: str | None) -> list[dict[str, Any]]:
    """Chat messages from ``prompt`` or ``messages``, with ``system`` first."""
    if (prompt is None) == (messages is None):
        fail("give either prompt: or messages:, not both and not neither", error_class="invalid_input")
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            fail("prompt is empty", error_class="invalid_input")
        chat: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    else:
        chat = [_message(i, m) for i, m in enumerate(messages or [])]
        if not chat:
            fail("messages is empty", error_class="invalid_input")
    if system:
        chat.insert(0, {"role": "system", "content": str(system)})
    return chat


def _message(index: int, m: Any) -> dict[str, Any]:
    if not isinstance(m, Mapping) or m.get("role") not in _ROLES or "content" not in m:
        fail(f"messages[{index}] must be a mapping with role ({', '.join(_ROLES)}) and content",
             error_class="invalid_input")
    return dict(m)


def _number(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        fail(f"{name} must be a non-negative number, not {value!r}", error_class="invalid_input")
    return float(value)


def _count(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        fail(f"{name} must be a positive integer, not {value!r}", error_class="invalid_input")
    return value


def _schema(schema: dict[str, Any] | None, output: str) -> dict[str, Any] | None:
    if schema is None:
        return None
    if output != "json":
        fail("schema: needs output: json", error_class="invalid_input")
    from goatclaw.spec.schema import check_schema

    problem = check_schema(schema)
    if problem:
        fail(f"schema is not a valid JSON Schema: {problem}", error_class="invalid_input")
    return schema
