"""``agent``: a model that works toward a goal with tools, until its answer is accepted.

It is the ``llm`` task's tool loop (:func:`goatclaw.llm.converse`, every tool call an attempt
of this task) with a planner-style system prompt, not a second engine::

    memory: similar past runs of this task ─▶ system prompt (plan, use tools, answer)
    goal ─▶ tool loop ─▶ answer ─▶ output schema? done_when? ─ yes ─▶ output (+ trajectory)
                ▲                          │ no (at most max_answers answers)
                └── "not accepted: why" ◀──┘

``done_when`` is an expression over the answer (``answer``, or ``output`` as in ``validate:``;
the parsed JSON when ``output`` gives a schema, else the text), or ``{judge: criterion,
threshold, model}``: the validation room's judge. After the run, what the agent did (its
goal, each tool call and how it ended, the answer or why it failed) is remembered as a
``trajectory`` memory of this task, and the next run is offered the most similar ones and
this task's past failures (when the ``memory`` extra is installed; ``memory: false`` turns
both off).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
from collections.abc import Mapping
from typing import Any

from goatclaw.plugin import TaskContext, fail, task
from goatclaw.tasks.llm import _chain, _count, _number, _warmup

__all__ = ["PLANNER", "agent"]

PLANNER = (
    "You are an agent working toward a goal with tools. Work in steps: first make a short plan; then call the "
    "tools you need (several at once when they do not depend on each other); read their results and adjust the "
    "plan when a call fails (its result says why, with an error class). Use only the tools offered and never "
    "invent what a tool would return. When the goal is reached, give the final answer and nothing else."
)
#: How many past runs and failures of the task are offered to the model, at most.
RECALL = 3
_RECALL_SCORE = 0.3


@task(cacheable=False, permissions=("network",), untrusted_output=True, warmup=_warmup)
async def agent(ctx: TaskContext, *, goal: str, tools: list[dict[str, Any]] | None = None,
                model: str | dict[str, Any] | list[str | dict[str, Any]] | None = None, context: str | None = None,
                done_when: str | dict[str, Any] | None = None, output: dict[str, Any] | None = None,
                max_answers: int = 3, max_turns: int = 10, max_tool_calls: int = 20, memory: bool = True,
                temperature: float | None = None, max_tokens: int | None = None, api_base: str | None = None,
                api_key: str | None = None, timeout: float | None = 120, system: str | None = None,
                approve: bool | list[str] | None = None) -> dict[str, Any]:
    """Work toward ``goal`` with ``tools`` until the answer is accepted; the answer and the trajectory.

    ``output`` (a JSON Schema) is what the final answer must be (parsed into ``data``);
    ``done_when`` an expression over ``answer`` or ``{judge: criterion}``. A rejected answer
    goes back to the model with the reason, ``max_answers`` answers at most; ``max_turns`` and
    ``max_tool_calls`` bound the model and tool calls of all of them together. ``context`` is
    more text for the model; ``system`` is added to the planner prompt (docs/llm.md, Agents).
    ``approve`` names the tools (``true``: all) whose calls a person must allow first.
    """
    from goatclaw import llm as room

    if not isinstance(goal, str) or not goal.strip():
        fail("goal is empty", error_class="invalid_input")
    schema = _output_schema(output)
    models, endpoints = _chain(model, room.session())
    request = room.Request(models=models, endpoints=endpoints, messages=({"role": "user", "content": goal},),
                           temperature=_number("temperature", temperature),
                           max_tokens=_count("max_tokens", max_tokens), api_base=api_base or None,
                           api_key=api_key or None, timeout=_number("timeout", timeout), cache=ctx.cache,
                           cache_ttl=ctx.cache_ttl)
    for name in request.models:  # each model's own host (a chain can span servers)
        ctx.require_models((name,), *room.endpoint(name, request))
    if tools and ctx.tools is None:
        fail("agent: tools need a local run of the engine (their calls run as attempts of this task)",
             error_class="invalid_input")
    box = (ctx.tools(tools, approve) if approve is not None else ctx.tools(tools)) if tools else _NoTools()
    if inspect.isawaitable(box):  # MCP servers' tools are listed first
        box = await box
    recalled = await _recall(ctx, goal) if memory else []
    messages = ({"role": "system", "content": _system(system, schema, done_when, recalled)},
                {"role": "user", "content": goal if not context else f"{goal}\n\n{context}"})
    request = dataclasses.replace(request, messages=messages, tools=tuple(box.schemas()))
    run = _Run(ctx, request, box, _count("max_turns", max_turns) or 10, _count("max_tool_calls", max_tool_calls) or 20)
    try:
        result = await run.until_accepted(schema, done_when, _count("max_answers", max_answers) or 3)
    except Exception as exc:
        if memory:
            await _remember(ctx, goal, run.trajectory, None, str(getattr(exc, "message", exc)))
        raise
    if memory:
        await _remember(ctx, goal, run.trajectory, result["text"], None)
    return {**result, "goal": goal, "recalled": [h["text"] for h in recalled],
            "tools": {"offered": sorted(box.tools), "refused": box.refused}}


class _Run:
    """One agent run: the conversation so far, the trajectory, and what is left of the bounds."""

    def __init__(self, ctx: TaskContext, request: Any, box: Any, max_turns: int, max_tool_calls: int) -> None:
        self.ctx, self.request, self.box = ctx, request, box
        self.messages = list(request.messages)
        self.trajectory: list[dict[str, Any]] = []
        self.turns_left, self.calls_left = max_turns, max_tool_calls
        self.usage: dict[str, int] = {}
        self.cost = 0.0

    async def until_accepted(self, schema: Mapping[str, Any] | None, done_when: Any,
                             max_answers: int) -> dict[str, Any]:
        """Answers until one passes ``schema`` and ``done_when``; the output of the accepted one."""
        why = ""
        for answers in range(1, max_answers + 1):
            response = await self.answer()
            data, why = _parsed(response.text, schema)
            if not why and done_when is not None:
                why = await _done(self.ctx, self.request, done_when, data if schema is not None else response.text)
            if not why:
                return {**response.as_output(), "data": data, "usage": self.usage, "cost_usd": round(self.cost, 10),
                        "trajectory": self.trajectory, "answers": answers}
            self.trajectory[-1]["rejected"] = why
            self.messages += [{"role": "assistant", "content": response.text},
                              {"role": "user", "content": f"That answer is not accepted: {why}. Keep working on "
                                                          "the goal (call tools if you need to) and answer again."}]
        fail(f"the agent's answer was not accepted after {max_answers} answers: {why}", error_class="invalid_output",
             details={"trajectory": self.trajectory})
        raise AssertionError("unreachable")  # pragma: no cover

    async def answer(self) -> Any:
        """One tool loop from the conversation so far, within what is left of ``max_turns`` and ``max_tool_calls``."""
        from goatclaw import llm as room

        if self.turns_left < 1:
            fail("the agent used up max_turns before an answer was accepted", error_class="invalid_output",
                 details={"trajectory": self.trajectory})
        transcript: list[dict[str, Any]] = []
        request = dataclasses.replace(self.request, messages=tuple(self.messages))
        response, turns = await room.converse(request, call_tool=self.box.call, max_turns=self.turns_left,
                                              max_tool_calls=self.calls_left, emit=self.ctx.emit,
                                              secrets=list(self.ctx.secrets.values()), transcript=transcript)
        self.messages += transcript
        for turn in turns:
            turn["turn"] = len(self.trajectory) + 1
            self.trajectory.append(turn)
        self.turns_left -= len(turns)
        self.calls_left -= sum(1 for t in turns for c in t["calls"] if c.get("error_class") != "tool_limit")
        for name, count in response.usage.items():
            self.usage[name] = self.usage.get(name, 0) + int(count)
        self.cost += response.cost_usd
        return response


class _NoTools:
    """The toolbox of an agent given no tools: nothing offered, a call anyway is answered ``invalid_input``."""

    tools: dict[str, Any] = {}  # noqa: RUF012  (read only)
    refused: dict[str, str] = {}  # noqa: RUF012  (read only)

    def schemas(self) -> list[dict[str, Any]]:
        """No tool schemas."""
        return []

    async def call(self, name: str, arguments: str) -> dict[str, Any]:
        """A call of a tool that is not there."""
        message = f"no tool '{name}': this agent has no tools"
        return {"content": json.dumps({"error": message, "error_class": "invalid_input"}),
                "error_class": "invalid_input", "uses": None}


def _output_schema(output: Any) -> dict[str, Any] | None:
    if output is None:
        return None
    from goatclaw.spec.schema import check_schema

    problem = check_schema(output) if isinstance(output, dict) else "it must be a mapping"
    if problem:
        fail(f"output is not a valid JSON Schema: {problem}", error_class="invalid_input")
    return output


def _system(extra: str | None, schema: Mapping[str, Any] | None, done_when: Any, recalled: list[dict[str, Any]]) -> str:
    """The planner prompt, with what the answer must be and what past runs of the task teach."""
    parts = [PLANNER]
    if schema is not None:
        parts.append("The final answer must be JSON only (no prose, no code fence), matching this JSON Schema: "
                     + json.dumps(schema, ensure_ascii=False))
    if isinstance(done_when, str):
        parts.append(f"The answer is accepted when this holds of it: {done_when}")
    elif isinstance(done_when, Mapping) and done_when.get("judge"):
        parts.append(f"A reviewer accepts the answer when: {done_when['judge']}")
    if recalled:
        lines = "\n".join(f"- ({h['kind']}) {h['text']}" for h in recalled)
        parts.append("Past runs of this task, most similar first (learn from what failed):\n" + lines)
    if extra:
        parts.append(str(extra))
    return "\n\n".join(parts)


def _parsed(text: str, schema: Mapping[str, Any] | None) -> tuple[Any, str]:
    """The answer as the schema wants it, and why not (empty when it is)."""
    if schema is None:
        return None, "" if text.strip() else "the answer is empty"
    body = text.strip()
    if body.startswith("```") and body.endswith("```") and body.count("```") == 2:
        first, _, rest = body[3:-3].partition("\n")
        body = rest if first.strip().lower() in ("json", "") else body[3:-3]
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except ValueError as exc:
        return None, f"it is not JSON ({exc})"
    from goatclaw.spec.schema import check_instance

    problems = check_instance(data, dict(schema))
    return data, ("it does not match the output schema: " + "; ".join(problems[:5])) if problems else ""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def _done(ctx: TaskContext, request: Any, done_when: Any, answer: Any) -> str:
    """Why ``answer`` does not meet ``done_when`` (empty when it does): an expression, or a judge rule."""
    from goatclaw.spec.model import Rule
    from goatclaw.validation import acheck_output

    if isinstance(done_when, str):
        rule = Rule("expr", done_when)
    elif isinstance(done_when, Mapping) and isinstance(done_when.get("judge"), str):
        rule = Rule("judge", done_when["judge"], options={k: v for k, v in done_when.items() if k != "judge"})
    else:
        fail("done_when must be an expression or {judge: criterion, threshold, model}", error_class="invalid_input")
    verdicts = await acheck_output((rule,), answer, {"answer": answer}, base=ctx.workspace,
                                   validator=lambda name: None, judge=_judge(ctx, request))
    (verdict,) = verdicts
    return "" if verdict.passed else f"done_when: {verdict.message}"


def _judge(ctx: TaskContext, request: Any) -> Any:
    """The judge of a ``done_when: {judge: ...}``: the agent's model (or the rule's ``model``), at temperature 0."""
    from goatclaw import llm as room
    from goatclaw.validation import JUDGE_SCHEMA, judge_messages, judge_verdict

    async def judge(rule: Any, criterion: str, output: Any) -> tuple[bool | None, str]:
        model = rule.options.get("model") or request.models[0]
        asked = room.Request(models=(model,), messages=tuple(judge_messages(criterion, output)), temperature=0,
                             output="json", schema=JUDGE_SCHEMA, api_base=request.api_base, api_key=request.api_key,
                             endpoints=request.endpoints)
        ctx.require_models((model,), *room.endpoint(model, asked))
        response = await room.complete(asked, emit=ctx.emit, secrets=list(ctx.secrets.values()))
        return judge_verdict(response.data, float(rule.options.get("threshold", 0.5)))

    return judge


# -- memory: what past runs of this task did ---------------------------------------------------


async def _recall(ctx: TaskContext, goal: str) -> list[dict[str, Any]]:
    """The past trajectories and failures of this task most similar to ``goal`` (none without the memory extra)."""
    if ctx.store_path is None:
        return []
    try:
        hits = await asyncio.to_thread(_search, ctx, goal)
    except ImportError:  # goatclaw[memory] is not installed: nothing to recall
        return []
    ctx.untrusted({o for h in hits for o in h.get("origins", ())}, "a memory of a past agent run")
    return hits


def _search(ctx: TaskContext, goal: str) -> list[dict[str, Any]]:
    from goatclaw.memory.store import open_memory

    with open_memory(ctx.store_path) as mem:  # type: ignore[arg-type]
        if not mem.count():
            return []
        hits = [*mem.search(goal, k=RECALL, kind="trajectory", filters={"task": ctx.task_id},
                            min_score=_RECALL_SCORE),
                *mem.search(goal, k=RECALL, kind="failure", filters={"task": ctx.task_id}, min_score=_RECALL_SCORE)]
    return [h.to_dict() for h in sorted(hits, key=lambda h: -h.score)[:RECALL]]


async def _remember(ctx: TaskContext, goal: str, trajectory: list[dict[str, Any]], answer: str | None,
                    error: str | None) -> None:
    """Keep what this run did as a ``trajectory`` memory of the task (never failing the task)."""
    if ctx.store_path is None:
        return
    steps = [f"{c['name']}({json.dumps(c['arguments'], ensure_ascii=False)[:200]}) → "
             f"{c['error_class'] or 'ok'}" for t in trajectory for c in t["calls"]]
    rejected = [t["rejected"] for t in trajectory if t.get("rejected")]
    text = (f"goal: {goal[:500]}\nsteps: {'; '.join(steps) or 'no tool calls'}"
            + (f"\nrejected answers: {'; '.join(r[:200] for r in rejected)}" if rejected else "")
            + (f"\nfailed: {error[:500]}" if error else f"\nanswer: {(answer or '')[:500]}"))
    meta = {"run": ctx.run_id, "task": ctx.task_id, "ok": error is None, "turns": len(trajectory),
            "tool_calls": len(steps)}
    try:
        await asyncio.to_thread(_store, ctx, _mask(ctx, text), meta)
    except Exception as exc:  # memory is a help, never the task's failure
        ctx.logger.warning("agent memory: %s", exc)


def _store(ctx: TaskContext, text: str, meta: dict[str, Any]) -> None:
    from goatclaw.memory.store import open_memory

    with open_memory(ctx.store_path) as mem:  # type: ignore[arg-type]
        mem.add(text, "trajectory", meta, origins={ctx.task_id, *ctx.origins})  # tool results are untrusted


def _mask(ctx: TaskContext, text: str) -> str:
    """Declared secrets never reach the memory."""
    for value in sorted(ctx.secrets.values(), key=len, reverse=True):
        if value and len(value) >= 3:
            text = text.replace(value, "***")
    return text
