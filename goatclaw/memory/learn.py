"""Learning from runs: what is remembered after a run, and how a failure is explained.

After a run (see :func:`remember_run`) goatclaw remembers each failure (task, plugin,
error class and message, inputs digest), each fix (a retry or fallback that made a
failing task pass in the same run, or a later run in which a task that failed passed:
what changed), and the run's summary. A clean run whose pipeline has no unfixed failures
only costs one SQL query: the embedder is not loaded. Declared secrets are masked in
every text and metadata value before anything is embedded or stored.

:func:`explain` answers ``goatclaw why``: a run's failures, each with the most similar
past failures and what fixed them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from goatclaw.errors import GoatclawError
from goatclaw.memory import knowledge
from goatclaw.security.secrets import Redactor
from goatclaw.store import Store, TaskRow

__all__ = ["Explanation", "MemorySettings", "explain", "remember_run", "worth_a_look"]

_FAILED = ("failed",)
_PASSED = ("succeeded", "cached")


@dataclass(frozen=True)
class MemorySettings:
    """``memory:`` in ``goatclaw.yaml``.

    ``runs``: ``None`` (the default) remembers the summary of runs that failed or fixed
    something, ``True`` every run's, ``False`` none. ``similarity_threshold`` is the lowest
    score for a past failure to be recalled.
    """

    enabled: bool = True
    embedder: str = "wordllama"
    max_memories: int | None = None
    similarity_threshold: float = 0.5
    runs: bool | None = None
    failures: bool = True
    fixes: bool = True
    outputs: bool = False
    consolidate_every: int = 20

    @classmethod
    def from_data(cls, data: Mapping[str, Any] | None) -> MemorySettings:
        """Settings from the project file's ``memory:`` mapping (defaults where it says nothing)."""
        data = data if isinstance(data, Mapping) else {}
        remember = data.get("remember") if isinstance(data.get("remember"), Mapping) else {}
        return cls(enabled=bool(data.get("enabled", True)), embedder=str(data.get("embedder", "wordllama")),
                   max_memories=data.get("max_memories"),
                   similarity_threshold=float(data.get("similarity_threshold", 0.5)),
                   runs=remember.get("runs"), failures=bool(remember.get("failures", True)),
                   fixes=bool(remember.get("fixes", True)), outputs=bool(remember.get("outputs", False)),
                   consolidate_every=int(data.get("consolidate_every", 20)))


@dataclass
class _Notes:
    """What a run left to remember, before anything is embedded."""

    failures: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fixes: list[tuple[str, dict[str, Any], int | None]] = field(default_factory=list)  # text, meta, failure id
    outputs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    carried: dict[int, list[str]] = field(default_factory=dict)  # failure memory id -> its origins (later fixes)


def remember_run(store_path: str | os.PathLike[str], run_id: str, *, settings: MemorySettings,
                 plugins: Mapping[str, str] | None = None, secrets: Mapping[str, str] | None = None,
                 paths: Mapping[str, str] | None = None, origins: Mapping[str, Iterable[str]] | None = None) -> int:
    """Remember what run ``run_id`` taught (failures, fixes, its summary); how many memories were written.

    ``plugins`` maps task ids to their plugin, ``paths`` to the file a ``file.read`` task reads,
    ``origins`` to the untrusted tasks whose data its output and error carry (as its templates
    show; what the run found at run time is read from the store): the memories made from a
    task's error or output keep them (a search that finds one is untrusted).

    Reads the run back from the store; opens the vector store (and loads the embedder)
    only when there is something to write.
    """
    if not settings.enabled:
        return 0
    mask = _masker(secrets or {})
    plugins = plugins if plugins is not None else {}  # (not ``or``: that would build a lazy mapping here)
    with Store.open(store_path) as store:
        run = store.run(run_id)
        if run is None or not (settings.runs or settings.outputs or _worth_a_look(store, run.pipeline, run_id)):
            return 0
        tasks = store.tasks(run_id)
        notes = _collect(store, run.pipeline, run_id, tasks, plugins, settings, mask)
        summary_wanted = settings.runs is True or (settings.runs is None and (notes.failures or notes.fixes))
        if not (notes.failures or notes.fixes or notes.outputs or summary_wanted):
            return 0
        carried: dict[str, set[str]] = {tid: set(came) for tid, came in (origins or {}).items()}
        for tid, (came, _) in store.untrusted_tasks(run_id).items():  # what the run found (files, memories read back)
            carried.setdefault(tid, set()).update(came)
        return _write(store, run, tasks, notes, settings, mask, bool(summary_wanted), plugins, paths or {}, carried)


def _worth_a_look(store: Store, pipeline: str, run_id: str) -> bool:
    """Whether the run failed or retried anything, or its pipeline has unfixed failures (no rows loaded)."""
    if store.db.execute("SELECT 1 FROM tasks WHERE run_id = ? AND (status = 'failed' OR attempts > 1) LIMIT 1",
                        (run_id,)).fetchone():
        return True
    return _unfixed(store, pipeline)


def _unfixed(store: Store, pipeline: str) -> bool:
    """Whether memory holds a failure of ``pipeline`` that no later run fixed."""
    return store.db.execute("SELECT 1 FROM memories WHERE kind = 'failure' AND json_extract(metadata, '$.pipeline')"
                            " = ? AND json_extract(metadata, '$.fixed') IS NULL LIMIT 1", (pipeline,)).fetchone() \
        is not None


def worth_a_look(store: Store, result: Any) -> bool:
    """Whether the run whose result is ``result`` may teach memory anything, asked of its own store before it closes.

    True when a task failed or was retried (its result says so: no rows are read) or its
    pipeline has a failure no run fixed yet (one query): what :func:`remember_run` would
    find worth a look. The runner asks it after the run's last commit
    (``RunOptions.last_look``), so that a run with nothing to teach opens nothing again.
    """
    if any(t.status == "failed" or t.attempts > 1 for t in result.tasks.values()):
        return True
    return _unfixed(store, result.pipeline)


def _collect(store: Store, pipeline: str, run_id: str, tasks: Sequence[TaskRow], plugins: Mapping[str, str],
             settings: MemorySettings, mask: Any) -> _Notes:
    notes = _Notes()
    now = time.time()
    base = {"pipeline": pipeline, "run": run_id, "time": now}
    for t in tasks:
        meta = {**base, "task": t.task_id, "plugin": plugins.get(t.task_id), "attempts": t.attempts}
        if t.status in _FAILED and settings.failures:
            notes.failures.append((_failure_text(t.task_id, meta["plugin"], t.error_class, mask(t.error)),
                                   {**meta, "error_class": t.error_class, "inputs": _inputs_digest(store, run_id,
                                                                                                  t.task_id)}))
        elif t.status in _PASSED and t.attempts > 1 and settings.failures:
            _retried(store, run_id, t, meta, notes, settings, mask)
        if t.status in _PASSED and settings.outputs and t.output is not None:
            notes.outputs.append((mask(f"{t.task_id} output: {json.dumps(t.output, default=str)[:2000]}"), meta))
    if settings.fixes:
        _later_fixes(store, pipeline, run_id, tasks, base, notes)
    return notes


def _retried(store: Store, run_id: str, t: TaskRow, meta: dict[str, Any], notes: _Notes,
             settings: MemorySettings, mask: Any) -> None:
    """A task that failed attempts and then passed: the last failure, and the retry that fixed it."""
    failed = [a for a in store.attempts(run_id, t.task_id) if a["status"] == "failed"]
    if not failed:
        return
    last = failed[-1]
    error = mask(last["error"])
    notes.failures.append((_failure_text(t.task_id, meta["plugin"], last["error_class"], error),
                           {**meta, "error_class": last["error_class"], "fixed": "retry"}))
    if settings.fixes:
        how = f"retry: passed on attempt {t.attempts} after {len(failed)} failed attempt(s)"
        notes.fixes.append((_fix_text(t.task_id, meta["plugin"], last["error_class"], error, how),
                            {**meta, "how": how, "failed_run": run_id}, None))


def _later_fixes(store: Store, pipeline: str, run_id: str, tasks: Sequence[TaskRow], base: dict[str, Any],
                 notes: _Notes) -> None:
    """Tasks that pass now whose earlier failure in this pipeline has no fix yet (one SQL query)."""
    passed = {t.task_id: t for t in tasks if t.status in _PASSED}
    if not passed:
        return
    rows = store.db.execute(
        "SELECT id, text, metadata, origins FROM memories WHERE kind = 'failure' "
        "AND json_extract(metadata, '$.pipeline') = ? "
        "AND json_extract(metadata, '$.fixed') IS NULL AND json_extract(metadata, '$.run') != ? ORDER BY id",
        (pipeline, run_id)).fetchall()
    for mid, text, meta_json, origins in rows:
        meta = json.loads(meta_json)
        t = passed.get(meta.get("task"))
        if t is None:
            continue
        notes.carried[int(mid)] = json.loads(origins or "[]")  # the fix quotes the failure
        how = _what_changed(store, meta.get("run"), run_id, t)
        notes.fixes.append((f"{text} -- fixed in a later run by: {how}",
                            {**base, "task": t.task_id, "plugin": meta.get("plugin"), "how": how,
                             "failed_run": meta.get("run"), "error_class": meta.get("error_class")}, int(mid)))


def _what_changed(store: Store, failed_run: str | None, run_id: str, t: TaskRow) -> str:
    before = store.run(failed_run) if failed_run else None
    now = store.run(run_id)
    changes = []
    if before is not None and now is not None:
        if before.digest != now.digest:
            changes.append("the pipeline file changed")
        changed = sorted(k for k in {*before.vars, *now.vars} if before.vars.get(k) != now.vars.get(k))
        if changed:
            changes.append("vars changed (" + ", ".join(changed) + ")")
    if t.attempts > 1:
        changes.append(f"{t.attempts} attempts")
    return "; ".join(changes) or "nothing recorded changed (a transient failure)"


def _write(store: Store, run: Any, tasks: Sequence[TaskRow], notes: _Notes, settings: MemorySettings, mask: Any,
           summary: bool, plugins: Mapping[str, str], paths: Mapping[str, str],
           origins: Mapping[str, Iterable[str]]) -> int:
    from goatclaw.memory.store import MemoryStore  # sqlite-vec only when something is written

    mem = MemoryStore(store, settings.embedder)
    items: list[tuple[str, str, Mapping[str, Any]]] = [(t, "failure", m) for t, m in notes.failures]
    items += [(t, "fix", m) for t, m, _ in notes.fixes] + [(t, "output", m) for t, m in notes.outputs]
    each = [list(origins.get(m["task"], ())) for _, m in notes.failures]
    each += [[*origins.get(m["task"], ()), *notes.carried.get(failure or -1, ())] for _, m, failure in notes.fixes]
    each += [list(origins.get(m["task"], ())) for _, m in notes.outputs]
    if summary:
        items.append((_run_text(run, tasks, notes, mask), "run", {"pipeline": run.pipeline, "run": run.id,
                                                                  "status": run.status, "time": time.time()}))
        each.append([])  # task ids and error classes, and the run's own error (the engine's words)
    written = mem.add_many(items, each=each)
    _link_fixes(store, notes, written[len(notes.failures):len(notes.failures) + len(notes.fixes)])
    models, files = _models_and_files(store, run.id, tasks, plugins, paths)
    with store.transaction() as db:
        knowledge.record(db, knowledge.relations_of(run.pipeline, tasks, plugins, (m for _, m in notes.failures),
                                                    (m for _, m, _ in notes.fixes), models=models, files=files))
    _upkeep(store, mem, settings)
    return len(written)


_SINCE = "runs_since_consolidation"


def _upkeep(store: Store, mem: Any, settings: MemorySettings) -> None:
    """Consolidate every ``consolidate_every`` remembering runs, and whenever ``max_memories`` is exceeded."""
    row = store.db.execute("SELECT value FROM memory_meta WHERE key = ?", (_SINCE,)).fetchone()
    since = (int(row[0]) if row else 0) + 1
    due = settings.consolidate_every > 0 and since >= settings.consolidate_every
    if due or (settings.max_memories is not None and mem.count() > settings.max_memories):
        mem.consolidate(max_memories=settings.max_memories)
        since = 0
    with store.transaction() as db:
        db.execute("INSERT OR REPLACE INTO memory_meta (key, value) VALUES (?, ?)", (_SINCE, str(since)))


def _models_and_files(store: Store, run_id: str, tasks: Sequence[TaskRow], plugins: Mapping[str, str],
                      paths: Mapping[str, str]) -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """The models each task called (its ``llm.call`` events) and the files ``file.*`` tasks touched.

    A ``file.write`` task's path is in its output; a ``file.read`` task's comes from ``paths``
    (the literal ``with.path`` of the pipeline file).
    """
    models: dict[str, set[str]] = {}
    for task_id, model in store.db.execute(
            "SELECT task_id, json_extract(data, '$.model') FROM events WHERE run_id = ? AND topic = 'llm.call'",
            (run_id,)):
        if task_id and model:
            models.setdefault(task_id, set()).add(str(model))
    files = []
    for t in tasks:
        plugin = plugins.get(t.task_id, "")
        if plugin == "file.write" and isinstance(t.output, dict) and isinstance(t.output.get("path"), str):
            files.append((t.task_id, "produced", t.output["path"]))
        elif plugin == "file.read" and t.task_id in paths:
            files.append((t.task_id, "read", paths[t.task_id]))
    return models, files


def _link_fixes(store: Store, notes: _Notes, fixes: Sequence[Any]) -> None:
    """Mark each failure a later run fixed with the fix that did (so it is not fixed twice)."""
    with store.transaction() as db:
        for (_, meta, failure_id), fix in zip(notes.fixes, fixes, strict=True):
            if failure_id is not None:
                db.execute("UPDATE memories SET metadata = json_set(metadata, '$.fixed', ?, '$.fixed_by', ?) "
                           "WHERE id = ?", (meta["run"], fix.id, failure_id))


def _failure_text(task: str, plugin: str | None, error_class: str | None, error: str | None) -> str:
    return f"{error or 'failed'} (task {task}{f' using {plugin}' if plugin else ''}, {error_class or 'error'})"


def _fix_text(task: str, plugin: str | None, error_class: str | None, error: str | None, how: str) -> str:
    return f"{_failure_text(task, plugin, error_class, error)} -- fixed by {how}"


def _run_text(run: Any, tasks: Sequence[TaskRow], notes: _Notes, mask: Any) -> str:
    failed = [f"{t.task_id} ({t.error_class})" for t in tasks if t.status in _FAILED]
    parts = [f"run of pipeline {run.pipeline} {run.status}: {len(tasks)} tasks"]
    if failed:
        parts.append("failed: " + ", ".join(failed))
    if notes.fixes:
        parts.append("fixed: " + ", ".join(sorted({m["task"] for _, m, _ in notes.fixes})))
    if run.error:
        parts.append(mask(run.error))
    return "; ".join(parts)


def _inputs_digest(store: Store, run_id: str, task_id: str) -> str | None:
    row = store.db.execute("SELECT inputs FROM dead_letters WHERE run_id = ? AND task_id = ? ORDER BY id DESC LIMIT 1",
                           (run_id, task_id)).fetchone()
    return hashlib.sha256(row[0].encode()).hexdigest()[:16] if row and row[0] else None


def _masker(secrets: Mapping[str, str]) -> Any:
    """Secrets and their base64, URL, hex and JSON forms become ``***`` in what memory keeps."""
    return Redactor(secrets).mask


# -- explaining ------------------------------------------------------------------------


@dataclass(frozen=True)
class Explanation:
    """One failed task of a run, with similar past failures and the fixes each had."""

    task: str
    error: str | None
    error_class: str | None
    similar: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"task": self.task, "error": self.error, "error_class": self.error_class, "similar": self.similar}


def explain(store_path: str | os.PathLike[str], run_ref: str, task: str | None = None, *, k: int = 5,
            min_score: float = 0.5, embedder: str | None = None) -> tuple[str, list[Explanation]]:
    """The run's id and, for each failed task (or ``task``), past failures like it and their fixes."""
    from goatclaw.memory.store import MemoryStore

    with Store.open(store_path) as store:
        run = store.run(run_ref)
        if run is None:
            raise GoatclawError(f"no run '{run_ref}' in {store_path}")
        rows = [t for t in store.tasks(run.id) if (t.task_id == task if task else t.status in _FAILED)]
        if task and not rows:
            raise GoatclawError(f"run {run.id} has no task '{task}'")
        mem = MemoryStore(store, embedder)
        same_run = store.db.execute("SELECT COUNT(*) FROM memories WHERE kind = 'failure' AND "
                                    "json_extract(metadata, '$.run') = ?", (run.id,)).fetchone()[0]
        out = []
        for t in rows:
            text = _failure_text(t.task_id, None, t.error_class, t.error)
            hits = mem.search(text, k=k + same_run, kind="failure", min_score=min_score)  # room for those skipped
            past = [p for p in (_as_past(store, h, run.id) for h in hits) if p is not None][:k]
            out.append(Explanation(t.task_id, t.error, t.error_class,
                                   [{**p, "fixes": [f.to_dict() for f in _fixes_of(mem, h)]} for h, p in past]))
        return run.id, out


def _as_past(store: Store, hit: Any, run_id: str) -> tuple[Any, dict[str, Any]] | None:
    """A remembered failure as seen before ``run_id``: ``None`` when only that run saw it.

    A memory the run itself wrote (its own failure, or another task's of the same run)
    is not a past failure; one merged from past runs and this one keeps the past runs'
    count and last sighting.
    """
    runs = [r for r in (hit.metadata.get("runs") or [hit.metadata.get("run")]) if r]
    before = [r for r in runs if r != run_id]
    if runs and not before:
        return None
    data = hit.to_dict()
    if run_id in runs:
        data["count"] = max(1, hit.count - 1)
        last = store.run(before[-1])
        if last is not None:
            data["last_seen"] = last.started_at
    return hit, data


def _fixes_of(mem: Any, failure: Any) -> list[Any]:
    """The fixes recorded for a failure: linked by a later run, or a retry fix of the same task and run."""
    found = []
    if failure.metadata.get("fixed_by") is not None:
        fix = mem.get(int(failure.metadata["fixed_by"]))
        if fix is not None:
            found.append(fix)
    runs = failure.metadata.get("runs") or [failure.metadata.get("run")]
    for run in runs:
        found += [f for f in mem.list(kind="fix", filters={"task": failure.metadata.get("task"), "failed_run": run},
                                      limit=5) if f.id not in {x.id for x in found}]
    return found[:5]
