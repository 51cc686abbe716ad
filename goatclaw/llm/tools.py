"""The tool loop: a model that calls tools, each call run by a function the engine hands in.

::

    request + tools ─▶ complete ─▶ tool calls? ─no─▶ the answer (+ trajectory)
                          ▲             │ yes
                          │             ▼
                          └── tool results ◀── call_tool(name, arguments) for each, concurrently

This room never imports the engine: :func:`converse` is given ``call_tool``, an ``async``
function ``(name, arguments) -> {"content": str, "error_class": str | None, "output": Any}``
that runs one call as an attempt of the task (permissions, taint, secrets, audit, recorder)
and never raises for the tool's own failure: a failed call comes back with its
``error_class`` and the model reads it as the call's result. Every turn goes through
:func:`goatclaw.llm.complete` (budget, rate limits, cache, cassette), so an agent run
records and replays like any other call. The loop is bounded by ``max_turns`` (model
calls) and ``max_tool_calls`` (tool calls in all); the task's timeout bounds the whole.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from goatclaw.errors import TaskError
from goatclaw.llm.call import complete
from goatclaw.llm.request import Emit, Request, Response

__all__ = ["DEFAULT_MAX_TOOL_CALLS", "DEFAULT_MAX_TURNS", "TRAJECTORY_RESULT_CHARS", "CallTool", "converse"]

#: ``call_tool(name, arguments)``: ``arguments`` is the model's JSON text, as it sent it.
CallTool = Callable[[str, str], Awaitable[Mapping[str, Any]]]
DEFAULT_MAX_TURNS = 10
DEFAULT_MAX_TOOL_CALLS = 20
#: How much of each tool result the trajectory keeps (the model reads what ``call_tool`` gives).
TRAJECTORY_RESULT_CHARS = 2000


async def converse(request: Request, *, call_tool: CallTool, max_turns: int = DEFAULT_MAX_TURNS,
                   max_tool_calls: int = DEFAULT_MAX_TOOL_CALLS, emit: Emit | None = None,
                   secrets: Sequence[str] = (),
                   transcript: list[dict[str, Any]] | None = None) -> tuple[Response, list[dict[str, Any]]]:
    """Ask, run the tool calls of each answer, ask again with their results; the final answer and the trajectory.

    The final :class:`Response` carries the usage and cost of every turn together. Each
    trajectory entry is one turn: its text, model, usage, cost, latency and ``calls``, its
    tool calls (name, arguments, bounded result, error class, duration). The key is not
    ``tool_calls``: the threat scan rightly flags that in an output as an injected call. A model that still calls
    tools at ``max_turns`` fails the task (``invalid_output``, the trajectory in
    ``details``); calls past ``max_tool_calls`` are not run, and the model is told so.
    ``transcript``, when given, receives the messages the loop added (each tool-calling
    answer and the tool results), so that a caller can go on with the conversation.
    """
    if max_turns < 1 or max_tool_calls < 0:
        raise TaskError(f"max_turns must be at least 1 and max_tool_calls at least 0, not {max_turns} and "
                        f"{max_tool_calls}", error_class="invalid_input")
    messages = list(request.messages)
    trajectory: list[dict[str, Any]] = []
    spent = {"calls": 0, "cost_usd": 0.0, "usage": {}}
    for turn in range(1, max_turns + 1):
        response = await complete(dataclasses.replace(request, messages=tuple(messages)), emit=emit, secrets=secrets)
        entry = _turn(turn, response)
        trajectory.append(entry)
        _add(spent, response)
        if not response.tool_calls:
            response.usage, response.cost_usd = dict(spent["usage"]), round(spent["cost_usd"], 10)
            return response, trajectory
        if turn == max_turns:
            raise TaskError(f"the model still called tools after max_turns={max_turns} turns",
                            error_class="invalid_output", details={"trajectory": trajectory})
        messages.append(_assistant(response))
        results = await _run_calls(response.tool_calls, call_tool, spent, max_tool_calls)
        for call, (result, duration) in zip(response.tool_calls, results, strict=True):
            content = str(result.get("content", ""))
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": content})
            entry["calls"].append({"id": call["id"], "name": call["name"], "arguments": _arguments(call),
                                        "result": _bounded(content), "error_class": result.get("error_class"),
                                        "duration_ms": duration})
        if transcript is not None:  # this turn's answer and its results
            transcript.extend(messages[len(messages) - 1 - len(response.tool_calls):])
    raise AssertionError("unreachable: the last turn returns or raises")  # pragma: no cover


async def _run_calls(calls: Sequence[Mapping[str, Any]], call_tool: CallTool, spent: dict[str, Any],
                     max_tool_calls: int) -> list[tuple[Mapping[str, Any], float]]:
    """Every call of one answer, concurrently; those past ``max_tool_calls`` answered with a refusal."""

    async def one(call: Mapping[str, Any], allowed: bool) -> tuple[Mapping[str, Any], float]:
        if not allowed:
            message = f"not run: the task's max_tool_calls ({max_tool_calls}) is reached; answer without tools"
            return {"content": json.dumps({"error": message, "error_class": "tool_limit"}),
                    "error_class": "tool_limit"}, 0.0
        started = time.perf_counter()
        result = await call_tool(str(call["name"]), str(call.get("arguments") or "{}"))
        return result, round((time.perf_counter() - started) * 1000, 1)

    allowed = []
    for _ in calls:
        allowed.append(spent["calls"] < max_tool_calls)
        spent["calls"] += allowed[-1]
    return list(await asyncio.gather(*(one(c, ok) for c, ok in zip(calls, allowed, strict=True))))


def _turn(turn: int, response: Response) -> dict[str, Any]:
    return {"turn": turn, "text": response.text, "model": response.model, "source": response.source,
            "usage": dict(response.usage), "cost_usd": response.cost_usd, "latency_ms": response.latency_ms,
            "calls": []}


def _add(spent: dict[str, Any], response: Response) -> None:
    spent["cost_usd"] += response.cost_usd
    for name, count in response.usage.items():
        spent["usage"][name] = spent["usage"].get(name, 0) + int(count)


def _assistant(response: Response) -> dict[str, Any]:
    """The model's answer as the next request repeats it: its text and its tool calls."""
    return {"role": "assistant", "content": response.text or None,
            "tool_calls": [{"id": c["id"], "type": "function",
                            "function": {"name": c["name"], "arguments": c.get("arguments") or "{}"}}
                           for c in response.tool_calls]}


def _arguments(call: Mapping[str, Any]) -> Any:
    """The call's arguments parsed for the trajectory (the text itself when it is not JSON)."""
    text = call.get("arguments") or "{}"
    try:
        return json.loads(text)
    except ValueError:
        return _bounded(str(text))


def _bounded(text: str) -> str:
    if len(text) <= TRAJECTORY_RESULT_CHARS:
        return text
    return text[:TRAJECTORY_RESULT_CHARS] + f"… ({len(text) - TRAJECTORY_RESULT_CHARS} more characters)"
