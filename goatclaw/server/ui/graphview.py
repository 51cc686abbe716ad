"""A run's or a pipeline's DAG as the page draws it: levels, and fan-outs collapsed into one node.

The browser lays the graph out with dagre (vendored under ``static/vendor``); past
:data:`LAYOUT_LIMIT` nodes it places them by level instead (dagre's crossing reduction grows
too slow to stay interactive). Either way the graph stays readable at 1,000 tasks because
siblings that need the same tasks and are needed by the same tasks (a fan-out written as
many tasks) collapse into one group node, drawn with how many of its tasks are in each state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["COLLAPSE_AT", "LAYOUT_LIMIT", "graph_view"]

#: Siblings with the same needs and dependents collapse when there are at least this many.
COLLAPSE_AT = 6
#: Above this many drawn nodes the page lays out by level rather than with dagre.
LAYOUT_LIMIT = 300


def graph_view(tasks: Sequence[Mapping[str, Any]], *, collapse_at: int = COLLAPSE_AT) -> dict[str, Any]:
    """Nodes (tasks or groups), edges between them and each node's level, from tasks with ``id``/``needs``/``status``.

    A group node has ``members`` (the task ids) and ``counts`` (tasks per state); an edge
    between two groups stands for every edge between their members.
    """
    ids = [str(t["id"]) for t in tasks]
    known = set(ids)
    needs = {str(t["id"]): [n for n in t.get("needs") or [] if n in known] for t in tasks}
    dependents: dict[str, list[str]] = {tid: [] for tid in ids}
    for tid, ns in needs.items():
        for n in ns:
            dependents[n].append(tid)
    level = _levels(ids, needs)
    group_of = _groups(ids, needs, dependents, level, collapse_at)
    status = {str(t["id"]): str(t.get("status") or "pending") for t in tasks}
    nodes: dict[str, dict[str, Any]] = {}
    for tid in ids:
        key = group_of.get(tid, tid)
        node = nodes.get(key)
        if node is None:
            node = nodes[key] = {"id": key, "label": tid, "level": level[tid], "members": [], "counts": {},
                                 "status": status[tid], "group": key != tid}
        node["members"].append(tid)
        node["counts"][status[tid]] = node["counts"].get(status[tid], 0) + 1
    for node in nodes.values():
        if node["group"]:
            node["label"] = f"{node['members'][0]} … ({len(node['members'])} tasks)"
            node["status"] = _group_status(node["counts"])
        else:
            node.pop("members")
    edges = sorted({(group_of.get(n, n), group_of.get(tid, tid)) for tid, ns in needs.items() for n in ns})
    return {"nodes": list(nodes.values()), "edges": [list(e) for e in edges], "tasks": len(ids),
            "levels": max(level.values(), default=-1) + 1, "layout": "dagre" if len(nodes) <= LAYOUT_LIMIT
            else "levels"}


def _levels(ids: Sequence[str], needs: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Each task's level: 0 for a task that needs nothing, else one past its deepest need (Kahn's order)."""
    level: dict[str, int] = {}
    pending = {tid: len(needs[tid]) for tid in ids}
    dependents: dict[str, list[str]] = {tid: [] for tid in ids}
    for tid in ids:
        for n in needs[tid]:
            dependents[n].append(tid)
    ready = [tid for tid in ids if pending[tid] == 0]
    for tid in ready:
        level[tid] = 0
    while ready:
        nxt = []
        for tid in ready:
            for d in dependents[tid]:
                level[d] = max(level.get(d, 0), level[tid] + 1)
                pending[d] -= 1
                if pending[d] == 0:
                    nxt.append(d)
        ready = nxt
    for tid in ids:  # a cycle (a stored run of a broken file) still draws: those tasks go last
        level.setdefault(tid, max(level.values(), default=0) + 1)
    return level


def _groups(ids: Sequence[str], needs: Mapping[str, Sequence[str]], dependents: Mapping[str, Sequence[str]],
            level: Mapping[str, int], collapse_at: int) -> dict[str, str]:
    """Task id → group key for tasks in a sibling set of at least ``collapse_at``."""
    sets: dict[tuple[Any, ...], list[str]] = {}
    for tid in ids:
        sets.setdefault((level[tid], tuple(sorted(needs[tid])), tuple(sorted(dependents[tid]))), []).append(tid)
    out: dict[str, str] = {}
    for members in sets.values():
        if len(members) >= collapse_at:
            key = f"group:{members[0]}"
            out.update({m: key for m in members})
    return out


_ORDER = ("failed", "running", "waiting", "upstream_failed", "cancelled", "pending", "skipped", "cached", "succeeded")


def _group_status(counts: Mapping[str, int]) -> str:
    """The state a group is drawn in: its most pressing member state (a failure first, then work in flight)."""
    for state in _ORDER:
        if counts.get(state):
            return state
    return next(iter(counts), "pending")
