"""The knowledge graph: what runs taught, as entities and relations in the store.

Entities are ``(kind, name)``: ``pipeline``, ``task`` (``pipeline.task``), ``plugin``,
``model`` (the model an ``llm`` task actually used), ``file`` (a path a ``file.*`` task
read or wrote), ``error`` (an error class) and ``fix`` (how a failure was fixed:
``retry``, ``later run``). Relations carry a count and first/last seen: ``pipeline uses
task``, ``task uses plugin``, ``task uses model``, ``task read file``, ``task produced
file``, ``task failed_with error``, ``error fixed_by fix`` and ``task fixed_by fix``.
They are written with the memories after a run (never for a clean run), in plain tables;
:func:`goatclaw.graph.knowledge_graph` turns them into a networkx graph.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["Relation", "graph_data", "record"]

Relation = tuple[tuple[str, str], str, tuple[str, str]]  # (source entity, relation, target entity)


def relations_of(pipeline: str, tasks: Sequence[Any], plugins: Mapping[str, str],
                 failures: Iterable[Mapping[str, Any]], fixes: Iterable[Mapping[str, Any]], *,
                 models: Mapping[str, Iterable[str]] | None = None,
                 files: Iterable[tuple[str, str, str]] = ()) -> list[Relation]:
    """The relations one run shows: its tasks, plugins, models and files, its failures and its fixes.

    ``models`` maps a task to the models it called; ``files`` holds ``(task, "read" or
    "produced", path)``.
    """
    out: list[Relation] = []
    for t in tasks:
        task = ("task", f"{pipeline}.{t.task_id}")
        out.append((("pipeline", pipeline), "uses", task))
        if plugins.get(t.task_id):
            out.append((task, "uses", ("plugin", plugins[t.task_id])))
        for model in sorted(set((models or {}).get(t.task_id, ()))):
            out.append((task, "uses", ("model", model)))
    for task_id, relation, path in files:
        out.append((("task", f"{pipeline}.{task_id}"), relation, ("file", path)))
    for meta in failures:
        out.append((("task", f"{pipeline}.{meta['task']}"), "failed_with", ("error", meta.get("error_class") or
                                                                             "error")))
    for meta in fixes:
        how = "retry" if str(meta.get("how", "")).startswith("retry") else "later run"
        out.append((("error", meta.get("error_class") or "error"), "fixed_by", ("fix", how)))
        out.append((("task", f"{pipeline}.{meta['task']}"), "fixed_by", ("fix", how)))
    return out


def record(db: Any, relations: Sequence[Relation], *, at: float | None = None) -> None:
    """Upsert the entities and relations (counts add up) inside the caller's transaction."""
    now = time.time() if at is None else at
    ids: dict[tuple[str, str], int] = {}
    for source, relation, target in relations:
        for entity in (source, target):
            if entity not in ids:
                db.execute("INSERT OR IGNORE INTO memory_entities (kind, name) VALUES (?, ?)", entity)
                ids[entity] = int(db.execute("SELECT id FROM memory_entities WHERE kind = ? AND name = ?",
                                             entity).fetchone()[0])
        db.execute("INSERT INTO memory_relations (source, relation, target, count, first_seen, last_seen) "
                   "VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT (source, relation, target) DO UPDATE SET "
                   "count = count + 1, last_seen = excluded.last_seen",
                   (ids[source], relation, ids[target], now, now))


def graph_data(db: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every entity ``{id, kind, name}`` and relation ``{source, relation, target, count, first_seen, last_seen}``."""
    entities = [{"id": i, "kind": k, "name": n} for i, k, n in
                db.execute("SELECT id, kind, name FROM memory_entities ORDER BY id")]
    relations = [{"source": s, "relation": r, "target": t, "count": c, "first_seen": f, "last_seen": lt}
                 for s, r, t, c, f, lt in db.execute("SELECT source, relation, target, count, first_seen, last_seen "
                                                     "FROM memory_relations ORDER BY source, relation, target")]
    return entities, relations
