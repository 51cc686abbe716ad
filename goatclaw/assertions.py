"""Assertions of pipeline tests beyond expressions: what an answer contains, how similar it is, what it cost.

An item of a test case's ``expect.asserts`` is an expression (:mod:`goatclaw.testing`) or one
of these kinds, each checking one value of the run::

    contains / icontains / contains_any / contains_all / starts_with / equals   text checks
    regex          an RE2 pattern (linear time) the text matches somewhere
    is_json        the text parses as JSON (and meets ``schema:``)
    levenshtein    the edit distance to a reference is at most ``max`` (default 5)
    similar        embedding similarity to a reference, at least ``threshold`` (default 0.75),
                   with the memory room's embedder (wordllama: local and offline)
    llm_rubric     a judge (the validation room's) scores the value against a rubric
    cost           the run's (or ``task:``'s) LLM calls cost at most this many dollars
    latency        the run (or ``task:``) took at most this many milliseconds
    trajectory     the tools an agent or ``llm`` task called: ``order: exact`` (default),
                   ``in_order`` (a subsequence) or ``any_order`` (each of them, as a set)

The value checked is ``task:``'s output (for an ``llm`` or ``agent`` task, the text of its
answer), or ``value:`` (a ``${{ }}`` template over ``tasks``, ``vars`` and ``run``), else the
output of the run's last task. ``not: true`` inverts any assertion; ``name:`` labels it in
the summary of a dataset. Every failed assertion says what it found.

Steps: :func:`parse` reads an item into an :class:`Assertion` (problems at file:line:col come
from the schema and :func:`problems`), :func:`evaluate` judges it against an
:class:`Observation` of one run and gives an :class:`Outcome`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from goatclaw.engine.state import RunResult
from goatclaw.errors import GoatclawError, TemplateError
from goatclaw.regex import compile_linear, why_invalid
from goatclaw.template import check_value, compile_value

__all__ = ["KINDS", "Assertion", "Observation", "Outcome", "call_cost", "evaluate", "is_assertion", "parse", "problems"]

#: The assertion kinds (the key that names one in a test file).
KINDS = ("contains", "icontains", "contains_any", "contains_all", "starts_with", "equals", "regex", "is_json",
         "levenshtein", "similar", "llm_rubric", "cost", "latency", "trajectory")
#: The default thresholds.
SIMILAR_THRESHOLD = 0.75
RUBRIC_THRESHOLD = 0.5
LEVENSHTEIN_MAX = 5
#: Texts longer than this are not compared by edit distance (quadratic: 2,000 characters take about a second).
_LEVENSHTEIN_CHARS = 2_000


@dataclass(frozen=True)
class Assertion:
    """One assertion of a test case: its kind, its argument and its options, as written."""

    kind: str
    arg: Any
    task: str | None = None
    value: Any = None
    has_value: bool = False
    negate: bool = False
    name: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How it is named in messages and summaries: ``name:``, else ``kind argument``."""
        if self.name:
            return self.name
        shown = self.arg if isinstance(self.arg, str) else _show(self.arg, 60)
        shown = shown if len(shown) <= 60 else shown[:59] + "…"
        return ("not " if self.negate else "") + f"{self.kind} {shown}".strip()


@dataclass(frozen=True)
class Observation:
    """What one run of a case gave: its result, its events (``(topic, task, data)``) and its wall time."""

    run: RunResult
    events: Sequence[tuple[str, str | None, Mapping[str, Any]]] = ()
    seconds: float = 0.0
    context: Mapping[str, Any] = field(default_factory=dict)
    #: The tasks a task name in the file means when none is given: the last that ran.
    last_task: str | None = None
    #: How a rubric is judged: ``(rubric, value, options) -> (passed, score, why)``.
    judge: Callable[[str, Any, Mapping[str, Any]], Awaitable[tuple[bool, float | None, str]]] | None = None
    #: The embedder ``similar`` uses: texts -> unit vectors (``None``: the memory room's default, wordllama).
    embed: Callable[[Sequence[str]], Any] | None = None


@dataclass(frozen=True)
class Outcome:
    """How one assertion went: passed or not, a score in 0..1 when it has one, what was found, why."""

    label: str
    passed: bool
    score: float | None = None
    found: str = ""
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (reports, baselines)."""
        return {"label": self.label, "passed": self.passed, "score": self.score, "found": self.found,
                "message": self.message}


def is_assertion(item: Any) -> bool:
    """Whether an ``asserts`` item is one of these kinds (not an expression)."""
    return isinstance(item, Mapping) and any(k in item for k in KINDS)


def parse(item: Mapping[str, Any]) -> Assertion:
    """An :class:`Assertion` from an ``asserts`` item (its shape is checked by the test file's schema)."""
    kind = next(k for k in KINDS if k in item)
    options = {k: v for k, v in item.items() if k not in (kind, "task", "value", "not", "name")}
    return Assertion(kind=kind, arg=item[kind], task=item.get("task"), value=item.get("value"),
                     has_value="value" in item, negate=item.get("not") is True, name=item.get("name"),
                     options=options)


def problems(assertion: Assertion) -> list[tuple[tuple[str, ...], str]]:
    """``(path inside the item, message)`` for what can never work: a bad RE2 pattern, a bad template."""
    found: list[tuple[tuple[str, ...], str]] = []
    if assertion.kind == "regex" and isinstance(assertion.arg, str):
        why = why_invalid(assertion.arg)
        if why:
            found.append(((assertion.kind,), why))
    for key, value in ((assertion.kind, assertion.arg), ("value", assertion.value)):
        for _path, refs in check_value(value):
            if isinstance(refs, TemplateError):
                found.append(((key,), refs.message))
    return found


async def evaluate(assertion: Assertion, seen: Observation) -> Outcome:
    """Judge ``assertion`` against one run; a problem evaluating it is a failure that says why."""
    try:
        outcome = await _CHECKS[assertion.kind](assertion, seen)
    except (GoatclawError, TemplateError) as exc:
        return Outcome(assertion.label, False, None, "", str(getattr(exc, "message", exc)))
    if assertion.negate:
        score = None if outcome.score is None else 1.0 - outcome.score
        why = outcome.message if outcome.passed else ""
        return Outcome(assertion.label, not outcome.passed, score, outcome.found,
                       f"expected it not to hold{': ' + why if why else ''}" if outcome.passed else "")
    return Outcome(assertion.label, outcome.passed, outcome.score, outcome.found, outcome.message)


# -- the value checked --------------------------------------------------------------------------


def _subject(assertion: Assertion, seen: Observation) -> tuple[str, Any]:
    """``(where, value)``: what the assertion checks and how to name it in a message."""
    if assertion.has_value:
        return "value", compile_value(assertion.value).render(seen.context)
    tid = assertion.task or seen.last_task
    if tid is None or tid not in seen.run.tasks:
        raise GoatclawError(f"task '{tid}' was not part of the run" if tid else "the run has no task to check")
    res = seen.run.tasks[tid]
    output = res.output
    if isinstance(output, Mapping) and "text" in output and "usage" in output:  # an llm or agent answer
        return f"tasks.{tid}.output.text", output.get("text")
    return f"tasks.{tid}.output", output


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def _reference(assertion: Assertion, seen: Observation) -> Any:
    return compile_value(assertion.arg).render(seen.context)


def _show(value: Any, limit: int = 300) -> str:
    text = _text(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _found(where: str, value: Any, limit: int = 300) -> str:
    """``where = value`` with the value as JSON (a string quoted, as an expression's operands are shown)."""
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return f"{where} = {text if len(text) <= limit else text[: limit - 1] + '…'}"


# -- the kinds ------------------------------------------------------------------------------------


async def _contains(a: Assertion, seen: Observation) -> Outcome:
    where, value = _subject(a, seen)
    text, wanted = _text(value), _reference(a, seen)
    needles = [wanted] if not isinstance(wanted, list) else wanted
    fold = a.kind == "icontains" or a.options.get("ignore_case") is True
    hay = text.casefold() if fold else text
    hits = [n for n in needles if (_text(n).casefold() if fold else _text(n)) in hay]
    passed = bool(hits) if a.kind == "contains_any" else len(hits) == len(needles)
    missing = [n for n in needles if n not in hits]
    why = "" if passed else ("none of them is in it" if a.kind == "contains_any"
                             else f"missing: {', '.join(repr(_text(m)) for m in missing)}")
    return Outcome(a.label, passed, None, _found(where, value), why)


async def _starts_with(a: Assertion, seen: Observation) -> Outcome:
    where, value = _subject(a, seen)
    passed = _text(value).startswith(_text(_reference(a, seen)))
    return Outcome(a.label, passed, None, _found(where, value), "" if passed else "it starts otherwise")


async def _equals(a: Assertion, seen: Observation) -> Outcome:
    where, value = _subject(a, seen)
    wanted = _reference(a, seen)
    passed = value == wanted or (isinstance(wanted, str) and not isinstance(value, str) and _text(value) == wanted)
    return Outcome(a.label, passed, None, _found(where, value), "" if passed else f"expected {_show(wanted)}")


async def _regex(a: Assertion, seen: Observation) -> Outcome:
    where, value = _subject(a, seen)
    pattern = compile_linear(str(a.arg), ignore_case=a.options.get("ignore_case") is True)
    passed = pattern.search(_text(value)) is not None
    return Outcome(a.label, passed, None, _found(where, value), "" if passed else "no match")


async def _is_json(a: Assertion, seen: Observation) -> Outcome:
    from goatclaw.spec.schema import check_instance

    where, value = _subject(a, seen)
    data = value
    if isinstance(value, str):
        try:
            data = json.loads(_unfence(value), parse_constant=_no_constant)
        except ValueError as exc:
            return Outcome(a.label, False, None, _found(where, value), f"not JSON: {exc}")
    schema = a.arg.get("schema") if isinstance(a.arg, Mapping) else None
    if schema is not None:
        errors = check_instance(data, dict(schema))
        if errors:
            return Outcome(a.label, False, None, _found(where, value), "; ".join(errors[:3]))
    return Outcome(a.label, True, None, _found(where, value))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _unfence(text: str) -> str:
    body = text.strip()
    if body.startswith("```") and body.endswith("```"):
        body = body[3:-3]
        body = body[4:] if body.startswith("json") else body
    return body.strip()


async def _levenshtein(a: Assertion, seen: Observation) -> Outcome:
    where, value = _subject(a, seen)
    text, wanted = _text(value), _text(_reference(a, seen))
    most = int(a.options.get("max", LEVENSHTEIN_MAX))
    if max(len(text), len(wanted)) > _LEVENSHTEIN_CHARS:
        return Outcome(a.label, False, None, _found(where, value),
                       f"texts over {_LEVENSHTEIN_CHARS} characters are not compared by edit distance")
    distance = _distance(text, wanted)
    passed = distance <= most
    return Outcome(a.label, passed, None, f"{_found(where, value)} (distance {distance})",
                   "" if passed else f"edit distance {distance} > {most}")


def _distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions, one row at a time."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


async def _similar(a: Assertion, seen: Observation) -> Outcome:
    import asyncio

    where, value = _subject(a, seen)
    text, wanted = _text(value), _text(_reference(a, seen))
    threshold = float(a.options.get("threshold", SIMILAR_THRESHOLD))
    embed = seen.embed or _default_embed
    vectors = await asyncio.to_thread(embed, [text, wanted])
    score = float(sum(float(x) * float(y) for x, y in zip(vectors[0], vectors[1], strict=True)))
    score = max(0.0, min(1.0, score)) if math.isfinite(score) else 0.0
    passed = score >= threshold
    return Outcome(a.label, passed, score, f"{_found(where, value)} (similarity {score:.3f})",
                   "" if passed else f"similarity {score:.3f} < {threshold:g}")


def _default_embed(texts: Sequence[str]) -> Any:
    from goatclaw.memory.embedders import embedder_for

    return embedder_for(None).embed(list(texts))


async def _rubric(a: Assertion, seen: Observation) -> Outcome:
    where, value = _subject(a, seen)
    if seen.judge is None:
        raise GoatclawError("llm_rubric needs a judge: no model is set for it (model: on the assertion, or "
                            "model: in goatclaw.yaml)")
    rubric = _text(_reference(a, seen))
    passed, score, why = await seen.judge(rubric, value, a.options)
    return Outcome(a.label, passed, score, _found(where, value), "" if passed else why)


async def _cost(a: Assertion, seen: Observation) -> Outcome:
    most = float(a.arg)
    spent = sum(call_cost(data) for topic, task, data in seen.events
                if topic == "llm.call" and (a.task is None or task == a.task))
    where = f"tasks.{a.task} cost" if a.task else "the run's LLM cost"
    passed = spent <= most
    return Outcome(a.label, passed, None, f"{where} = ${spent:.6f}", "" if passed else f"over ${most:g}")


def call_cost(data: Mapping[str, Any]) -> float:
    """A call's dollars: what it cost, or for an answer replayed or reused, what it cost when it was recorded."""
    if data.get("source") == "live":
        return float(data.get("cost_usd") or 0.0)
    answer = data.get("answer")
    return float(answer.get("cost_usd") or 0.0) if isinstance(answer, Mapping) else 0.0


async def _latency(a: Assertion, seen: Observation) -> Outcome:
    most = float(a.arg)
    if a.task is not None:
        res = seen.run.tasks.get(a.task)
        if res is None or res.duration is None:
            raise GoatclawError(f"task '{a.task}' did not run, so it has no latency")
        ms, where = res.duration * 1000, f"tasks.{a.task} took"
    else:
        ms, where = seen.seconds * 1000, "the run took"
    passed = ms <= most
    return Outcome(a.label, passed, None, f"{where} {ms:.0f}ms", "" if passed else f"over {most:g}ms")


async def _trajectory(a: Assertion, seen: Observation) -> Outcome:
    wanted = [str(t) for t in (a.arg if isinstance(a.arg, list) else [a.arg])]
    called = [str(data.get("tool")) for topic, task, data in seen.events
              if topic == "tool.started" and (a.task is None or task == a.task)]
    order = str(a.options.get("order", "exact"))
    if order == "exact":
        passed = called == wanted
    elif order == "in_order":
        it = iter(called)
        passed = all(any(c == w for c in it) for w in wanted)
    else:
        passed = set(wanted) <= set(called)
    where = f"tasks.{a.task} called" if a.task else "the tools called"
    return Outcome(a.label, passed, None, f"{where}: {json.dumps(called)}",
                   "" if passed else f"expected {json.dumps(wanted)} ({order.replace('_', ' ')})")


_CHECKS: Mapping[str, Callable[[Assertion, Observation], Awaitable[Outcome]]] = {
    "contains": _contains, "icontains": _contains, "contains_any": _contains, "contains_all": _contains,
    "starts_with": _starts_with, "equals": _equals, "regex": _regex, "is_json": _is_json,
    "levenshtein": _levenshtein, "similar": _similar, "llm_rubric": _rubric, "cost": _cost, "latency": _latency,
    "trajectory": _trajectory,
}
