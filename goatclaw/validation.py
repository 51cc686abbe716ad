"""Output validation: the rule kinds of ``validate:`` and how a task's output is judged.

Rules run in the order written (write the cheap ones first). Each gives a verdict
(passed, message); a failed rule with ``severity: error`` fails the task with error
class ``validation`` (never retried as an infrastructure error), one with
``severity: warn`` is only recorded. Kinds:

* ``schema``: a JSON Schema (``{$ref: path.json}`` loads it from a file beside the pipeline),
* ``expr``: a sandboxed expression over ``output`` (and ``tasks``, ``vars``),
* ``type``, ``range`` (``min``/``max``), ``length`` (exact or ``min``/``max``),
  ``format`` (email, url, uuid, date, date-time, ipv4, ipv6, hostname),
  ``regex`` (RE2: linear time, so no catastrophic backtracking), ``one_of``,
* ``use``: a custom validator (registered from Python or the ``goatclaw.validators``
  entry-point group) called as ``validator(output, **with)``; it returns ``None`` or
  ``True`` to pass, ``False`` or a message to fail,
* ``judge``: a criterion (templated with the task context) checked by an LLM that
  answers ``{"verdict": "pass"|"fail", "score": 0..1, "reason": ...}``; it passes when
  the verdict is pass and the score reaches ``threshold`` (default 0.5). Judge rules run
  last (:func:`acheck_output`), and are not asked when a cheaper error rule already failed.

The auto-fix loop (``fix:``) builds on these verdicts (:mod:`goatclaw.fix`).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from goatclaw.errors import PluginError, TaskError, TemplateError
from goatclaw.regex import compile_linear, why_invalid
from goatclaw.spec.model import Rule
from goatclaw.spec.schema import check_instance, check_schema
from goatclaw.template import compile_expression, compile_value
from goatclaw.userfile import read_bytes

__all__ = ["FORMATS", "JUDGE_SCHEMA", "Rejected", "Verdict", "acheck_output", "budget_problems", "check_output",
           "judge_messages", "judge_verdict", "llm_problems", "rule_label", "rule_problem"]

#: The JSON a judge must answer with.
JUDGE_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "required": ["verdict", "score"],
    "properties": {"verdict": {"enum": ["pass", "fail"]}, "score": {"type": "number", "minimum": 0, "maximum": 1},
                   "reason": {"type": "string"}},
}
#: How a judge rule is asked: ``(rule, criterion, output) -> (passed, why)``.
JudgeFn = Callable[[Rule, str, Any], Awaitable[tuple[bool | None, str]]]

#: The largest JSON Schema a ``schema: {$ref: file}`` rule reads.
MAX_SCHEMA_BYTES = 16 * 1024 * 1024
# format checks meet task output: RE2 (linear time), never Python's backtracking re
_EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
_HOSTNAME = r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
_JSON_TYPES: Mapping[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}


def rule_label(number: Any, kind: Any = None, severity: Any = None) -> str:
    """``rule 2 (expr)``, or ``rule 2 (expr, warn)``: how every message names a rule of ``validate:``.

    ``number`` counts from 1, in the order the file lists the rules (a verdict's ``rule``
    field in events and reports is that number too).
    """
    detail = ", ".join(str(x) for x in (kind, severity) if x)
    return f"rule {number if number is not None else '?'}" + (f" ({detail})" if detail else "")


@dataclass(frozen=True)
class Verdict:
    """One rule's verdict on an output. ``passed`` is ``None`` when the rule was not evaluated.

    ``index`` counts from 0 (the rule's place in the task's list); messages and event data
    number rules from 1 (:func:`rule_label`).
    """

    index: int
    kind: str
    passed: bool | None
    message: str
    severity: str

    def to_dict(self) -> dict[str, Any]:
        """The verdict as event data (``rule``: its number, from 1)."""
        return {"rule": self.index + 1, "kind": self.kind, "passed": self.passed, "message": self.message,
                "severity": self.severity}


def check_output(rules: tuple[Rule, ...], output: Any, context: Mapping[str, Any], *, base: Path,
                 validator: Callable[[str], Any], places: Sequence[int] | None = None) -> list[Verdict]:
    """Every rule's verdict on ``output``, in order.

    ``context`` is the task's template context (``output`` is added); ``base`` is the
    folder that schema ``$ref`` paths start from; ``validator(name)`` finds a custom one.
    ``places`` are the rules' indexes in the task's list when ``rules`` is a part of it
    (so that a rule keeps its number in messages).
    """
    verdicts = []
    for i, rule in zip(places if places is not None else range(len(rules)), rules, strict=True):
        passed, why = _judge(rule, output, context, base, validator)
        message = rule.message if (passed is False and rule.message) else why
        verdicts.append(Verdict(i, rule.kind, passed, message, rule.severity))
    return verdicts


async def acheck_output(rules: tuple[Rule, ...], output: Any, context: Mapping[str, Any], *, base: Path,
                        validator: Callable[[str], Any], judge: JudgeFn | None) -> list[Verdict]:
    """Every rule's verdict, ``judge`` rules last (the cheap rules first, the LLM only if they pass).

    ``judge(rule, criterion, output)`` asks the LLM; without one, judge rules are not evaluated.
    """
    cheap = [(i, r) for i, r in enumerate(rules) if r.kind != "judge"]
    found = check_output(tuple(r for _, r in cheap), output, context, base=base, validator=validator,
                         places=[i for i, _ in cheap])
    verdicts = {v.index: v for v in found}
    blocked = any(v.passed is False and v.severity == "error" for v in verdicts.values())
    for i, rule in enumerate(rules):
        if rule.kind != "judge":
            continue
        if blocked or judge is None:
            why = "not asked: a cheaper rule already failed" if blocked else "no LLM judge available"
            verdicts[i] = Verdict(i, "judge", None, why, rule.severity)
            continue
        try:
            criterion = str(compile_value(rule.arg).render({**context, "output": output}))
        except TemplateError as exc:
            verdicts[i] = Verdict(i, "judge", False, f"the criterion failed to render: {exc.message}", rule.severity)
            continue
        passed, why = await judge(rule, criterion, output)
        message = rule.message if (passed is False and rule.message) else why
        verdicts[i] = Verdict(i, "judge", passed, message, rule.severity)
    return [verdicts[i] for i in sorted(verdicts)]


def judge_messages(criterion: str, output: Any) -> list[dict[str, str]]:
    """The chat messages that ask a judge whether ``output`` meets ``criterion``."""
    text = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False, default=str, indent=2)
    return [
        {"role": "system", "content": "You are a strict reviewer. Judge whether the output meets the criterion. "
                                      'Answer with JSON only: {"verdict": "pass" or "fail", "score": a number from 0 '
                                      'to 1, "reason": "one sentence"}.'},
        {"role": "user", "content": f"Criterion: {criterion}\n\nOutput:\n{text}"},
    ]


def judge_verdict(answer: Any, threshold: float) -> tuple[bool, str]:
    """``(passed, why)`` from a judge's parsed JSON answer."""
    if not isinstance(answer, Mapping) or answer.get("verdict") not in ("pass", "fail") or \
            not isinstance(answer.get("score"), (int, float)) or isinstance(answer.get("score"), bool):
        return False, f"the judge gave no verdict and score: {_short(answer)}"
    score = float(answer["score"])
    ok = answer["verdict"] == "pass" and score >= threshold
    reason = str(answer.get("reason") or "").strip()
    return ok, f"judge: {answer['verdict']}, score {score:g} (threshold {threshold:g})" + (f": {reason}" if reason
                                                                                         else "")


class Rejected(TaskError):
    """An output failed its ``error`` rules; keeps the ``output`` and the ``verdicts`` for the fix loop."""

    def __init__(self, message: str, output: Any, verdicts: list[Verdict]) -> None:
        super().__init__(message, error_class="validation", details={"verdicts": [v.to_dict() for v in verdicts]})
        self.output = output
        self.verdicts = verdicts

    @property
    def failed(self) -> list[Verdict]:
        """The failed ``error`` rules."""
        return [v for v in self.verdicts if v.passed is False and v.severity == "error"]


def failure(verdicts: list[Verdict], output: Any = None) -> Rejected | None:
    """The task error for the failed ``error`` rules, or ``None`` when the output passes."""
    failed = [v for v in verdicts if v.passed is False and v.severity == "error"]
    if not failed:
        return None
    text = "; ".join(f"{rule_label(v.index + 1, v.kind)}: {v.message}" for v in failed)
    return Rejected(f"the output failed validation: {text}", output, verdicts)


def _judge(rule: Rule, output: Any, context: Mapping[str, Any], base: Path,
           validator: Callable[[str], Any]) -> tuple[bool | None, str]:
    kind, arg = rule.kind, rule.arg
    if kind == "schema":
        errors = check_instance(output, _schema(arg, base), formats=FORMATS)
        return (not errors), "; ".join(errors[:5]) or "matches the schema"
    if kind == "expr":
        try:
            ok = bool(compile_expression(arg).evaluate({**context, "output": output}))
        except TemplateError as exc:
            return False, f"the expression failed: {exc.message}"
        return ok, f"{arg}" + ("" if ok else " is false")
    if kind == "type":
        ok = _JSON_TYPES[arg](output)
        return ok, f"is {'' if ok else 'not '}of type {arg}" + ("" if ok else f" (got {_type_name(output)})")
    if kind == "range":
        return _range(output, arg)
    if kind == "length":
        return _length(output, arg)
    if kind == "format":
        ok = isinstance(output, str) and FORMATS[arg](output)
        return ok, f"{_short(output)} is {'' if ok else 'not '}a valid {arg}"
    if kind == "regex":
        ok = isinstance(output, str) and _regex(arg).search(output) is not None
        return ok, f"{'matches' if ok else 'does not match'} /{arg}/"
    if kind == "one_of":
        ok = output in arg
        return ok, f"{_short(output)} is {'' if ok else 'not '}one of {_short(arg)}"
    if kind == "use":
        return _custom(arg, output, dict(rule.options.get("with") or {}), validator)
    return None, f"{kind} rules are evaluated by acheck_output (they need an LLM)"


def _range(output: Any, arg: Mapping[str, Any]) -> tuple[bool, str]:
    if not _JSON_TYPES["number"](output):
        return False, f"expected a number, got {_type_name(output)}"
    low, high = arg.get("min"), arg.get("max")
    ok = (low is None or output >= low) and (high is None or output <= high)
    return ok, f"{output} is {'' if ok else 'not '}within [{low if low is not None else '-∞'}, " \
               f"{high if high is not None else '∞'}]"


def _length(output: Any, arg: Any) -> tuple[bool, str]:
    if not isinstance(output, (str, list, dict)):
        return False, f"expected a string, array or object, got {_type_name(output)}"
    n = len(output)
    if isinstance(arg, int):
        return n == arg, f"length {n}" + ("" if n == arg else f", expected {arg}")
    low, high = arg.get("min"), arg.get("max")
    ok = (low is None or n >= low) and (high is None or n <= high)
    return ok, f"length {n}" + ("" if ok else f", expected {low if low is not None else 0}..{high or '∞'}")


def _custom(name: str, output: Any, params: dict[str, Any], validator: Callable[[str], Any]) -> tuple[bool, str]:
    try:
        fn = validator(name)
    except PluginError as exc:
        return False, exc.message
    try:
        answer = fn(output, **params)
    except Exception as exc:  # the validator's own bug is reported, never raised through the engine
        return False, f"validator '{name}' raised {type(exc).__name__}: {exc}"
    if answer is None or answer is True:
        return True, f"validator '{name}' passed"
    if answer is False:
        return False, f"validator '{name}' rejected the output"
    return False, str(answer)


def _is_url(text: str) -> bool:
    parts = urlsplit(text)
    return parts.scheme in ("http", "https", "ftp", "ws", "wss", "file") and bool(parts.netloc or parts.path)


def _is_ip(text: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _is_date(text: str) -> bool:
    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        return False
    return len(text) == 10


def _is_datetime(text: str) -> bool:
    try:
        datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return "T" in text or " " in text


def _is_hostname(text: str) -> bool:
    return 0 < len(text) <= 253 and compile_linear(_HOSTNAME).search(text) is not None


#: The ``format`` checks, for ``format:`` rules and for ``format`` inside ``schema:`` rules (all linear-time).
FORMATS: Mapping[str, Callable[[str], bool]] = {
    "email": lambda t: compile_linear(_EMAIL).search(t) is not None,
    "url": _is_url,
    "uuid": _is_uuid,
    "date": _is_date,
    "date-time": _is_datetime,
    "ipv4": lambda t: _is_ip(t, 4),
    "ipv6": lambda t: _is_ip(t, 6),
    "hostname": _is_hostname,
    "uri": _is_url,
    "regex": lambda t: why_invalid(t) is None,
}


def _regex(pattern: str) -> Any:
    """Compile with RE2: matching takes linear time, whatever the pattern or input."""
    return compile_linear(pattern)


def _schema(arg: Any, base: Path) -> dict[str, Any]:
    if isinstance(arg, dict) and set(arg) == {"$ref"} and isinstance(arg["$ref"], str) and not arg["$ref"].startswith(
            "#"):
        loaded: dict[str, Any] = json.loads(read_bytes(base / arg["$ref"], limit=MAX_SCHEMA_BYTES))
        return loaded
    return dict(arg)


def rule_problem(rule: Rule, base: Path, validator_exists: Callable[[str], bool]) -> str | None:
    """What is statically wrong with a rule (checked by ``goatclaw validate``), else ``None``."""
    if rule.kind == "schema":
        try:
            schema = _schema(rule.arg, base)
        except (OSError, ValueError) as exc:
            return f"cannot read the schema {rule.arg.get('$ref')}: {exc}"
        why = check_schema(schema)
        if why:
            return f"not a valid JSON Schema: {why}"
        for pattern in _schema_patterns(schema):
            why = why_invalid(pattern)
            if why is not None:
                return f"the schema's pattern {pattern!r} is not one RE2 accepts: {why}"
        return None
    if rule.kind == "regex":
        why = why_invalid(rule.arg)
        if why is not None:
            return f"not a pattern RE2 accepts (RE2 has no backreferences or lookaround): {why}"
    if rule.kind == "use" and not validator_exists(rule.arg):
        return f"unknown validator '{rule.arg}' (is its package installed? see `goatclaw plugins`)"
    return None


def _schema_patterns(schema: Any) -> list[str]:
    """Every ``pattern`` and ``patternProperties`` key inside a schema (they run on RE2)."""
    found: list[str] = []
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                found.append(node["pattern"])
            if isinstance(node.get("patternProperties"), dict):
                found += [k for k in node["patternProperties"] if isinstance(k, str)]
            stack += node.values()
        elif isinstance(node, list):
            stack += node
    return found


def llm_problems(task: Any, default_model: str | None) -> list[tuple[tuple[str | int, ...], str]]:
    """``(path, warning)`` for each of a task's judge rules and repairs that no model is configured for.

    A judge uses its ``model:``, an ``llm`` task's ``model``, else the project's ``model:``;
    a repair its ``fix.model``, then the same. Warnings: ``validate`` cannot know the run's mode.
    """
    own = task.with_.get("model") if task.uses == "llm" and isinstance(task.with_, Mapping) else None
    fallback = bool(own) or bool(default_model)
    found = []
    for rule in task.validate:
        if rule.kind == "judge" and not (rule.options.get("model") or fallback):
            found.append(((*rule.path, "judge"), "a judge rule needs a model: give it model:, or set model: in "
                                                  "goatclaw.yaml"))
    fix = task.fix
    if fix is not None and fix.mode == "repair" and fix.attempts > 0 and task.validate and not (fix.model or fallback):
        found.append(((*task.path, "fix"), "fix: {mode: repair} needs a model: give fix.model, or set model: in "
                                           "goatclaw.yaml"))
    return found


def budget_problems(task: Any, budgeted: bool) -> list[tuple[tuple[str | int, ...], str]]:
    """``(path, warning)`` when an ``llm`` task under a budget has no ``max_tokens``.

    The budget then reserves the model's whole output limit for each call (its worst
    case), which can refuse calls a ``max_tokens`` would let through.
    """
    if not budgeted or task.uses != "llm" or not isinstance(task.with_, Mapping) or "max_tokens" in task.with_:
        return []
    return [((*task.path, "with"), "no max_tokens under a budget: each call reserves the model's whole output "
                                   "limit against the budget (its worst case); set max_tokens to bound it")]


def _type_name(value: Any) -> str:
    for name, test in _JSON_TYPES.items():
        if name != "integer" and test(value):
            return "integer" if name == "number" and isinstance(value, int) else name
    return type(value).__name__


def _short(value: Any) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."
