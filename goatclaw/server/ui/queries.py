"""What the dashboard shows, read from the store: plain data, the same for a page and its ``.json`` twin.

Every function takes an open :class:`goatclaw.store.Store` and returns JSON-ready dicts and
lists. Nothing here writes, and nothing reaches into the engine: runs, tasks, attempts and
events are read through the store's read methods or plain indexed ``SELECT`` s over its tables
(the same way ``goatclaw runs``, ``stats`` and ``health`` read them). The queries a page
makes are bounded by its paging, so a page stays fast at 10,000 runs (see
``benchmarks/ui_pages.py``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from goatclaw.store import RunRow, Store

__all__ = ["RunFilter", "approvals", "breakers", "costs", "dead_letters", "run_detail", "runs_page"]

#: Run statuses a filter may name.
STATUSES = ("running", "waiting", "succeeded", "failed", "cancelled", "blocked")
#: Event topics shown on the run page's event list (the rest are in the run's .json twin).
_LLM = "llm.call"


@dataclass(frozen=True)
class RunFilter:
    """The runs list's filters: status, pipeline, a search text, the page (from 1) and its size."""

    status: str | None = None
    pipeline: str | None = None
    q: str | None = None
    page: int = 1
    size: int = 50

    @classmethod
    def of(cls, params: Mapping[str, str]) -> RunFilter:
        """The filter a query string asks for; unknown or malformed values are ignored, sizes bounded."""
        status = params.get("status") or None
        return cls(status=status if status in STATUSES else None, pipeline=params.get("pipeline") or None,
                   q=(params.get("q") or "").strip()[:200] or None, page=_int(params.get("page"), 1, 1, 10**6),
                   size=_int(params.get("size"), 50, 1, 500))

    def where(self) -> tuple[str, list[Any]]:
        """The ``WHERE`` clause and its arguments.

        Status and pipeline go through indexes; ``q`` searches ids, pipeline names, the run's
        error and its tasks' errors.
        """
        clauses, args = ["1 = 1"], []
        if self.status:
            clauses.append("status = ?")
            args.append(self.status)
        if self.pipeline:
            clauses.append("pipeline = ?")
            args.append(self.pipeline)
        if self.q:
            like = "%" + self.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            clauses.append("(id LIKE ? ESCAPE '\\' OR pipeline LIKE ? ESCAPE '\\' OR error LIKE ? ESCAPE '\\' OR "
                           "EXISTS (SELECT 1 FROM tasks t WHERE t.run_id = runs.id AND t.error LIKE ? ESCAPE '\\'))")
            args += [like, like, like, like]
        return " AND ".join(clauses), args

    def query(self, **change: Any) -> str:
        """The filter as a query string, with ``change`` applied (for links to other pages)."""
        from urllib.parse import urlencode

        values = {"status": self.status, "pipeline": self.pipeline, "q": self.q, "page": self.page,
                  "size": self.size if self.size != 50 else None, **change}
        return urlencode({k: v for k, v in values.items() if v not in (None, "", 1) or (k == "page" and v != 1)})


def _int(text: str | None, default: int, low: int, high: int) -> int:
    try:
        return max(low, min(high, int(text))) if text else default
    except ValueError:
        return default


def run_summary(row: RunRow, cost: float | None = None, trigger: str | None = None) -> dict[str, Any]:
    """One run as a list row: id, pipeline, status, trigger, start, duration, cost, counts, error."""
    now = time.time()
    status = "interrupted" if row.interrupted else row.status
    return {"id": row.id, "pipeline": row.pipeline, "status": status, "trigger": trigger,
            "started_at": row.started_at, "finished_at": row.finished_at,
            "duration": row.duration if row.finished_at is not None else now - row.started_at,
            "cost_usd": cost, "counts": row.summary.get("counts") or {}, "error": row.error, "file": row.file}


def runs_page(db: Store, f: RunFilter) -> dict[str, Any]:
    """One page of runs, newest first, with the total that matches and the pipelines to filter by."""
    where, args = f.where()
    if f.q:  # a search scans the table once (in its order: faster than the start index's lookups), sorts here
        found_ids = db.db.execute(f"SELECT id, started_at FROM runs NOT INDEXED WHERE {where}", args).fetchall()
        ids = [i for i, _ in sorted(found_ids, key=lambda r: r[1], reverse=True)]
        total, chosen = len(ids), ids[(f.page - 1) * f.size: f.page * f.size]
        found = {r[0]: _row(r) for r in db.db.execute(f"SELECT * FROM runs WHERE id IN ({_in(chosen)})", chosen)}
        rows = [found[i] for i in chosen if i in found]
    else:
        total = db.db.execute(f"SELECT COUNT(*) FROM runs WHERE {where}", args).fetchone()[0]
        rows = [_row(r) for r in db.db.execute(
            f"SELECT * FROM runs WHERE {where} ORDER BY started_at DESC LIMIT ? OFFSET ?",
            [*args, f.size, (f.page - 1) * f.size])]
    ids = [r.id for r in rows]
    cost, trigger = _costs_of(db, ids), _triggers_of(db, ids)
    pipelines = [p for (p,) in db.db.execute("SELECT DISTINCT pipeline FROM runs ORDER BY pipeline LIMIT 500")]
    return {"runs": [run_summary(r, cost.get(r.id, 0.0), trigger.get(r.id)) for r in rows], "total": total,
            "page": f.page, "pages": max(1, -(-total // f.size)), "size": f.size,
            "filter": {"status": f.status, "pipeline": f.pipeline, "q": f.q}, "pipelines": pipelines,
            "statuses": list(STATUSES)}


def _row(r: Sequence[Any]) -> RunRow:
    from goatclaw.store import _run_row

    return _run_row(r)


def _in(ids: Sequence[str]) -> str:
    return ",".join("?" * len(ids))


def _costs_of(db: Store, ids: Sequence[str]) -> dict[str, float]:
    """Dollars of each run's LLM calls (the partial index ``events_llm_calls`` keeps this off other events)."""
    if not ids:
        return {}
    rows = db.db.execute(f"SELECT run_id, COALESCE(SUM(json_extract(data, '$.cost_usd')), 0) FROM events "
                         f"WHERE topic = '{_LLM}' AND run_id IN ({_in(ids)}) GROUP BY run_id", list(ids))
    return {r: float(c) for r, c in rows}


def _triggers_of(db: Store, ids: Sequence[str]) -> dict[str, str]:
    """What started each run: the ``trigger`` its ``run.started`` event names, ``pipeline tool`` for a child run.

    Runs recorded before a trigger was stored name none: shown as unknown, never guessed.
    """
    if not ids:
        return {}
    out: dict[str, str] = {}
    for run_id, topic, trigger in db.db.execute(
            f"SELECT run_id, topic, json_extract(data, '$.trigger') FROM events WHERE run_id IN ({_in(ids)}) "
            f"AND seq <= 2 AND topic IN ('run.started', 'run.parent')", list(ids)):
        if topic == "run.parent":
            out[run_id] = "pipeline tool"
        elif trigger and run_id not in out:
            out[run_id] = str(trigger)
    return out


# -- one run ------------------------------------------------------------------------------


def run_detail(db: Store, row: RunRow, *, plan: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything the run page shows: tasks (with attempts, LLM calls, tool calls, logs), the graph, the timeline.

    ``plan`` is the pipeline's plan data (:func:`goatclaw.graph.plan_data`) when its file could
    be loaded: it gives the edges and the tasks that have not started yet.
    """
    from goatclaw.history import llm_costs

    tasks = db.tasks(row.id)
    attempts = db.attempts(row.id)
    events = db.events(row.id)
    letters = {d.task_id: d for d in db.dead_letters(run_id=row.id, limit=10_000) if d.task_id}
    by_task: dict[str, dict[str, Any]] = {}
    started = next((e for e in events if e["topic"] in ("run.started", "run.resumed")), None)
    planned = list((plan or {}).get("tasks") or (started or {}).get("data", {}).get("tasks") or [])
    for tid in planned:
        by_task[tid] = _blank(tid)
    for t in tasks:
        entry = by_task.setdefault(t.task_id, _blank(t.task_id))
        entry.update(status=t.status, attempts=t.attempts, started_at=t.started_at, finished_at=t.finished_at,
                     output=t.output, error=t.error, error_class=t.error_class, plugin=t.plugin)
    for a in attempts:
        by_task.setdefault(a["task_id"], _blank(a["task_id"]))["attempt_rows"].append(a)
    _add_events(by_task, events)
    for tid, letter in letters.items():
        if tid in by_task:
            by_task[tid]["inputs"] = letter.inputs
            by_task[tid]["dead_letter"] = letter.id
    for tid, spec in ((plan or {}).get("tasks") or {}).items():
        if tid in by_task:
            by_task[tid].update(uses=spec.get("uses"), needs=list(spec.get("needs") or []))
            by_task[tid]["plugin"] = by_task[tid]["plugin"] or spec.get("uses")
    approvals = db.approvals(row.id, waiting=False)
    for a in approvals:
        if a["task_id"] in by_task and a["decision"] is None:
            by_task[a["task_id"]]["status"] = "waiting"
    return {"run": {**run_summary(row, llm_costs(events)["cost_usd"], _triggers_of(db, [row.id]).get(row.id)),
                    "vars": row.vars, "digest": row.digest, "critical_path": row.summary.get("critical_path") or []},
            "tasks": list(by_task.values()), "llm": llm_costs(events), "approvals": approvals,
            "last_seq": events[-1]["seq"] if events else 0,
            "incidents": [e for e in events if e["topic"].startswith("breaker.") or e["topic"] in
                          ("task.fallback", "task.fix", "task.escalate", "llm.fallback", "llm.downgrade")]}


def _blank(tid: str) -> dict[str, Any]:
    return {"id": tid, "status": "pending", "attempts": 0, "started_at": None, "finished_at": None, "output": None,
            "error": None, "error_class": None, "plugin": None, "uses": None, "needs": [], "attempt_rows": [],
            "llm_calls": [], "tool_calls": [], "retries": [], "inputs": None, "dead_letter": None}


def _add_events(by_task: dict[str, dict[str, Any]], events: Sequence[Mapping[str, Any]]) -> None:
    """LLM calls (with the fallbacks before each), tool calls (the agent's trajectory) and retries, per task."""
    hops: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        tid = e.get("task")
        if not tid or tid not in by_task:
            continue
        d, topic, entry = e.get("data") or {}, e["topic"], by_task[tid]
        if topic == "task.started" and entry["status"] == "pending":  # started, not finished: no task row yet
            entry.update(status="running", started_at=e["ts"])
        elif topic == "llm.fallback":
            hops.setdefault(tid, []).append({"model": d.get("model"), "to": d.get("to"),
                                             "error_class": d.get("error_class")})
        elif topic == _LLM:
            usage = d.get("usage") or {}
            entry["llm_calls"].append({"ts": e["ts"], "model": d.get("model"), "source": d.get("source"),
                                       "prompt_tokens": usage.get("prompt_tokens"),
                                       "completion_tokens": usage.get("completion_tokens"),
                                       "cost_usd": d.get("cost_usd"), "latency_ms": d.get("latency_ms"),
                                       "fallbacks": hops.pop(tid, [])})
        elif topic == "tool.started":
            entry["tool_calls"].append({"ts": e["ts"], "tool": d.get("tool") or d.get("name"),
                                        "arguments": d.get("arguments"), "status": "running", "duration": None,
                                        "error": None})
        elif topic in ("tool.succeeded", "tool.failed", "tool.refused"):
            call = next((c for c in reversed(entry["tool_calls"]) if c["status"] == "running"
                         and c["tool"] == (d.get("tool") or d.get("name"))), None)
            if call is None:
                call = {"ts": e["ts"], "tool": d.get("tool") or d.get("name"), "arguments": d.get("arguments"),
                        "duration": None, "error": None}
                entry["tool_calls"].append(call)
            call.update(status=topic.split(".")[1], duration=d.get("duration"),
                        error=d.get("error") or d.get("reason") or d.get("error_class"))
        elif topic == "task.retrying":
            entry["retries"].append({"ts": e["ts"], "delay": d.get("delay"), "error_class": d.get("error_class")})


def timeline(detail: Mapping[str, Any], *, width: float = 1000.0, row: float = 22.0,
             max_rows: int = 400) -> dict[str, Any]:
    """The Gantt chart's geometry: one row per task (at most ``max_rows``), a bar per attempt, its status."""
    run = detail["run"]
    start = run["started_at"]
    tasks = [t for t in detail["tasks"] if t["started_at"] is not None]
    tasks.sort(key=lambda t: t["started_at"])
    end = max([run["finished_at"] or time.time(), *[t["finished_at"] or 0 for t in tasks]])
    span = max(end - start, 1e-3)
    scale = width / span
    rows = []
    for i, t in enumerate(tasks[:max_rows]):
        bars = []
        attempts = t["attempt_rows"] or [{"attempt": 1, "status": t["status"], "started_at": t["started_at"],
                                          "finished_at": t["finished_at"], "item": 0}]
        for a in attempts:
            s = a["started_at"] if a["started_at"] is not None else t["started_at"]
            f = a["finished_at"] if a["finished_at"] is not None else end
            bars.append({"x": round((s - start) * scale, 2), "w": round(max((f - s) * scale, 1.5), 2),
                         "status": a["status"], "attempt": a["attempt"], "item": a.get("item"),
                         "seconds": round(f - s, 3)})
        rows.append({"task": t["id"], "y": round(i * row, 2), "bars": bars, "status": t["status"]})
    ticks = [{"x": round(width * k / 5, 2), "label": _seconds(span * k / 5)} for k in range(6)]
    return {"rows": rows, "height": round(len(rows) * row, 2), "width": width, "row": row, "ticks": ticks,
            "hidden": max(0, len(tasks) - max_rows), "span": span}


def _seconds(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.0f}ms"
    if s < 120:
        return f"{s:.1f}s"
    return f"{s / 60:.1f}m"


# -- the rest of the store ------------------------------------------------------------------


def approvals(db: Store, *, waiting: bool = True, limit: int = 200) -> list[dict[str, Any]]:
    """Approval requests (undecided ones unless ``waiting=False``), each with its run's pipeline."""
    rows = db.approvals(waiting=waiting)[-limit:]
    pipelines = {r.id: r.pipeline for r in (db.run(a["run_id"]) for a in rows) if r is not None}
    return [{**a, "pipeline": pipelines.get(a["run_id"])} for a in rows]


def dead_letters(db: Store, *, limit: int = 100) -> list[dict[str, Any]]:
    """The newest dead letters as dicts."""
    return [dict(d.__dict__) for d in db.dead_letters(limit=limit)]


def breakers(db: Store) -> list[dict[str, Any]]:
    """Every breaker with its state and how many failures it holds."""
    return [{**b, "failure_count": len(b["failures"] or [])} for b in db.breakers()]


def costs(db: Store, *, days: int = 30, now: float | None = None) -> dict[str, Any]:
    """LLM dollars and tokens per day (the last ``days``), per model and per pipeline, from ``llm.call`` events.

    The window's calls come off the covering partial index ``events_llm_by_ts`` in one range
    scan and are added up here: parsing each event's JSON once with orjson is several times
    faster than four ``json_extract`` calls a row in SQL (250 ms at 10,000 calls). Days are
    local days (``time.localtime``, so a DST change is handled).
    """
    at = time.time() if now is None else now
    since = at - days * 86400
    pipelines: dict[str, str] = dict(db.db.execute("SELECT id, pipeline FROM runs"))
    cells: dict[tuple[int, str, str], list[float]] = {}  # (hour, model, pipeline) -> [dollars, calls, tokens]
    for ts, run_id, text in db.db.execute("SELECT ts, run_id, data FROM events WHERE topic = 'llm.call' AND ts >= ?",
                                          (since,)):
        data = orjson.loads(text) if text else {}
        usage = data.get("usage") or {}
        key = (int(ts // 3600), data.get("model") or "?", pipelines.get(run_id, "?"))
        cell = cells.get(key)
        if cell is None:
            cell = cells[key] = [0.0, 0, 0]
        cell[0] += data.get("cost_usd") or 0.0
        cell[1] += 1
        cell[2] += (usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0)
    per: dict[str, dict[str, dict[str, Any]]] = {"day": {}, "model": {}, "pipeline": {}}
    for (hour, model, pipeline), (cost, calls, tokens) in cells.items():
        day = time.strftime("%Y-%m-%d", time.localtime(hour * 3600))
        for key, value in (("day", day), ("model", model), ("pipeline", pipeline)):
            acc = per[key].setdefault(value, {key: value, "cost_usd": 0.0, "calls": 0, "tokens": 0})
            acc["cost_usd"] += float(cost)
            acc["calls"] += int(calls)
            acc["tokens"] += int(tokens)
    by_cost = lambda key: sorted(per[key].values(), key=lambda r: -r["cost_usd"])  # noqa: E731
    per_day = sorted(per["day"].values(), key=lambda r: r["day"])
    return {"days": days, "per_day": _fill_days(per_day, days, at), "per_model": by_cost("model"),
            "per_pipeline": by_cost("pipeline"), "total_usd": sum(d["cost_usd"] for d in per_day)}


def _fill_days(rows: list[dict[str, Any]], days: int, now: float | None) -> list[dict[str, Any]]:
    """Every day of the window, zero where nothing was spent (a chart without gaps)."""
    have = {r["day"]: r for r in rows}
    today = datetime.fromtimestamp(time.time() if now is None else now)
    out = []
    for k in range(days - 1, -1, -1):
        day = datetime.fromtimestamp(today.timestamp() - k * 86400).strftime("%Y-%m-%d")
        out.append(have.get(day, {"day": day, "cost_usd": 0.0, "calls": 0, "tokens": 0}))
    return out


def bar_chart(rows: Sequence[Mapping[str, Any]], label: str, value: str = "cost_usd", *, width: float = 720.0,
              height: float = 180.0) -> dict[str, Any]:
    """A bar chart's geometry (drawn as SVG by the page): one bar per row, scaled to the largest value."""
    top = max([float(r[value]) for r in rows] or [0.0]) or 1.0
    step = width / max(len(rows), 1)
    bars = [{"x": round(i * step + step * 0.1, 2), "w": round(step * 0.8, 2),
             "h": round(float(r[value]) / top * height, 2), "label": str(r[label]), "value": float(r[value])}
            for i, r in enumerate(rows)]
    for b in bars:
        b["y"] = round(height - b["h"], 2)
    return {"bars": bars, "width": width, "height": height, "top": top}
