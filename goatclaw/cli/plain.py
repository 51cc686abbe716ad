"""A run's lines without rich: the plain view of a run (pipes, logs, CI) and the words every view shares.

``goatclaw apply`` into a pipe or a log prints one line per task event and a summary
line; none of it needs a layout engine, and rich costs about 20 ms of imports, a tenth
of what ``apply`` may take. :mod:`goatclaw.cli.render` (the live view, tables, trees)
builds on the same words: the icons, durations, counts and incident lines are one text.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

from goatclaw.cli.lines import printable
from goatclaw.cli.text import error_text, item_label, shown

if TYPE_CHECKING:
    from goatclaw.engine.state import RunResult
    from goatclaw.events import Bus, Event

__all__ = ["FAILED_LOG_LINES", "LOG_TOPIC", "STYLE", "PlainView", "counts_text", "incident_text", "level_name",
           "live_log_line", "log_line", "plain_stream", "result_lines", "reuse_note", "tool_text", "warning_text",
           "write_result"]

#: Each state's icon and rich style.
STYLE = {
    "pending": ("·", "dim"),
    "running": ("▶", "cyan"),
    "succeeded": ("✓", "green"),
    "cached": ("✓", "green"),
    "failed": ("✗", "red"),
    "skipped": ("↷", "yellow"),
    "upstream_failed": ("⊘", "red"),
    "cancelled": ("■", "magenta"),
    "interrupted": ("↯", "magenta"),  # a run left running by a process that is gone
    "blocked": ("⛔", "bold red"),
    "retrying": ("↻", "yellow"),
    "waiting": ("⏸", "yellow"),  # a task (and its run) at an approval: goatclaw approve RUN
}
#: The task events that end a task in this process (``waiting``: until a decision resumes the run).
_TERMINAL_TOPICS = ("succeeded", "failed", "skipped", "upstream_failed", "cancelled", "cached", "waiting")


def _fmt_duration(seconds: float | None) -> str:
    """``850ms``, ``2.50s``, ``3.0m``; empty for no duration."""
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.2f}s"
    return f"{seconds / 60:.1f}m"


def counts_text(counts: dict[str, int]) -> str:
    """``1 failed, 2 succeeded``: a run's task counts, the same words under the live table and in the summary."""
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))


def warning_text(task: str | None, data: dict[str, Any]) -> str | None:
    """The line for a ``task.rule`` event of a ``severity: warn`` rule that did not pass, else None."""
    if data.get("passed") is not False or data.get("severity") != "warn":
        return None
    from goatclaw.validation import rule_label

    return (f"warning: {item_label(task, data.get('item'))}: {rule_label(data.get('rule'), data.get('kind'))}: "
            f"{shown(data.get('message'))}")


class _Warnings:
    """Each warn rule's failure once per task, item and rule (a fix loop judges an output again)."""

    def __init__(self) -> None:
        self.seen: set[tuple[Any, ...]] = set()

    def first(self, ev: Event) -> str | None:
        text = warning_text(ev.task, ev.data)
        key = (ev.task, ev.data.get("item"), ev.data.get("rule"))
        if text is None or key in self.seen:
            return None
        self.seen.add(key)
        return text


class PlainView:
    """One line per task event, for pipes, logs and CI (``timestamps`` adds the time).

    ``footer=False`` leaves out the line at the run's end, for a caller that prints the
    run's summary itself (``apply``), so that the final line is printed once.
    """

    def __init__(self, bus: Bus, *, stream: TextIO | None = None, timestamps: bool = False,
                 footer: bool = True, logs: bool = False) -> None:
        self.stream = stream or sys.stdout
        self.timestamps = timestamps
        self.footer = footer
        self.warnings = _Warnings()
        if logs:  # apply --logs: each task's log lines as they come
            bus.subscribe(LOG_TOPIC, self._on_log)
        bus.subscribe("task.*", self._on_task)
        bus.subscribe("run.*", self._on_run)
        bus.subscribe("breaker.*", self._on_incident)
        bus.subscribe("hook.*", self._on_incident)
        bus.subscribe("threat.*", self._on_incident)
        bus.subscribe("ratelimit.*", self._on_incident)
        bus.subscribe("tool.*", self._on_tool)

    def _on_tool(self, ev: Event) -> None:
        if ev.topic != "tool.started":  # one line a call, when it ends (or is refused)
            self._line(ev, f"    {tool_text(ev.topic, ev.task, ev.data)}")

    def _on_incident(self, ev: Event) -> None:
        text = incident_text(ev.topic, ev.task, ev.data)
        if text:
            self._line(ev, f"  ! {text}")

    def _on_log(self, ev: Event) -> None:
        print(printable(f"    {live_log_line(ev)}"), file=self.stream, flush=True)

    def _on_rule(self, ev: Event) -> None:
        text = self.warnings.first(ev)
        if text:
            self._line(ev, f"  ! {text}")

    def _line(self, ev: Event, text: str) -> None:
        stamp = datetime.fromtimestamp(ev.ts).strftime("%H:%M:%S ") if self.timestamps else ""
        print(printable(f"{stamp}{text}"), file=self.stream, flush=True)  # a task's error cannot drive the terminal

    def _on_run(self, ev: Event) -> None:
        if ev.topic in ("run.started", "run.resumed"):
            count = len(ev.data.get("tasks", []))
            self._line(ev, f"run {ev.run_id} {ev.topic[4:]}: {ev.data.get('pipeline')} ({count} tasks)")
        elif self.footer:
            self._line(ev, f"run {ev.run_id} {ev.topic.split('.', 1)[1]} in {_fmt_duration(ev.data.get('duration'))}")

    def _on_task(self, ev: Event) -> None:
        kind = ev.topic.split(".", 1)[1]
        d = ev.data
        if kind == "started":
            self._line(ev, f"  ▶ {ev.task} started")
        elif kind == "resumed":
            self._line(ev, f"  {STYLE['succeeded'][0]} {ev.task} {d.get('status')} before: kept, not run again")
        elif kind == "fallback":
            self._line(ev, f"  ! {incident_text(ev.topic, ev.task, d)}")
        elif kind == "rule":
            self._on_rule(ev)
        elif kind == "retrying":
            self._line(ev, f"  ↻ {item_label(ev.task, d.get('item'))} attempt {d.get('attempt')} failed "
                           f"({error_text(d.get('error_class'), d.get('error'))}); retrying in {d.get('delay')}s")
        elif kind in _TERMINAL_TOPICS:
            icon = STYLE[kind][0]
            extra = f" in {_fmt_duration(d.get('duration'))}" if d.get("duration") is not None else ""
            attempts = f", {d['attempts']} attempts" if d.get("attempts", 1) > 1 else ""
            error = f": {shown(d.get('error'))}" if d.get("error") else ""
            self._line(ev, f"  {icon} {ev.task} {kind}{extra}{attempts}{error}")


def incident_text(topic: str, task: str | None, data: dict[str, Any]) -> str | None:
    """A line for the events that explain a run's recoveries (breakers, fallbacks, fixes), else None."""
    if topic == "breaker.opened":
        return (f"breaker '{data.get('key')}' opened after {data.get('failures')} failures "
                f"(half-opens in {data.get('reset')}s)")
    if topic == "breaker.half_open":
        return f"breaker '{data.get('key')}' half-open: one probe call goes through"
    if topic == "breaker.closed":
        return f"breaker '{data.get('key')}' closed again"
    if topic == "hook.failed":
        return shown(data.get("message") or f"hook '{data.get('hook')}' failed in {data.get('event')}")
    if topic == "task.fix":
        outcome = (f"fixed after {data.get('attempt')} attempt{'s' if data.get('attempt') != 1 else ''}"
                   if data.get("passed") else f"fix attempt {data.get('attempt')} still rejected")
        return (f"{item_label(task, data.get('item'))} rejected because {shown(data.get('rejected'))}; {outcome} "
                f"({data.get('mode')})")
    if topic == "task.escalate":
        return (f"{item_label(task, data.get('item'))}: {data.get('model')} passed over for {data.get('to')} "
                f"({shown(data.get('reason'))})")
    if topic == "task.fallback":
        return (f"{task} failed ({error_text(data.get('error_class'), data.get('error'))}); fallback "
                f"'{data.get('fallback')}' stands in")
    if topic == "task.rule":
        return warning_text(task, data)
    if topic == "threat.blocked":
        return f"run blocked: {shown(data.get('reason'))}"
    if topic.startswith("threat."):
        return (f"threat in {task}: {data.get('kind')} {shown(data.get('detail'))} (+{data.get('weight'):g}, score "
                f"{data.get('score'):g} of {data.get('threshold'):g})")
    if topic == "ratelimit.wait":
        return (f"{task} waits {data.get('wait')}s: at most {data.get('limit')} {data.get('kind')} side effects "
                f"per {data.get('per_seconds'):g}s" + (f" to {data['key']}" if data.get("key") else ""))
    return None


def tool_text(topic: str, task: str | None, data: dict[str, Any]) -> str:
    """A tool call of ``task``'s model as one line (the ``tool.*`` events of docs/llm.md, Tools)."""
    name, kind = data.get("tool"), topic.split(".", 1)[1]
    took = f" in {_fmt_duration(data['duration'])}" if data.get("duration") is not None else ""
    if kind == "started":
        return f"⚒ {task} calls {name}"
    if kind == "succeeded":
        return f"⚒ {task} → {name} " + ("answered from the cache" if data.get("cached") else f"succeeded{took}")
    if kind == "failed":
        return f"⚒ {task} → {name} failed{took}: {data.get('error_class')}: {data.get('error')}"
    if kind == "retrying":
        return f"⚒ {task} → {name} retries in {data.get('delay')}s: {data.get('error_class')}: {data.get('error')}"
    if kind == "child":
        return f"⚒ {task} → pipeline {data.get('pipeline')}: run {data.get('run_id')} {data.get('status')}"
    return f"⚒ {task}: {name} not offered: {data.get('reason')}"


_LEVELS = {10: "debug", 20: "info", 30: "warning", 40: "error", 50: "critical"}
#: How many of a failed task's last log lines ``runs show`` prints.
FAILED_LOG_LINES = 20


def level_name(level: int) -> str:
    """A :mod:`logging` level number as its lower-case name (``level 5`` for one without a name)."""
    return _LEVELS.get(level) or f"level {level}"


#: The bus topic of a task's log lines (goatclaw.engine.tasklogs.TOPIC; published only when heard).
LOG_TOPIC = "log.task"


def live_log_line(ev: Event) -> str:
    """A ``log.task`` event as the line ``runs logs`` prints for it (the message bounded to one line)."""
    d = ev.data
    return log_line({"ts": ev.ts, "level": d.get("level", 20), "task": ev.task, "item": -1 if d.get("item") is None
                     else d["item"], "attempt": d.get("attempt", 1), "source": d.get("source", ""),
                     "message": shown(str(d.get("message", "")), width=400)})


def log_line(line: dict[str, Any], *, task: bool = True) -> str:
    """One stored task log line: ``time level task[item] #attempt source: message``."""
    stamp = datetime.fromtimestamp(line["ts"]).strftime("%H:%M:%S.%f")[:-3]
    who = (item_label(line["task"], line["item"]) + f" #{line['attempt']} ") if task else ""
    return f"{stamp} {level_name(line['level']):<8} {who}{line['source']}: {line['message']}"


def reuse_note(result: RunResult) -> str:
    """What a run took from before instead of running: ``3 tasks from cache, 2 kept by the resume``."""
    cached = result.counts().get("cached", 0)
    parts = [f"{cached} task{'s' if cached != 1 else ''} from cache"] if cached else []
    if result.resumed:
        parts.append(f"{len(result.resumed)} kept from before")
    ran = sum(1 for tid, t in result.tasks.items() if t.status.value != "cached" and tid not in result.resumed)
    if parts and not ran:
        parts.append("nothing ran")
    return ", ".join(parts)


def result_lines(result: RunResult) -> list[tuple[str, str, bool | None]]:
    """The summary of a finished run as ``(text, style, soft_wrap)`` lines (``None``: the console's default).

    The run's line (status, duration, counts), its error, what it reused, and a line for
    each task that failed or waits for an approval.
    """
    icon, style = STYLE.get(result.status.value, ("?", ""))
    counts = counts_text(result.counts())
    dur = _fmt_duration(None if result.finished_at is None else result.finished_at - result.started_at)
    lines: list[tuple[str, str, bool | None]] = [
        (f"{icon} run {result.run_id} {result.status.value} in {dur} ({counts})", style, None)]
    if result.error:
        lines.append((f"  {shown(result.error)}", "red", None))
    reused = reuse_note(result)
    if reused:
        lines.append((f"  {reused}", "dim", None))
    for tid, t in result.tasks.items():
        if t.status.value == "failed":
            lines.append((f"  ✗ {tid}: {error_text(t.error_class, t.error)}", "red", True))
        elif t.status.value == "waiting":
            lines.append((f"  ⏸ {tid} waits for approval: goatclaw approve {result.run_id} {tid} "
                          f"(or goatclaw reject {result.run_id} {tid} --reason ...)", "yellow", True))
    return lines


def plain_stream(stream: Any) -> bool:
    """Whether rich would print to ``stream`` no escape code at all (it is no terminal, and none is forced).

    rich's own test (``Console.is_terminal``): ``TTY_COMPATIBLE=1`` or a set ``FORCE_COLOR``
    make a terminal of anything, ``TTY_COMPATIBLE=0`` of nothing; else the stream's ``isatty``.
    A notebook is left to rich.
    """
    if "ipykernel" in sys.modules:
        return False
    compatible = os.environ.get("TTY_COMPATIBLE", "")
    if compatible in ("0", "1"):
        return compatible == "0"
    if os.environ.get("FORCE_COLOR") is not None:
        return os.environ["FORCE_COLOR"] == ""
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):
        return True


def write_result(result: RunResult, stream: TextIO) -> None:
    """:func:`result_lines` on ``stream`` as a rich console that is no terminal prints them: the text alone.

    For a ``stream`` that :func:`plain_stream` says gets no styling; lines as long as they are.
    """
    for text, _style, _wrap in result_lines(result):
        stream.write(printable(text) + "\n")
    stream.flush()
