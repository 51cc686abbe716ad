"""Rendering for the terminal: the live run view, plain lines, the plan tree, run tables.

The only module besides the command definitions that imports rich. Renderers subscribe
to the run's event bus; the library itself never prints.
"""

from __future__ import annotations

import json
import time
from collections import deque
from datetime import datetime
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from goatclaw.cli.plain import (
    _TERMINAL_TOPICS,
    FAILED_LOG_LINES,
    LOG_TOPIC,
    STYLE,
    PlainView,
    _fmt_duration,
    _Warnings,
    counts_text,
    incident_text,
    level_name,
    live_log_line,
    log_line,
    result_lines,
    reuse_note,
    tool_text,
    warning_text,
)
from goatclaw.cli.problems import print_problems
from goatclaw.cli.text import error_text, item_label, shown
from goatclaw.engine.state import RunResult
from goatclaw.events import Bus, Event
from goatclaw.graph import Plan
from goatclaw.liveness import owner_pid
from goatclaw.money import usd
from goatclaw.store import DeadLetter, RunRow, TaskRow

__all__ = ["FAILED_LOG_LINES", "LOG_TOPIC", "STYLE", "LiveView", "PlainView", "counts_text", "incident_text",
           "level_name", "live_log_line", "log_line", "print_plan", "print_plugin", "print_plugins", "print_problems",
           "print_result", "print_run", "print_runs", "reuse_note", "tool_text", "warning_text"]

class LiveView:
    """A live table of the run on a terminal: each task's state, attempt and duration."""

    MAX_ROWS = 30

    def __init__(self, bus: Bus, console: Console, *, logs: bool = False) -> None:
        self.console = console
        self.order: list[str] = []
        self.state: dict[str, str] = {}
        self.started: dict[str, float] = {}
        self.duration: dict[str, float] = {}
        self.attempts: dict[str, int] = {}
        self.notes: dict[str, str] = {}
        self.recent: deque[str] = deque(maxlen=10)
        self.incidents: deque[str] = deque(maxlen=3)
        self.warnings = _Warnings()
        self.live = Live(console=console, refresh_per_second=8, transient=False, get_renderable=self._render)
        if logs:  # apply --logs: each task's log lines above the table as they come
            bus.subscribe(LOG_TOPIC, self._on_log)
        bus.subscribe("task.*", self._on_task)
        bus.subscribe("run.started", self._on_start)
        bus.subscribe("run.resumed", self._on_start)
        bus.subscribe("hook.failed", self._on_hook)
        bus.subscribe("breaker.*", self._on_breaker)
        bus.subscribe("threat.*", self._on_hook)  # a line above the table, like a failing hook
        bus.subscribe("ratelimit.*", self._on_hook)
        bus.subscribe("task.rule", self._on_rule)
        bus.subscribe("tool.*", self._on_tool)

    def _on_tool(self, ev: Event) -> None:
        """A tool call of a task's model: the task's row says what it is calling or what came back."""
        if ev.task in self.state:
            self.notes[ev.task] = tool_text(ev.topic, ev.task, ev.data)

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.live.refresh()
        self.live.__exit__(*exc)
        if not self.console.is_terminal:  # rich leaves the last frame's line open there: end it, once
            self.console.line()

    def _on_hook(self, ev: Event) -> None:
        self.console.print(Text(f"! {incident_text(ev.topic, ev.task, ev.data)}", style="yellow"))

    def _on_log(self, ev: Event) -> None:
        self.console.print(Text(live_log_line(ev), style="dim"), soft_wrap=True)

    def _on_rule(self, ev: Event) -> None:
        text = self.warnings.first(ev)
        if text:
            self.console.print(Text(f"! {text}", style="yellow"))

    def _on_start(self, ev: Event) -> None:
        self.order = list(ev.data.get("tasks", []))
        self.state = dict.fromkeys(self.order, "pending")

    def _on_task(self, ev: Event) -> None:
        tid = ev.task
        kind = ev.topic.split(".", 1)[1]
        if tid is None or (tid not in self.state and kind not in ("started", *_TERMINAL_TOPICS)):
            return
        if tid not in self.state:  # an on_failure or finally task: not in the run's list, but it runs and counts
            self.order.append(tid)
            self.state[tid] = "pending"
        if kind == "started":
            self.state[tid] = "running"
            self.started[tid] = ev.ts
        elif kind == "resumed":
            self.state[tid] = str(ev.data.get("status", "succeeded"))
            self.notes[tid] = "kept from before the resume"
        elif kind == "retrying":
            self.state[tid] = "retrying"
            item = ev.data.get("item")
            self.notes[tid] = (f"{'' if item is None else f'item {item}: '}{shown(ev.data.get('error_class'))}; "
                               f"retry in {ev.data.get('delay')}s")
        elif kind == "fallback":
            self.notes[tid] = f"fallback '{shown(ev.data.get('fallback'))}' stands in"
        elif kind == "progress":
            self.notes[tid] = shown(ev.data.get("message") or f"{(ev.data.get('done') or 0) * 100:.0f}%")
        elif kind in _TERMINAL_TOPICS:
            self.state[tid] = kind
            self.attempts[tid] = ev.data.get("attempts", 0)
            if ev.data.get("duration") is not None:
                self.duration[tid] = ev.data["duration"]
            self.notes[tid] = shown(ev.data.get("error") or "")
            self.recent.append(tid)
        else:
            return

    def _rows(self) -> list[str]:
        if len(self.order) <= self.MAX_ROWS:
            return self.order
        active = [t for t in self.order if self.state[t] in ("running", "retrying")]
        failed = [t for t in self.order if self.state[t] in ("failed",)][:5]
        shown = dict.fromkeys([*failed, *active[: self.MAX_ROWS - 10], *self.recent])
        return list(shown)[: self.MAX_ROWS]

    def _render(self) -> Group:
        table = Table(box=None, padding=(0, 1), show_header=True, header_style="bold")
        table.add_column("", width=1)
        table.add_column("task")
        table.add_column("state")
        table.add_column("attempt", justify="right")
        table.add_column("time", justify="right")
        table.add_column("", overflow="ellipsis", no_wrap=True, max_width=60)
        now = time.time()
        for tid in self._rows():
            state = self.state[tid]
            icon, style = STYLE.get(state, ("?", ""))
            dur = self.duration.get(tid)
            if dur is None and tid in self.started and state in ("running", "retrying"):
                dur = now - self.started[tid]
            table.add_row(Text(icon, style=style), tid, Text(state, style=style),
                          str(self.attempts.get(tid, "")) if self.attempts.get(tid, 0) > 1 else "",
                          _fmt_duration(dur), Text(self.notes.get(tid, ""), style="dim"))
        counts: dict[str, int] = {}
        for s in self.state.values():
            counts[s] = counts.get(s, 0) + 1
        summary = Text(counts_text(counts), style="bold")
        incidents = [Text(f"! {line}", style="yellow") for line in self.incidents]
        return Group(table, summary, *incidents)

    def _on_breaker(self, ev: Event) -> None:
        text = incident_text(ev.topic, ev.task, ev.data)
        if text:
            self.incidents.append(text)


def print_plan(plan: Plan, console: Console) -> None:
    """The plan as a tree of levels: what can run together, and what each task needs."""
    p = plan.pipeline
    tree = Tree(Text(f"{p.name}: {len(p.tasks)} tasks in {len(plan.levels)} levels", style="bold"))
    for i, level in enumerate(plan.levels, 1):
        branch = tree.add(Text(f"level {i}", style="cyan"))
        for tid in level:
            t = p.tasks[tid]
            label = Text(tid, style="bold")
            label.append(f"  {t.uses}", style="green")
            if t.foreach is not None:
                label.append("  foreach", style="magenta")
            if t.if_ is not None:
                label.append(f"  if {t.if_}", style="yellow")
            if t.needs:
                label.append(f"  ← {', '.join(t.needs)}", style="dim")
            branch.add(label)
    for title, group in (("on_failure", p.on_failure), ("finally", p.finally_)):
        if group:
            branch = tree.add(Text(title, style="cyan"))
            for tid, t in group.items():
                branch.add(Text(f"{tid}  {t.uses}"))
    console.print(tree)


def print_result(result: RunResult, console: Console) -> None:
    """A one-line summary of a finished run (and a line for each task that failed or waits)."""
    for text, style, soft_wrap in result_lines(result):
        console.print(Text(text, style=style), soft_wrap=soft_wrap)


def _run_status(run: RunRow) -> str:
    """The stored status, or ``interrupted`` for a run left ``running`` by a process that is gone."""
    return "interrupted" if run.interrupted else run.status


def print_runs(runs: list[RunRow], console: Console) -> None:
    """A table of stored runs (fits 80 columns, so a pipe can grep it)."""
    table = Table(box=None, header_style="bold", padding=(0, 1), pad_edge=False)
    for col in ("run", "pipeline", "status", "started", "time", "tasks"):
        table.add_column(col, no_wrap=col != "tasks", overflow="fold")
    for r in runs:
        status = _run_status(r)
        _, style = STYLE.get(status, ("▶", "cyan"))
        counts = counts_text(r.summary.get("counts", {}))
        table.add_row(r.id, r.pipeline, Text(status, style=style),
                      datetime.fromtimestamp(r.started_at).strftime("%m-%d %H:%M"), _fmt_duration(r.duration), counts)
    console.print(table)


def print_run(run: RunRow, tasks: list[TaskRow], attempts: list[dict[str, Any]], console: Console,
              events: list[dict[str, Any]] | None = None) -> None:
    """One stored run: its status, each task's result, and failed attempts."""
    status = _run_status(run)
    icon, style = STYLE.get(status, ("▶", "cyan"))
    console.print(Text(f"{icon} {run.id}  {run.pipeline}  {status}", style=f"bold {style}"))
    if run.interrupted:
        console.print(Text(f"  interrupted: the process that ran it (pid {owner_pid(run.owner)}) is gone; "
                           "goatclaw apply FILE --resume finishes it", style="yellow"), soft_wrap=True)
    console.print(f"  file: {run.file}   started: {datetime.fromtimestamp(run.started_at):%Y-%m-%d %H:%M:%S}"
                  f"   duration: {_fmt_duration(run.duration) or '-'}", highlight=False, markup=False)
    if run.vars:
        console.print(f"  vars: {json.dumps(run.vars)}", highlight=False, markup=False, soft_wrap=True)
    if run.error:
        console.print(Text(f"  error: {shown(run.error, lines=3)}", style="red"))
    table = Table(header_style="bold")
    for col in ("task", "status", "attempts", "duration", "output / error"):
        table.add_column(col, overflow="fold")
    for t in tasks:
        icon, style = STYLE.get(t.status, ("?", ""))
        dur = None if t.started_at is None or t.finished_at is None else t.finished_at - t.started_at
        detail = error_text(t.error_class, t.error, lines=3) if t.error else _short_json(t.output)
        table.add_row(t.task_id, Text(f"{icon} {t.status}", style=style), str(t.attempts), _fmt_duration(dur),
                      Text(detail, style="red" if t.error else ""))
    console.print(table)
    incidents = [(e["ts"], incident_text(e["topic"], e["task"], e["data"])) for e in _last_verdicts(events or [])]
    if any(text for _, text in incidents):
        console.print(Text("breakers, fallbacks, fixes and warnings", style="bold"))
        for ts, text in incidents:
            if text:
                console.print(Text(f"  {datetime.fromtimestamp(ts):%H:%M:%S} {text}", style="yellow"), soft_wrap=True)
    failed = [a for a in attempts if a["status"] == "failed"]
    if failed:
        console.print(Text("failed attempts", style="bold"))
        for a in failed:
            console.print(Text(f"  {item_label(a['task_id'], a['item'])} #{a['attempt']}: "
                               f"{error_text(a['error_class'], a['error'])}", style="yellow"), soft_wrap=True)
    for t in tasks:
        print_trajectory(t.task_id, t.output, console)


def _last_verdicts(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events with only the last ``task.rule`` verdict of each task, item and rule (a fix judges again)."""
    last = {(e["task"], e["data"].get("item"), e["data"].get("rule")): i for i, e in enumerate(events)
            if e["topic"] == "task.rule"}
    keep = set(last.values())
    return [e for i, e in enumerate(events) if e["topic"] != "task.rule" or i in keep]


def print_trajectory(task_id: str, output: Any, console: Console) -> None:
    """An ``llm`` task's tool loop, when its output has one: each turn, its tool calls and their results."""
    turns = output.get("trajectory") if isinstance(output, dict) else None
    if not isinstance(turns, list) or not turns:
        return
    calls = sum(len(turn.get("calls") or []) for turn in turns if isinstance(turn, dict))
    cost = sum(float(turn.get("cost_usd") or 0) for turn in turns if isinstance(turn, dict))
    console.print(Text(f"trajectory of {task_id}: {len(turns)} turns, {calls} tool calls, {usd(cost)}",
                       style="bold"), soft_wrap=True)
    for turn in turns:
        if not isinstance(turn, dict):
            continue
        tokens = (turn.get("usage") or {}).get("total_tokens", 0)
        head = (f"  turn {turn.get('turn')}  {turn.get('model')}  {turn.get('source')}  {tokens} tokens  "
                f"{usd(float(turn.get('cost_usd') or 0))}  {_fmt_duration((turn.get('latency_ms') or 0) / 1000)}")
        console.print(Text(head, style="dim"), soft_wrap=True)
        for call in turn.get("calls") or []:
            arguments = _short_json(_escaped(call.get("arguments")), 80)
            took = _fmt_duration((call.get("duration_ms") or 0) / 1000)
            if call.get("error_class"):
                line = Text(f"    ✗ {call.get('name')}({arguments}) {took}: {call.get('error_class')}: "
                            f"{_short_json(call.get('result'), 120)}", style="yellow")
            else:
                line = Text(f"    → {call.get('name')}({arguments}) {took}: {_short_json(call.get('result'), 120)}")
            console.print(line, soft_wrap=True)
        if not turn.get("calls") and turn.get("text"):
            console.print(Text(f"    answer: {_short_json(_escaped(turn.get('text')), 160)}"), soft_wrap=True)
        if turn.get("rejected"):  # an agent's answer that its output schema or done_when did not accept
            console.print(Text(f"    rejected: {_short_json(_escaped(turn.get('rejected')), 160)}", style="yellow"),
                          soft_wrap=True)


def _escaped(value: Any) -> Any:
    """A model's text with control characters escaped (as JSON writes them), so a terminal never runs them."""
    return json.dumps(value, ensure_ascii=False)[1:-1] if isinstance(value, str) else value


def _short_json(value: Any, limit: int = 200) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return shown(text.replace("\n", " ⏎ "), width=limit)


def print_breakers(rows: list[dict[str, Any]], console: Console) -> None:
    """A table of circuit breakers."""
    if not rows:
        console.print("no circuit breakers have been used yet")
        return
    table = Table(header_style="bold")
    for col in ("key", "state", "failures", "opened", "updated"):
        table.add_column(col, no_wrap=col in ("state", "opened", "updated"))
    style = {"closed": "green", "open": "red", "half_open": "yellow"}
    for r in rows:
        opened = datetime.fromtimestamp(r["opened_at"]).strftime("%H:%M:%S") if r["opened_at"] else ""
        table.add_row(r["key"], Text(r["state"], style=style.get(r["state"], "")), str(len(r["failures"])), opened,
                      datetime.fromtimestamp(r["updated_at"]).strftime("%Y-%m-%d %H:%M:%S"))
    console.print(table)


def _args_text(arguments: Any) -> str:
    parts = []
    for a in arguments:
        text = f"{a['name']}: {a['type']}"
        parts.append(text if a["required"] else f"{text} = {a['default']!r}")
    return ", ".join(parts)


def print_plugins(infos: list[Any], console: Console) -> None:
    """Every plugin in a table: kind, name, package and version, one-line doc, arguments (or why it is broken)."""
    table = Table(box=None, padding=(0, 1), show_header=True, header_style="bold")
    for column in ("kind", "name", "package", "doc / arguments"):
        table.add_column(column, overflow="fold")
    for info in infos:
        package = Text(f"{info.package} {info.version}".strip(), style="dim")
        if info.error:
            detail = Text(f"✗ {info.error}", style="red")
        else:
            detail = Text(info.doc or "")
            if info.arguments:
                detail.append(f"\n{_args_text(info.arguments)}", style="cyan")
        table.add_row(info.kind, Text(info.name, style="bold red" if info.error else "bold"), package, detail)
    console.print(table)
    broken = sum(1 for i in infos if i.error)
    if broken:
        console.print(Text(f"{broken} plugin{'s' if broken != 1 else ''} cannot be used (see ✗)", style="red"))


def print_plugin(info: Any, console: Console) -> None:
    """One plugin in detail: where it comes from, its signature and arguments, what it declares, its doc."""
    console.print(Text.assemble((f"{info.kind} ", "dim"), (info.name, "bold"), "  ",
                                (f"{info.package} {info.version}".strip(), "dim")))
    if info.ref:
        console.print(Text(f"from {info.ref}", style="dim"))
    if info.error:
        console.print(Text(f"✗ {info.error}", style="red"))
        return
    if info.signature:
        console.print(Text(f"signature: {info.name}{info.signature}"))
    if info.arguments:
        table = Table(box=None, padding=(0, 1), show_header=True, header_style="bold", title_justify="left")
        for column in ("argument", "type", "required", "default"):
            table.add_column(column)
        for a in info.arguments:
            table.add_row(a["name"], a["type"], "yes" if a["required"] else "",
                          "" if a["required"] else repr(a["default"]))
        console.print(table)
    for key, value in info.spec.items():
        if value not in (None, [], ()):
            shown = json.dumps(value) if isinstance(value, (dict, list)) else str(value).lower()
            console.print(Text.assemble((f"{key}: ", "bold"), shown))
    if info.full_doc:
        console.print()
        console.print(Text(info.full_doc))


def event_line(ev: dict[str, Any]) -> str:
    """One stored event as a line: ``seq time topic task data``."""
    stamp = datetime.fromtimestamp(ev["ts"]).strftime("%H:%M:%S.%f")[:-3]
    data = json.dumps(ev["data"], ensure_ascii=False, default=str) if ev["data"] else ""
    return f"{ev['seq']:>6} {stamp} {ev['topic']:<22} {ev['task'] or '-'} {data}".rstrip()


def print_failed_logs(tasks: list[TaskRow], logs: list[dict[str, Any]], console: Console) -> None:
    """The last log lines of each failed task (what ``runs logs RUN TASK`` prints in full)."""
    for t in tasks:
        if t.status != "failed":
            continue
        lines = [line for line in logs if line["task"] == t.task_id]
        if not lines:
            continue
        shown_lines = lines[-FAILED_LOG_LINES:]
        more = f" (last {len(shown_lines)} of {len(lines)})" if len(lines) > len(shown_lines) else ""
        console.print(Text(f"log of {t.task_id}{more}", style="bold"))
        for line in shown_lines:
            style = "red" if line["level"] >= 40 else "yellow" if line["level"] >= 30 else ""
            console.print(Text("  " + log_line(line), style=style), soft_wrap=True)


def print_dead_letters(letters: list[DeadLetter], console: Console) -> None:
    """A table of dead letters, newest first."""
    if not letters:
        console.print("no dead letters")
        return
    table = Table(header_style="bold")
    for col in ("id", "kind", "run", "task / topic", "error", "replayed"):
        table.add_column(col, overflow="fold", no_wrap=col in ("id", "kind"))
    for d in letters:
        table.add_row(str(d.id), d.kind, d.run_id or "", d.task_id if d.kind == "task" else f"{d.topic} ({d.task_id})",
                      Text(error_text(d.error_class, d.error, width=80), style="red"), d.replay_status or "")
    console.print(table)


def print_dead_letter(d: DeadLetter, console: Console) -> None:
    """One dead letter in full."""
    console.print(Text(f"dead letter {d.id}: {d.kind} {d.task_id or ''} in run {d.run_id}", style="bold"))
    console.print(f"  when: {datetime.fromtimestamp(d.created_at):%Y-%m-%d %H:%M:%S}", highlight=False)
    if d.topic:
        console.print(f"  topic: {d.topic}", highlight=False, markup=False)
    console.print(Text(f"  error: {error_text(d.error_class, d.error, lines=20, width=500)}", style="red"),
                  soft_wrap=True)
    console.print("  inputs:", highlight=False)
    console.print(json.dumps(d.inputs, indent=2, ensure_ascii=False, default=str), highlight=False, markup=False,
                  soft_wrap=True)  # a task's inputs, as written: never read as markup
    if d.replayed_at:
        console.print(f"  replayed {datetime.fromtimestamp(d.replayed_at):%Y-%m-%d %H:%M:%S}: {d.replay_status}",
                      highlight=False)


def print_stats(data: dict[str, Any], console: Console) -> None:
    """Per-task metrics over stored runs."""
    runs = data["runs"]
    console.print(Text(f"{sum(runs.values())} runs: " + ", ".join(f"{v} {k}" for k, v in sorted(runs.items())),
                       style="bold"))
    if not data["tasks"]:
        return
    llm = any(t["llm_calls"] for t in data["tasks"])
    usage = any(t.get("cpu_s") is not None for t in data["tasks"])
    for title, rows, keys in (("per plugin", data.get("plugins", []), ("plugin",)),
                              ("per task", data["tasks"], ("pipeline", "task", "plugin"))):
        table = Table(title=title, title_justify="left", header_style="bold")
        cascades = llm and any(abs(t.get("if_last_usd", t["cost_usd"]) - t["cost_usd"]) > 1e-12 for t in rows)
        cols = (*keys, "runs", "ok", "cached", "p50", "p95", "attempts", *(("tokens", "cost") if llm else ()),
                *(("if last model",) if cascades else ()),
                *(("cpu", "peak mem") if usage else ()))
        for col in cols:
            table.add_column(col, justify="left" if col in keys else "right")
        for t in rows:
            rate = "" if t["success_rate"] is None else f"{t['success_rate'] * 100:.0f}%"
            cells = [str(t[k]) for k in keys] + [str(t["count"]), rate, str(t["cached"]), _fmt_duration(t["p50"]),
                                                 _fmt_duration(t["p95"]), str(t["attempts"])]
            if llm:
                tokens = t["prompt_tokens"] + t["completion_tokens"]
                cells += [f"{tokens:,}" if tokens else "", usd(t["cost_usd"]) if t["llm_calls"] else ""]
            if cascades:
                cells.append(usd(t.get("if_last_usd", t["cost_usd"])) if t["llm_calls"] else "")
            if usage:
                cells += [_fmt_duration(t["cpu_s"]), "" if t["max_rss_mb"] is None else f"{t['max_rss_mb']:.1f} MB"]
            table.add_row(*cells)
        console.print(table)


def print_cascades(llm: dict[str, Any], console: Console) -> None:
    """Per task whose cascade changed the bill: the cost paid beside the cost had it asked only its last model."""
    rows = {tid: t for tid, t in llm["tasks"].items() if abs(t["if_last_usd"] - t["cost_usd"]) > 1e-12}
    if not rows:
        return
    for tid, t in rows.items():
        console.print(Text(f"  cascade {tid}: paid {usd(t['cost_usd'])}, {usd(t['if_last_usd'])} "
                           "had every call gone to its last model"), soft_wrap=True)
    saved = llm["if_last_usd"] - llm["cost_usd"]
    verdict = f"saved {usd(saved)}" if saved >= 0 else f"cascading cost {usd(-saved)} more"
    console.print(Text(f"  run: paid {usd(llm['cost_usd'])} of {usd(llm['if_last_usd'])}, {verdict}"), soft_wrap=True)


def print_resources(usage: dict[str, dict[str, Any]], console: Console) -> None:
    """Per task: CPU time and peak memory of the processes it ran."""
    if not usage:
        return
    parts = [f"{tid} cpu {_fmt_duration(u['cpu_s']) or '0ms'}"
             + (f", peak {u['max_rss_mb']:.1f} MB" if u["max_rss_mb"] else "")
             + (f" ({u['processes']} processes)" if u["processes"] > 1 else "") for tid, u in usage.items()]
    console.print("  resources: " + "; ".join(parts), highlight=False, markup=False)


def print_critical_path(path: list[dict[str, Any]], run_duration: float | None, console: Console) -> None:
    """The chain of tasks that set the run's length, with each one's time and wait."""
    if not path:
        return
    total = sum(step["duration"] + step["wait"] for step in path)
    steps = " → ".join(f"{s['task']} {_fmt_duration(s['duration'])}" + (f" (+{_fmt_duration(s['wait'])} wait)"
                                                                        if s["wait"] >= 0.001 else "") for s in path)
    of = f" of {_fmt_duration(run_duration)}" if run_duration else ""
    console.print(f"  critical path: {steps} = {_fmt_duration(total)}{of}", highlight=False, markup=False)


def print_health(data: dict[str, Any], console: Console) -> None:
    """The store's health, one line a check."""
    ok = data["integrity"] == "ok"
    console.print(Text(f"{'✓' if ok else '✗'} store {data['store']}: {data['size'] / 1e6:.1f} MB, "
                       f"WAL {data['wal_size'] / 1e6:.1f} MB, integrity {data['integrity']}",
                       style="green" if ok else "red"))
    breakers = data["open_breakers"]
    console.print(Text(f"{'✗' if breakers else '✓'} open breakers: {', '.join(breakers) or 'none'}",
                       style="red" if breakers else "green"))
    console.print(Text(f"{'!' if data['dead_letters'] else '✓'} dead letters not replayed: {data['dead_letters']}",
                       style="yellow" if data["dead_letters"] else "green"))
    interrupted = data.get("interrupted_runs") or []
    console.print(Text(f"{'!' if interrupted else '✓'} interrupted runs (their process is gone; --resume finishes "
                       f"them): {', '.join(interrupted) or 'none'}", style="yellow" if interrupted else "green"),
                  soft_wrap=True)
    lost = data.get("lost_rows") or {}
    console.print(Text(f"{'✗' if lost else '✓'} runs with rows the store lost: "
                       + ("; ".join(f"{run} ({why})" for run, why in lost.items()) or "none"),
                       style="red" if lost else "green"), soft_wrap=True)
    console.print(f"  runs in the last 24 h: {data['runs_24h']}, failed: {data['failed_runs_24h']} "
                  f"({data['error_rate_24h'] * 100:.0f}%)", highlight=False)


def print_permissions(rows: list[dict[str, Any]], console: Console) -> None:
    """``goatclaw plan --permissions``: per task, what it needs, what it may do and where that was said."""
    for row in rows:
        needs = ", ".join(row["needs"]) or "nothing"
        head = Text(f"{row['task']}", style="bold")
        head.append(f"  uses {row['uses']}, needs {needs}", style="")
        if row["untrusted_output"]:
            head.append("  (output untrusted)", style="yellow")
        if row["trust"]:
            head.append(f"  trusts {', '.join(row['trust'])}", style="cyan")
        console.print(head, soft_wrap=True)
        for name, info in row["granted"].items():
            v = info["value"]
            shown = "all" if v is True else "none" if v is False or v == [] else ", ".join(v)
            console.print(Text(f"    {name:<12} {shown:<40} {info['from']}", style="dim" if shown == "none" else ""),
                          soft_wrap=True)
        for message in row["refused_flows"]:
            console.print(Text(f"    ✗ {message}", style="red"), soft_wrap=True)
