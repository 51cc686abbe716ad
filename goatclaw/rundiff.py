"""Comparing two stored runs task by task: status, output, cost, tokens, duration and rule verdicts.

``goatclaw runs diff A B`` (and :func:`goatclaw.diff_runs`) reads both runs from the store
(:func:`diff`) and renders the one :class:`RunDiff` as text, Markdown (a pull request
comment) or JSON (:func:`render`). An output that is text (an ``llm`` task's answer) is
compared line by line (a unified diff); other JSON by path (``$.a.b: 1 → 2``).
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from goatclaw.errors import GoatclawError
from goatclaw.history import llm_costs
from goatclaw.store import Store, TaskRow

__all__ = ["FORMATS", "RunDiff", "TaskDiff", "diff", "render"]

FORMATS = ("text", "markdown", "json")
#: The most lines of an output diff shown per task.
MAX_DIFF_LINES = 60
#: The most changed paths of a JSON diff listed per task.
MAX_PATHS = 30


@dataclass(frozen=True)
class TaskDiff:
    """One task in both runs: each side's figures (``None`` when it is not in that run) and how the output moved."""

    task: str
    status: tuple[str | None, str | None]
    cost_usd: tuple[float, float]
    tokens: tuple[int, int]
    duration: tuple[float | None, float | None]
    calls: tuple[int, int]
    #: Each validation rule's verdict, by label (``rule 1 (expr)``): ``(passed in A, passed in B)``.
    rules: Mapping[str, tuple[bool | None, bool | None]] = field(default_factory=dict)
    output_changed: bool = False
    #: The output's diff: unified diff lines for text, ``path: a → b`` lines for JSON.
    output_diff: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether what the task did differs: its status, its output or a rule's verdict (not cost or timing)."""
        return self.output_changed or self.status[0] != self.status[1] or any(a != b for a, b in self.rules.values())


@dataclass(frozen=True)
class RunDiff:
    """Two runs side by side: their ids, statuses, totals and each task's :class:`TaskDiff`."""

    a: str
    b: str
    status: tuple[str, str]
    pipeline: tuple[str, str]
    cost_usd: tuple[float, float]
    tokens: tuple[int, int]
    duration: tuple[float | None, float | None]
    tasks: tuple[TaskDiff, ...]
    forked: Mapping[str, Any] | None = None  # B's run.forked note, when B is a fork

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        doc = asdict(self)
        for t, td in zip(doc["tasks"], self.tasks, strict=True):
            t["changed"] = td.changed
        return doc


def diff(store: str | os.PathLike[str], a: str, b: str | None = None) -> RunDiff:
    """Runs ``a`` and ``b`` (ids, unique prefixes or ``last``) of ``store`` compared task by task.

    Without ``b``, ``a`` is a fork (``goatclaw runs fork``) and is compared with the run it forks.
    """
    with Store.open(store) as db:
        if b is None:
            a, b = _origin(db, a), a
        ra, rb = _row(db, a), _row(db, b)
        ta, tb = {t.task_id: t for t in db.tasks(ra.id)}, {t.task_id: t for t in db.tasks(rb.id)}
        ea, eb = db.events(ra.id), db.events(rb.id)
    ca, cb = llm_costs(ea), llm_costs(eb)
    order = list(dict.fromkeys([*ta, *tb]))
    tasks = tuple(_task(tid, ta.get(tid), tb.get(tid), ca["tasks"].get(tid, {}), cb["tasks"].get(tid, {}),
                        _rules(ea, tid), _rules(eb, tid)) for tid in order)
    forked = next((e["data"] for e in eb if e["topic"] == "run.forked"), None)
    return RunDiff(a=ra.id, b=rb.id, status=(ra.status, rb.status), pipeline=(ra.pipeline, rb.pipeline),
                   cost_usd=(ca["cost_usd"], cb["cost_usd"]),
                   tokens=(ca["prompt_tokens"] + ca["completion_tokens"],
                           cb["prompt_tokens"] + cb["completion_tokens"]),
                   duration=(ra.duration, rb.duration), tasks=tasks, forked=forked)


def _origin(db: Store, ref: str) -> str:
    """The run that run ``ref`` forks (its ``run.forked`` event); an error for a run that is no fork."""
    row = _row(db, ref)
    note = next((e["data"] for e in db.events(row.id) if e["topic"] == "run.forked"), None)
    if not note or not isinstance(note.get("from_run"), str):
        raise GoatclawError(f"run {row.id} is not a fork: name the two runs to compare (goatclaw runs diff A B)")
    return str(note["from_run"])


def _row(db: Store, ref: str) -> Any:
    row = db.run(ref)
    if row is None:
        raise GoatclawError(f"no run '{ref}' in {db.path}")
    return row


def _rules(events: list[dict[str, Any]], task: str) -> dict[str, bool | None]:
    """The last verdict of each of ``task``'s rules (a fix judges again), by label."""
    found: dict[str, bool | None] = {}
    for e in events:
        if e["topic"] == "task.rule" and e["task"] == task:
            d = e["data"]
            label = f"rule {d.get('rule')} ({d.get('kind')})" + (f"[{d['item']}]" if d.get("item") is not None else "")
            found[label] = d.get("passed")
    return found


def _task(tid: str, a: TaskRow | None, b: TaskRow | None, ca: Mapping[str, Any], cb: Mapping[str, Any],
          ra: Mapping[str, bool | None], rb: Mapping[str, bool | None]) -> TaskDiff:
    oa, ob = _answer(a), _answer(b)
    lines = _output_diff(oa, ob) if a is not None and b is not None and oa != ob else ()
    return TaskDiff(
        task=tid, status=(a.status if a else None, b.status if b else None),
        cost_usd=(float(ca.get("cost_usd", 0.0)), float(cb.get("cost_usd", 0.0))),
        tokens=(int(ca.get("prompt_tokens", 0)) + int(ca.get("completion_tokens", 0)),
                int(cb.get("prompt_tokens", 0)) + int(cb.get("completion_tokens", 0))),
        duration=(_duration(a), _duration(b)), calls=(int(ca.get("calls", 0)), int(cb.get("calls", 0))),
        rules={k: (ra.get(k), rb.get(k)) for k in dict.fromkeys([*ra, *rb])},
        output_changed=a is not None and b is not None and oa != ob, output_diff=tuple(lines))


def _duration(row: TaskRow | None) -> float | None:
    if row is None or row.started_at is None or row.finished_at is None:
        return None
    return row.finished_at - row.started_at


#: What of an ``llm`` answer is its output for a diff: the answer, not its cost, timing or where it came from.
_ANSWER_ONLY = ("text", "data", "tool_calls", "trajectory")


def _answer(row: TaskRow | None) -> Any:
    out = row.output if row is not None else None
    if isinstance(out, Mapping) and "text" in out and "usage" in out:
        return {k: out[k] for k in _ANSWER_ONLY if k in out and out[k] is not None}
    return out


def _output_diff(a: Any, b: Any) -> list[str]:
    text_a, text_b = _as_text(a), _as_text(b)
    if text_a is not None and text_b is not None:
        lines = list(difflib.unified_diff(text_a.splitlines(), text_b.splitlines(), "A", "B", lineterm="", n=2))
        return _clip(lines, MAX_DIFF_LINES)
    return _clip([f"{path}: {_short(x)} → {_short(y)}" for path, x, y in _json_paths(a, b, "$")], MAX_PATHS)


def _as_text(value: Any) -> str | None:
    """The text of an output that is text (a string, or an answer whose data is empty)."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and set(value) <= {"text"} and isinstance(value.get("text"), str):
        return str(value["text"])
    return None


def _json_paths(a: Any, b: Any, path: str) -> list[tuple[str, Any, Any]]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for k in dict.fromkeys([*a, *b]):
            sub = f"{path}.{k}" if str(k).isidentifier() else f"{path}[{json.dumps(str(k))}]"
            if k not in a or k not in b:
                out.append((sub, a.get(k, "∅"), b.get(k, "∅")))
            elif a[k] != b[k]:
                out += _json_paths(a[k], b[k], sub)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y
                for p in _json_paths(x, y, f"{path}[{i}]")]
    return [(path, a, b)]


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) and value == "∅" else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clip(lines: list[str], most: int) -> list[str]:
    return lines if len(lines) <= most else [*lines[:most], f"… {len(lines) - most} more lines"]


# -- rendering -------------------------------------------------------------------------------------


def render(d: RunDiff, fmt: str = "text", *, all_tasks: bool = True) -> str:
    """``d`` as ``text``, ``markdown`` or ``json``; ``all_tasks=False`` leaves out tasks where nothing changed."""
    if fmt == "json":
        return json.dumps(d.to_dict(), indent=2, ensure_ascii=False, default=str) + "\n"
    if fmt not in FORMATS:
        raise GoatclawError(f"no diff format '{fmt}' (text, markdown, json)")
    shown = [t for t in d.tasks if all_tasks or t.changed]
    md = fmt == "markdown"
    head = [f"{'## ' if md else ''}runs diff {d.a} → {d.b}"]
    if d.forked:
        head.append(f"{d.b} forks {d.forked.get('from_run')} at task '{d.forked.get('from_task')}'")
    head.append(f"status {d.status[0]} → {d.status[1]}, cost {_usd(d.cost_usd[0])} → {_usd(d.cost_usd[1])}, "
                f"tokens {d.tokens[0]} → {d.tokens[1]}, duration {_secs(d.duration[0])} → {_secs(d.duration[1])}")
    return (_markdown(head, shown) if md else _text(head, shown)) + "\n"


def _row_cells(t: TaskDiff) -> list[str]:
    rules = ", ".join(f"{k}: {_verdict(a)} → {_verdict(b)}" for k, (a, b) in t.rules.items() if a != b)
    return [t.task, f"{t.status[0] or '—'} → {t.status[1] or '—'}", "changed" if t.output_changed else "same",
            f"{_usd(t.cost_usd[0])} → {_usd(t.cost_usd[1])}", f"{t.tokens[0]} → {t.tokens[1]}",
            f"{_secs(t.duration[0])} → {_secs(t.duration[1])}", rules or ("same" if t.rules else "")]


_HEADERS = ["task", "status", "output", "cost", "tokens", "duration", "rules"]


def _text(head: list[str], tasks: Sequence[TaskDiff]) -> str:
    rows = [_HEADERS, *(_row_cells(t) for t in tasks)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEADERS))]
    lines = [*head, ""]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for t in tasks:
        if t.output_diff:
            lines += ["", f"{t.task}: output", *(f"  {line}" for line in t.output_diff)]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown(head: list[str], tasks: Sequence[TaskDiff]) -> str:
    lines = [head[0], "", *head[1:], "", "| " + " | ".join(_HEADERS) + " |", "|" + "---|" * len(_HEADERS)]
    lines += ["| " + " | ".join(_cell(c) for c in _row_cells(t)) + " |" for t in tasks]
    for t in tasks:
        if t.output_diff:
            fence = "```diff" if t.output_diff[0].startswith("---") else "```"
            lines += ["", f"<details><summary>{_cell(t.task)}: output</summary>", "", fence,
                      *(line.replace("```", "`\u200b``") for line in t.output_diff), "```", "", "</details>"]
    return "\n".join(lines)


def _usd(value: float) -> str:
    from goatclaw.money import usd

    return usd(value)


def _secs(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}s"


def _verdict(value: bool | None) -> str:
    return {True: "pass", False: "fail", None: "—"}[value]
