"""Stored runs after the fact: their event log, replaying it, dead letters, stats, health, pruning.

Everything here reads (or trims) the SQLite store; nothing runs a pipeline except
:func:`replay_dead_letter`, which re-runs one failed task through :func:`goatclaw.arun`
with the outputs of its needs taken from its original run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from goatclaw.engine.state import RunResult
from goatclaw.errors import GoatclawError
from goatclaw.events import Bus, Event
from goatclaw.store import DeadLetter, RunRow, Store

__all__ = ["events", "health", "llm_costs", "logs", "prune", "replay", "replay_dead_letter", "resources", "stats"]


def _run(db: Store, ref: str) -> RunRow:
    row = db.run(ref)
    if row is None:
        raise GoatclawError(f"no run '{ref}' in {db.path}")
    return row


def events(store: str | os.PathLike[str], ref: str = "last", *, follow: bool = False, poll: float = 0.2,
           sleep: Callable[[float], Any] = time.sleep) -> Iterator[dict[str, Any]]:
    """A run's stored events in order; with ``follow``, keep reading until the run has ended.

    Another process may be writing the run: WAL lets this reader see each committed batch.
    A run whose process is gone (interrupted) has ended too: nothing more will come.
    """
    with Store.open(store) as db:
        run_id = _run(db, ref).id
        after = 0
        while True:
            batch = db.events(run_id, after=after)
            for ev in batch:
                after = ev["seq"]
                yield ev
            if not follow:
                return
            row = db.run(run_id)
            if not batch and (row is None or row.status != "running" or row.interrupted):
                return
            if not batch:
                sleep(poll)


def logs(store: str | os.PathLike[str], ref: str = "last", task: str | None = None, *, follow: bool = False,
         poll: float = 0.2, sleep: Callable[[float], Any] = time.sleep) -> Iterator[dict[str, Any]]:
    """A run's task log lines (``task``'s alone if given), in the order logged; ``follow`` as in :func:`events`.

    Each line: ``id``, ``task``, ``item``, ``attempt``, ``ts``, ``level`` (a :mod:`logging`
    number), ``source`` (the logger's name, or ``stderr``) and ``message`` (secrets masked).
    """
    with Store.open(store) as db:
        run_id = _run(db, ref).id
        after = 0
        while True:
            row = db.run(run_id)  # read before the lines: a run seen ended has committed all of its lines
            ended = row is None or row.status != "running" or row.interrupted
            batch = db.logs(run_id, task, after=after)
            for line in batch:
                after = line["id"]
                yield line
            if not follow or (ended and not batch):
                return
            if not batch:
                sleep(poll)


def replay(store: str | os.PathLike[str], ref: str, bus: Bus, *, speed: float | None = None,
           sleep: Callable[[float], Any] = time.sleep) -> int:
    """Publish a stored run's events on ``bus`` again (nothing runs); how many.

    ``speed`` replays in real time scaled by it (``1``: as it happened, ``10``: ten times
    faster); ``None`` replays at once.
    """
    with Store.open(store) as db:
        run_id = _run(db, ref).id
    count = 0
    last_ts: float | None = None
    for ev in events(store, run_id):
        if speed and last_ts is not None and ev["ts"] > last_ts:
            sleep((ev["ts"] - last_ts) / speed)
        last_ts = ev["ts"]
        bus.publish(Event(ev["topic"], run_id, ev["seq"], ev["ts"], ev["task"], ev["data"]))
        count += 1
    return count


async def replay_dead_letter(store: str | os.PathLike[str], letter_id: int, *, force: bool = False,
                             bus: Bus | None = None, registry: Any = None) -> RunResult:
    """Re-run the task of a dead letter in its original run's context; the new run's result.

    The pipeline file of the original run is loaded again (refused if it changed, unless
    ``force``); the task runs with the original run's variables, and every task it needs
    counts as done with its stored output. The dead letter records how the replay went.
    """
    from goatclaw.api import arun, load

    with Store.open(store) as db:
        letter = _letter(db, letter_id)
        run = _run(db, str(letter.run_id))
    if letter.kind != "task" or not letter.task_id:
        raise GoatclawError(f"dead letter {letter_id} is a failed event subscriber, not a task: nothing to re-run")
    if not run.file or not Path(run.file).exists():
        raise GoatclawError(f"the pipeline file of run {run.id} ({run.file}) is gone: cannot replay")
    pipeline = load(run.file, registry=registry)
    if pipeline.digest != run.digest and not force:
        raise GoatclawError(f"{run.file} changed since run {run.id}; pass --force to replay with the new file")
    if letter.task_id not in pipeline.tasks:
        raise GoatclawError(f"task '{letter.task_id}' is no longer in {run.file}")
    result = await arun(pipeline, vars=run.vars, only=[letter.task_id], store=store, seed_from=run.id, bus=bus,
                        registry=registry, cache=False)
    with Store.open(store) as db:
        db.mark_replayed(letter_id, f"{result.tasks[letter.task_id].status.value} in run {result.run_id}")
    return result


def _letter(db: Store, letter_id: int) -> DeadLetter:
    letter = db.dead_letter(letter_id)
    if letter is None:
        raise GoatclawError(f"no dead letter {letter_id} in {db.path}")
    return letter


def llm_costs(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The dollars and tokens of a run's ``llm.call`` events: in total and per task.

    ``events`` as :meth:`Store.events` returns them. ``{"calls": 0, ...}`` for a run that
    called no model; answers from the cache or a cassette count as calls costing 0.
    ``if_last_usd`` is what it would have cost had every cascade asked only its last model
    (the kept answer at the last model's prices, the passed-over calls not made; see
    ``task.cascade``); without cascades it is ``cost_usd``.
    """
    total = {"calls": 0, "cost_usd": 0.0, "if_last_usd": 0.0, "prompt_tokens": 0, "completion_tokens": 0,
             "downgrades": 0}
    per_task: dict[str, dict[str, Any]] = {}
    for e in events:
        if e["topic"] == "llm.downgrade":
            total["downgrades"] += 1
        if e["topic"] not in ("llm.call", "task.cascade"):
            continue
        data = e.get("data") or {}
        usage = data.get("usage") or {}
        row = per_task.setdefault(str(e.get("task") or ""), {"calls": 0, "cost_usd": 0.0, "if_last_usd": 0.0,
                                                             "prompt_tokens": 0, "completion_tokens": 0})
        for acc in (total, row):
            if e["topic"] == "task.cascade":
                acc["if_last_usd"] += float(data.get("if_last_usd") or 0.0) - float(data.get("paid_usd") or 0.0)
                continue
            acc["calls"] += 1
            acc["cost_usd"] += float(data.get("cost_usd") or 0.0)
            acc["if_last_usd"] += float(data.get("cost_usd") or 0.0)
            acc["prompt_tokens"] += int(usage.get("prompt_tokens") or 0)
            acc["completion_tokens"] += int(usage.get("completion_tokens") or 0)
    return {**total, "tasks": per_task}


def stats(store: str | os.PathLike[str], *, since: float | None = None) -> dict[str, Any]:
    """Per task and per plugin: count, success rate, p50/p95 duration, attempts, LLM tokens and cost.

    Over runs started ``since`` seconds ago (all runs when ``None``). Tokens and dollars
    come from the runs' ``llm.call`` events; a task stored before plugins were recorded
    counts under plugin ``?``.
    """
    cutoff = 0.0 if since is None else time.time() - since
    with Store.open(store) as db:
        rows = db.db.execute(
            "SELECT t.task_id, r.pipeline, t.status, t.attempts, t.started_at, t.finished_at, t.plugin FROM tasks t "
            "JOIN runs r ON r.id = t.run_id WHERE r.started_at >= ?", (cutoff,)).fetchall()
        run_rows = db.db.execute("SELECT status, COUNT(*) FROM runs WHERE started_at >= ? GROUP BY status",
                                 (cutoff,)).fetchall()
        llm_rows = db.db.execute(
            "SELECT r.pipeline, e.task_id, COUNT(*), "
            "COALESCE(SUM(json_extract(e.data, '$.usage.prompt_tokens')), 0), "
            "COALESCE(SUM(json_extract(e.data, '$.usage.completion_tokens')), 0), "
            "COALESCE(SUM(json_extract(e.data, '$.cost_usd')), 0.0) "
            "FROM events e JOIN runs r ON r.id = e.run_id WHERE e.topic = 'llm.call' AND r.started_at >= ? "
            "GROUP BY r.pipeline, e.task_id", (cutoff,)).fetchall()
        cascade_rows = db.db.execute(  # what cascades saved: the kept answer at the last model's prices - what was paid
            "SELECT r.pipeline, e.task_id, COALESCE(SUM(json_extract(e.data, '$.if_last_usd') "
            "- json_extract(e.data, '$.paid_usd')), 0.0) "
            "FROM events e JOIN runs r ON r.id = e.run_id WHERE e.topic = 'task.cascade' AND r.started_at >= ? "
            "GROUP BY r.pipeline, e.task_id", (cutoff,)).fetchall()
        usage_rows = db.db.execute(
            "SELECT r.pipeline, e.task_id, "
            "SUM(json_extract(e.data, '$.cpu_user_s') + json_extract(e.data, '$.cpu_system_s')), "
            "MAX(json_extract(e.data, '$.max_rss_mb')) "
            "FROM events e JOIN runs r ON r.id = e.run_id WHERE e.topic = 'task.resources' AND r.started_at >= ? "
            "GROUP BY r.pipeline, e.task_id", (cutoff,)).fetchall()
    shift = {(p, t): d for p, t, d in cascade_rows}
    llm = {(p, t): (n, pt, ct, cost, cost + shift.get((p, t), 0.0)) for p, t, n, pt, ct, cost in llm_rows}
    usage = {(p, t): (cpu, rss) for p, t, cpu, rss in usage_rows}
    by_task: dict[tuple[str, str], list[tuple[str, int, float | None]]] = {}
    by_plugin: dict[str, list[tuple[str, int, float | None]]] = {}
    plugin_of: dict[tuple[str, str], str] = {}
    for tid, pipeline, status, attempts, started, finished, plugin in rows:
        duration = None if started is None or finished is None else finished - started
        item = (status, attempts, duration)
        by_task.setdefault((pipeline, tid), []).append(item)
        by_plugin.setdefault(plugin or "?", []).append(item)
        plugin_of[(pipeline, tid)] = plugin or plugin_of.get((pipeline, tid), "?")
    tasks = [{"pipeline": pipeline, "task": tid, "plugin": plugin_of[(pipeline, tid)], **_summary(items),
              **_llm_totals([llm.get((pipeline, tid))]), **_usage_totals([usage.get((pipeline, tid))])}
             for (pipeline, tid), items in sorted(by_task.items())]
    plugins = [{"plugin": plugin, **_summary(items),
                **_llm_totals([llm.get(key) for key, p in plugin_of.items() if p == plugin]),
                **_usage_totals([usage.get(key) for key, p in plugin_of.items() if p == plugin])}
               for plugin, items in sorted(by_plugin.items())]
    return {"since": since, "runs": dict(run_rows), "tasks": tasks, "plugins": plugins}


def _summary(items: list[tuple[str, int, float | None]]) -> dict[str, Any]:
    done = [s for s, _, _ in items if s in ("succeeded", "cached", "failed")]
    ok = sum(1 for s in done if s != "failed")
    durations = sorted(d for s, _, d in items if d is not None and s in ("succeeded", "failed"))
    return {"count": len(items), "success_rate": None if not done else ok / len(done),
            "cached": sum(1 for s, _, _ in items if s == "cached"),
            "p50": _quantile(durations, 0.5), "p95": _quantile(durations, 0.95),
            "attempts": sum(a for _, a, _ in items)}


def _usage_totals(found: list[tuple[float | None, float | None] | None]) -> dict[str, Any]:
    """CPU seconds (summed) and peak memory (the largest) of the subprocesses tasks ran."""
    rows = [f for f in found if f]
    cpu = [r[0] for r in rows if r[0] is not None]
    rss = [r[1] for r in rows if r[1] is not None]
    return {"cpu_s": round(sum(cpu), 6) if cpu else None, "max_rss_mb": max(rss) if rss else None}


def resources(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per task of a run, from its ``task.resources`` events: CPU seconds, peak memory (MB) and processes."""
    out: dict[str, dict[str, Any]] = {}
    for e in events:
        if e["topic"] != "task.resources":
            continue
        d = e.get("data") or {}
        row = out.setdefault(str(e.get("task") or ""), {"cpu_s": 0.0, "max_rss_mb": 0.0, "processes": 0})
        row["cpu_s"] = round(row["cpu_s"] + float(d.get("cpu_user_s") or 0) + float(d.get("cpu_system_s") or 0), 6)
        row["max_rss_mb"] = max(row["max_rss_mb"], float(d.get("max_rss_mb") or 0))
        row["processes"] += 1
    return out


def _llm_totals(found: list[tuple[int, int, int, float, float] | None]) -> dict[str, Any]:
    """Calls, tokens, dollars paid and ``if_last_usd`` (every cascade asking only its last model)."""
    rows = [f for f in found if f]
    return {"llm_calls": sum(r[0] for r in rows), "prompt_tokens": int(sum(r[1] for r in rows)),
            "completion_tokens": int(sum(r[2] for r in rows)), "cost_usd": round(sum(r[3] for r in rows), 6),
            "if_last_usd": round(sum(r[4] for r in rows), 6)}


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(q * len(values)))]


def health(store: str | os.PathLike[str]) -> dict[str, Any]:
    """The store's size, integrity and WAL; open breakers, dead letters, interrupted runs, last day's error rate.

    ``lost_rows`` maps each run whose rows could not all be stored (its last commit
    failed for good) to what was lost; while there is one, the store is not ``ok``.
    """
    path = Path(store)
    wal = Path(f"{path}-wal")
    with Store.open(path) as db:
        integrity = db.integrity()
        breakers = [b["key"] for b in db.breakers() if b["state"] != "closed"]
        dead = db.db.execute("SELECT COUNT(*) FROM dead_letters WHERE replayed_at IS NULL").fetchone()[0]
        day = time.time() - 86400
        done, failed = db.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(status = 'failed'), 0) FROM runs WHERE started_at >= ? AND status NOT IN "
            "('running', 'waiting')", (day,)).fetchone()
        interrupted = [r.id for r in db.running() if r.interrupted]
        lost = {run: why for run, why in db.incomplete_runs() if run not in interrupted}
    return {"store": str(path), "size": path.stat().st_size, "wal_size": wal.stat().st_size if wal.exists() else 0,
            "integrity": integrity, "open_breakers": breakers, "dead_letters": dead,
            "runs_24h": done, "failed_runs_24h": failed, "error_rate_24h": failed / done if done else 0.0,
            "interrupted_runs": interrupted, "lost_rows": lost, "ok": integrity == "ok" and not breakers and not lost}


def prune(store: str | os.PathLike[str], *, older_than: float, dry_run: bool = False) -> dict[str, int]:
    """Delete runs (with their tasks, attempts, events and dead letters) started over ``older_than`` seconds ago.

    Runs still running or waiting for an approval are kept; a run left ``running`` by a process that is gone
    (interrupted) goes like a finished one. Cached outputs older than that go too.
    """
    cutoff = time.time() - older_than
    with Store.open(store) as db:
        ids = [r[0] for r in db.db.execute("SELECT id FROM runs WHERE started_at < ? AND status NOT IN "
                                           "('running', 'waiting')", (cutoff,))]  # a waiting run awaits a person
        ids += [r.id for r in db.running() if r.interrupted and r.started_at < cutoff]
        counts = {"runs": len(ids)}
        if dry_run:
            return counts
        with db.transaction() as conn:
            for table, column in (("events", "run_id"), ("task_logs", "run_id"), ("attempts", "run_id"),
                                  ("approvals", "run_id"),
                                  ("tasks", "run_id"), ("dead_letters", "run_id"), ("runs", "id")):
                total = 0
                for start in range(0, len(ids), 500):
                    chunk = ids[start:start + 500]
                    total += conn.execute(f"DELETE FROM {table} WHERE {column} IN ({','.join('?' * len(chunk))})",
                                          chunk).rowcount
                counts[table] = total
            counts["cache"] = conn.execute("DELETE FROM cache WHERE created_at < ?", (cutoff,)).rowcount
    return counts
