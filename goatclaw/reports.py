"""Reports of stored runs for CI: JUnit XML, JSON and Markdown.

A report is built from the store, never from a live run, so it can be made at the end
of ``goatclaw apply --report junit:out.xml`` or long afterwards with
``goatclaw runs report RUN --format junit``. The steps: read the run's rows
(:func:`build`), then render the one :class:`RunReport` in a format (:func:`render`).

JUnit: one ``<testsuite>`` for the run, one ``<testcase>`` per task, and for a fan-out
one more per item (``task[0]``, ``task[1]`` …); a failed task is a ``<failure>`` with its
error class, error and the validation rules that rejected its output; a skipped task
(its ``if`` was false, or everything it needs was skipped) is ``<skipped>``; a task that
did not run because a need failed, or was cancelled, is ``<skipped>`` with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from goatclaw.errors import GoatclawError, error_line
from goatclaw.history import llm_costs
from goatclaw.money import usd
from goatclaw.store import RunRow, Store, TaskRow

__all__ = ["FORMATS", "ItemReport", "RunReport", "TaskReport", "build", "parse_target", "render", "write", "xml_text"]

FORMATS = ("junit", "json", "markdown")
_FAILED = ("failed",)
_NOT_RUN = ("skipped", "upstream_failed", "cancelled", "pending", "running", "waiting")  # waiting: an approval
#: the runner's message for a fan-out with ``fail_fast: false`` (every item ran to its end)
_ALL_ITEMS_RAN = re.compile(r"^\d+ of \d+ items failed")
# XML 1.0 cannot hold most control characters (nor lone surrogates, U+FFFE, U+FFFF), even escaped: a report
# must still parse. Each is written as pytest's junitxml writes it, ``#x1B``: readable, and no U+FFFD (which
# xunit-viewer cannot show) appears that the task never wrote.
_XML_ILLEGAL = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class ItemReport:
    """One item of a fan-out: ``passed``, ``failed`` or ``skipped``, with why."""

    index: int
    outcome: str
    error: str | None = None
    error_class: str | None = None
    attempts: int = 0
    verdicts: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class TaskReport:
    """One task of a stored run, with what a report needs to say about it."""

    id: str
    status: str
    attempts: int
    duration: float | None
    output: Any
    error: str | None
    error_class: str | None
    verdicts: tuple[dict[str, Any], ...] = ()  # rule verdicts that did not pass (error and warn)
    failed_attempts: tuple[dict[str, Any], ...] = ()
    items: tuple[ItemReport, ...] | None = None
    cost_usd: float = 0.0
    llm_calls: int = 0
    #: What the task logged (``Store.logs`` rows, secrets masked): JUnit's ``system-err``.
    logs: tuple[dict[str, Any], ...] = ()

    @property
    def outcome(self) -> str:
        """``passed``, ``failed`` or ``skipped`` (a task that did not run, for any reason)."""
        if self.status in _FAILED:
            return "failed"
        return "skipped" if self.status in _NOT_RUN else "passed"

    @property
    def warnings(self) -> tuple[dict[str, Any], ...]:
        """Warn-severity rules its output did not pass (recorded, not failing the task)."""
        return tuple(v for v in self.verdicts if v.get("severity") == "warn")


@dataclass(frozen=True)
class RunReport:
    """A stored run, ready to render: the run, its tasks in plan order, its LLM costs."""

    run: RunRow
    tasks: tuple[TaskReport, ...]
    llm: Mapping[str, Any] = field(default_factory=dict)
    max_cost: float | None = None

    @property
    def cost_usd(self) -> float:
        """Dollars the run's LLM calls cost (judges and repairs included)."""
        return float(self.llm.get("cost_usd") or 0.0)

    @property
    def over_budget(self) -> bool:
        """Whether the run cost more than ``max_cost``."""
        return self.max_cost is not None and self.cost_usd > self.max_cost

    @property
    def warnings(self) -> list[tuple[str, dict[str, Any]]]:
        """Every warn rule that did not pass, with its task."""
        return [(t.id, v) for t in self.tasks for v in t.warnings]

    def counts(self) -> dict[str, int]:
        """Tasks per status."""
        out: dict[str, int] = {}
        for t in self.tasks:
            out[t.status] = out.get(t.status, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (the ``json`` format)."""
        r = self.run
        return {
            "run": {"id": r.id, "pipeline": r.pipeline, "file": r.file, "status": r.status,
                    "started_at": r.started_at, "finished_at": r.finished_at, "duration": r.duration,
                    "vars": r.vars, "error": r.error},
            "counts": self.counts(),
            "cost": {"usd": self.cost_usd, "max_usd": self.max_cost, "over": self.over_budget,
                     "calls": self.llm.get("calls", 0), "prompt_tokens": self.llm.get("prompt_tokens", 0),
                     "completion_tokens": self.llm.get("completion_tokens", 0)},
            "tasks": [{**{k: v for k, v in asdict(t).items() if k not in ("items", "logs")}, "outcome": t.outcome,
                       "items": None if t.items is None else [asdict(i) for i in t.items]} for t in self.tasks],
        }


# -- building ----------------------------------------------------------------------------------


def build(store: str | os.PathLike[str] | Store, ref: str = "last", *, max_cost: float | None = None) -> RunReport:
    """Read run ``ref`` (an id, a unique prefix, or ``last``) from ``store`` into a :class:`RunReport`."""
    if isinstance(store, Store):
        return _build(store, ref, max_cost)
    path = Path(store)
    if not path.exists():
        raise GoatclawError(f"no store at {path}")
    with Store.open(path) as db:
        return _build(db, ref, max_cost)


def _build(db: Store, ref: str, max_cost: float | None) -> RunReport:
    run = db.run(ref)
    if run is None:
        raise GoatclawError(f"no run '{ref}' in {db.path}")
    rows = {t.task_id: t for t in db.tasks(run.id)}
    attempts = db.attempts(run.id)
    events = db.events(run.id)
    costs = llm_costs(events)
    order = _plan_order(events, rows)
    # each task's own attempts and events, grouped once (a 10k-task run must not rescan the log per task)
    attempts_of: dict[str, list[Mapping[str, Any]]] = {}
    for a in attempts:
        attempts_of.setdefault(a["task_id"], []).append(a)
    events_of: dict[str | None, list[Mapping[str, Any]]] = {}
    for e in events:
        events_of.setdefault(e["task"], []).append(e)
    logs_of: dict[str, list[dict[str, Any]]] = {}
    for line in db.logs(run.id):
        logs_of.setdefault(line["task"], []).append(line)
    tasks = tuple(replace(_task(rows[tid], attempts_of.get(tid, []), events_of.get(tid, []),
                                costs["tasks"].get(tid, {})), logs=tuple(logs_of.get(tid, ())))
                  for tid in order if tid in rows)
    return RunReport(run, tasks, costs, max_cost)


def _plan_order(events: Sequence[Mapping[str, Any]], rows: Mapping[str, TaskRow]) -> list[str]:
    """The run's tasks in plan order (as ``run.started`` listed them), then any others it recorded."""
    listed: list[str] = []
    for e in events:
        if e["topic"] in ("run.started", "run.resumed"):
            listed = [str(t) for t in e["data"].get("tasks", [])]
            break
    return list(dict.fromkeys([*listed, *rows]))


def _task(row: TaskRow, attempts: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]],
          cost: Mapping[str, Any]) -> TaskReport:
    """One task's report from its own attempts and events (both already filtered to it)."""
    mine = [a for a in attempts if a["task_id"] == row.task_id]
    rules = [e["data"] for e in events if e["topic"] == "task.rule" and e["task"] == row.task_id]
    # a rule that failed and was later fixed still shows in the log: keep the last verdict per (item, rule)
    last: dict[tuple[Any, Any], dict[str, Any]] = {}
    for v in rules:
        last[(v.get("item"), v.get("rule"))] = v
    verdicts = tuple(v for v in last.values() if v.get("passed") is False)
    items = _items(row, mine, events, verdicts)
    duration = None if row.started_at is None or row.finished_at is None else row.finished_at - row.started_at
    return TaskReport(row.task_id, row.status, row.attempts, duration, row.output, row.error, row.error_class,
                      verdicts, tuple(a for a in mine if a["status"] == "failed"), items,
                      float(cost.get("cost_usd") or 0.0), int(cost.get("calls") or 0))


def _item_count(row: TaskRow, events: Sequence[Mapping[str, Any]]) -> int | None:
    for e in reversed(events):
        if e["task"] == row.task_id and e["topic"] == f"task.{row.status}" and "items" in e["data"]:
            return int(e["data"]["items"])
    return None


def _items(row: TaskRow, attempts: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]],
           verdicts: Sequence[Mapping[str, Any]]) -> tuple[ItemReport, ...] | None:
    """Each item's outcome of a fan-out task (``None`` for a task that is not one).

    Only failed and cancelled attempts are stored, so an item passed unless its last
    stored attempt failed and no retry followed it. When a ``fail_fast`` fan-out fails,
    items that recorded nothing may have been stopped: they are reported as skipped.
    """
    count = _item_count(row, events)
    if count is None:
        return None
    retried = {(e["data"].get("item"), e["data"].get("attempt")) for e in events
               if e["topic"] == "task.retrying" and e["task"] == row.task_id}
    all_ran = row.status != "failed" or bool(_ALL_ITEMS_RAN.match(row.error or ""))
    out = []
    for i in range(count):
        tries = sorted((a for a in attempts if a["item"] == i), key=lambda a: a["attempt"])
        final = tries[-1] if tries else None
        mine = tuple(v for v in verdicts if v.get("item") == i and v.get("severity") != "warn")
        if final is not None and final["status"] == "failed" and (i, final["attempt"]) not in retried \
                and row.status == "failed":
            out.append(ItemReport(i, "failed", final["error"], final["error_class"], final["attempt"], mine))
        elif final is not None and final["status"] == "cancelled":
            out.append(ItemReport(i, "skipped", "cancelled", "cancelled", final["attempt"]))
        elif not all_ran and final is None:
            out.append(ItemReport(i, "skipped", "not known to have finished: the fan-out stopped at its first "
                                  "failure (fail_fast)", None, 0))
        else:
            out.append(ItemReport(i, "passed", None, None, len(tries) + 1 if tries else 1))
    return tuple(out)


# -- rendering ---------------------------------------------------------------------------------


def render(report: RunReport, fmt: str) -> str:
    """``report`` as text in ``fmt`` (``junit``, ``json`` or ``markdown``)."""
    if fmt == "junit":
        return junit(report)
    if fmt == "json":
        return json.dumps(report.to_dict(), indent=2, ensure_ascii=False, default=str) + "\n"
    if fmt == "markdown":
        return markdown(report)
    raise GoatclawError(f"unknown report format '{fmt}' (use one of: {', '.join(FORMATS)})")


def parse_target(text: str) -> tuple[str, Path]:
    """``junit:out/report.xml`` → ``("junit", Path("out/report.xml"))``; a clear error otherwise."""
    fmt, sep, path = text.partition(":")
    if not sep or not path or fmt not in FORMATS:
        raise GoatclawError(f"--report expects FORMAT:PATH with FORMAT one of {', '.join(FORMATS)}, got '{text}'")
    return fmt, Path(path)


def write(report: RunReport, targets: Sequence[tuple[str, Path]]) -> list[Path]:
    """Render ``report`` into each ``(format, path)``; a Markdown report appends (``$GITHUB_STEP_SUMMARY``)."""
    written = []
    for fmt, path in targets:
        text = render(report, fmt)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a" if fmt == "markdown" else "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            raise GoatclawError(f"cannot write the {fmt} report to {path}: {exc.strerror or exc}") from None
        written.append(path)
    return written


def xml_text(text: Any) -> str:
    """Text an XML 1.0 document can hold: each character it cannot is written ``#xHH`` as pytest does."""
    return _XML_ILLEGAL.sub(_xml_escape, "" if text is None else str(text))


def _xml_escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"#x{code:02X}" if code <= 0xFF else f"#x{code:04X}"


def _seconds(value: float | None) -> str:
    return f"{(value or 0.0):.3f}"


def _verdict_line(v: Mapping[str, Any]) -> str:
    from goatclaw.validation import rule_label

    item = f"item {v['item']}: " if v.get("item") is not None else ""
    return f"{item}{rule_label(v.get('rule'), v.get('kind'), v.get('severity', 'error'))}: {v.get('message')}"


def junit(report: RunReport) -> str:
    """The run as JUnit XML: a testsuite of the run, a testcase per task and per fan-out item.

    A run that failed for a reason of its own (a pipeline timeout, a hook, ``--max-cost``)
    rather than through a task gets one more testcase, ``(run)``, failing with that reason.
    """
    run = report.run
    cases = [c for t in report.tasks for c in _cases(run.pipeline, t)]
    run_problem = _run_problem(report)
    if run_problem:
        case = ET.Element("testcase", name="(run)", classname=xml_text(run.pipeline), time=_seconds(run.duration))
        ET.SubElement(case, "failure", message=xml_text(run_problem), type="budget" if report.over_budget else "run"
                      ).text = xml_text(run_problem)
        cases.append(case)
    failures = sum(1 for c in cases if c.find("failure") is not None)
    skipped = sum(1 for c in cases if c.find("skipped") is not None)
    suites = ET.Element("testsuites", name="goatclaw", tests=str(len(cases)), failures=str(failures), errors="0",
                        time=_seconds(run.duration))
    stamp = datetime.fromtimestamp(run.started_at, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    suite = ET.SubElement(suites, "testsuite", name=xml_text(run.pipeline), tests=str(len(cases)),
                          failures=str(failures), errors="0", skipped=str(skipped), time=_seconds(run.duration),
                          timestamp=stamp, hostname=xml_text(socket.gethostname()), id=xml_text(run.id))
    props = ET.SubElement(suite, "properties")
    for name, value in (("run", run.id), ("status", run.status), ("file", run.file or ""),
                        ("cost_usd", f"{report.cost_usd:.6f}"), ("vars", json.dumps(run.vars, default=str))):
        ET.SubElement(props, "property", name=name, value=xml_text(value))
    suite.extend(cases)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _run_problem(report: RunReport) -> str | None:
    """Why the run failed when no task's failure says it (or that it went over ``--max-cost``)."""
    run = report.run
    parts = []
    if run.status in ("failed", "cancelled") and run.error and not any(t.outcome == "failed" for t in report.tasks) \
            and not report.over_budget:  # over --max-cost is said below, once
        parts.append(f"run {run.status}: {run.error}")
    if report.over_budget:
        parts.append(_over_budget(report))
    return "; ".join(parts) or None


def _cases(pipeline: str, t: TaskReport) -> list[ET.Element]:
    case = ET.Element("testcase", name=xml_text(t.id), classname=xml_text(pipeline), time=_seconds(t.duration))
    if t.outcome == "failed":
        failure = ET.SubElement(case, "failure", message=xml_text(t.error or "failed"),
                                type=xml_text(t.error_class or "error"))
        lines = [error_line(t.error_class, t.error), f"attempts: {t.attempts}"]
        lines += [_verdict_line(v) for v in t.verdicts if v.get("severity") != "warn"]
        lines += [f"attempt {a['attempt']}{_item_of(a)} failed: {error_line(a['error_class'], a['error'])}"
                  for a in t.failed_attempts]
        failure.text = xml_text("\n".join(lines))
    elif t.outcome == "skipped":
        reason = t.error or ("its if: was false, or every task it needs was skipped" if t.status == "skipped"
                             else t.status)
        ET.SubElement(case, "skipped", message=xml_text(f"{t.status}: {reason}"))
    out_lines = [f"status: {t.status}"]
    if t.llm_calls:
        out_lines.append(f"llm: {t.llm_calls} calls, {usd(t.cost_usd)}")
    out_lines += [f"warning: {_verdict_line(v)}" for v in t.warnings]
    if t.outcome == "passed" and t.output is not None:
        out_lines.append("output: " + _short(t.output, 2000))
    system_out = ET.SubElement(case, "system-out")
    system_out.text = xml_text("\n".join(out_lines))
    if t.logs:
        ET.SubElement(case, "system-err").text = xml_text(_log_text(t.logs))
    cases = [case]
    for item in t.items or ():
        cases.append(_item_case(pipeline, t, item))
    return cases


def _item_case(pipeline: str, t: TaskReport, item: ItemReport) -> ET.Element:
    case = ET.Element("testcase", name=xml_text(f"{t.id}[{item.index}]"), classname=xml_text(f"{pipeline}.{t.id}"),
                      time="0.000")
    if item.outcome == "failed":
        failure = ET.SubElement(case, "failure", message=xml_text(item.error or "failed"),
                                type=xml_text(item.error_class or "error"))
        failure.text = xml_text("\n".join([error_line(item.error_class, item.error), f"attempts: {item.attempts}",
                                       *(_verdict_line(v) for v in item.verdicts)]))
    elif item.outcome == "skipped":
        ET.SubElement(case, "skipped", message=xml_text(item.error or "skipped"))
    return case


#: At most this many characters of a task's log go into its ``system-err`` (the end is kept: where it failed).
_SYSTEM_ERR_CHARS = 64 * 1024


def _log_text(logs: Sequence[Mapping[str, Any]]) -> str:
    """A task's log lines as ``time level [item] #attempt source: message``, its last 64 KiB."""
    lines = []
    for line in logs:
        stamp = datetime.fromtimestamp(line["ts"], UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        level = logging.getLevelName(line["level"]).lower()
        item = "" if line["item"] is None else f" [{line['item']}]"
        lines.append(f"{stamp} {level}{item} #{line['attempt']} {line['source']}: {line['message']}")
    text = "\n".join(lines)
    if len(text) > _SYSTEM_ERR_CHARS:
        text = f"[goatclaw: the log's first {len(text) - _SYSTEM_ERR_CHARS:,} characters left out]\n" \
               + text[-_SYSTEM_ERR_CHARS:]
    return text


def _item_of(attempt: Mapping[str, Any]) -> str:
    return "" if attempt["item"] < 0 else f" (item {attempt['item']})"


def _short(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _over_budget(report: RunReport) -> str:
    return f"the run cost {usd(report.cost_usd)}, over --max-cost {usd(report.max_cost)}"


_ICON = {"succeeded": "✅", "cached": "✅", "failed": "❌", "skipped": "⏭️", "upstream_failed": "⛔",
         "cancelled": "⏹️", "waiting": "⏸️"}


def _md(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def markdown(report: RunReport) -> str:
    """The run as GitHub-flavoured Markdown: a heading, a status table, costs, failures (fits a step summary)."""
    run = report.run
    icon = _ICON.get(run.status, "⏳")
    counts = ", ".join(f"{n} {s}" for s, n in sorted(report.counts().items()))
    dur = "-" if run.duration is None else f"{run.duration:.2f}s"
    lines = [f"## {icon} {_md(run.pipeline)}: {run.status}", "",
             f"Run `{run.id}` in {dur}: {counts or 'no tasks'}.", ""]
    if run.error:
        lines += [f"> {_md(run.error)}", ""]
    lines += ["| task | status | attempts | time | cost | detail |", "|---|---|--:|--:|--:|---|"]
    for t in report.tasks:
        detail = error_line(t.error_class, t.error) if t.error else ""
        if t.items is not None:
            passed = sum(1 for i in t.items if i.outcome == "passed")
            detail = (f"{passed}/{len(t.items)} items passed" + (f"; {detail}" if detail else ""))
        if t.warnings:
            detail += ("; " if detail else "") + f"{len(t.warnings)} warning(s)"
        time_ = "" if t.duration is None else f"{t.duration:.2f}s"
        cost = usd(t.cost_usd) if t.llm_calls else ""
        lines.append(f"| `{_md(t.id)}` | {_ICON.get(t.status, '')} {t.status} | {t.attempts} | {time_} | {cost} | "
                     f"{_md(_short(detail, 200))} |")
    lines.append("")
    llm = report.llm
    if llm.get("calls"):
        budget = f" of --max-cost {usd(report.max_cost)}" if report.max_cost is not None else ""
        lines += [f"**Cost:** {usd(report.cost_usd)}{budget} ({llm['calls']} LLM calls, "
                  f"{llm.get('prompt_tokens', 0)} + {llm.get('completion_tokens', 0)} tokens).", ""]
    elif report.max_cost is not None:
        lines += [f"**Cost:** $0 of --max-cost {usd(report.max_cost)} (no LLM calls).", ""]
    if report.over_budget:
        lines += [f"**Over budget:** {_over_budget(report)}.", ""]
    failed = [t for t in report.tasks if t.outcome == "failed"]
    if failed:
        lines += ["### Failures", ""]
        for t in failed:
            lines.append(f"- **`{_md(t.id)}`** ({t.error_class}): {_md(t.error)}")
            lines += [f"  - {_md(_verdict_line(v))}" for v in t.verdicts if v.get("severity") != "warn"]
            lines += [f"  - item {i.index}: {_md(error_line(i.error_class, i.error))}"
                      for i in t.items or () if i.outcome == "failed"]
        lines.append("")
    if report.warnings:
        lines += ["### Warnings", ""]
        lines += [f"- `{_md(tid)}`: {_md(_verdict_line(v))}" for tid, v in report.warnings]
        lines.append("")
    return "\n".join(lines) + "\n"
