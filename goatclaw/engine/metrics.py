"""Run metrics the engine can compute at the end of a run: the critical path.

The critical path is the chain of tasks that set the run's length: start from the task
that finished last and walk back, each time to the need that finished last before the
task started (the one it was waiting for). Any task on it made the run longer by its own
duration; ``wait`` is time a task spent ready but not started (all workers busy).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["critical_path"]


def critical_path(needs: Mapping[str, Sequence[str]], tasks: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The critical path as ``[{task, duration, wait}]``, first task first (empty if nothing ran).

    ``tasks`` maps ids to results with ``started_at`` and ``finished_at`` (tasks that did
    not run have ``None``); only tasks of the main graph (those in ``needs``) count.
    """
    ran = {tid: t for tid, t in tasks.items() if tid in needs and t.started_at is not None
           and t.finished_at is not None}
    if not ran:
        return []
    current: str | None = max(ran, key=lambda tid: (ran[tid].finished_at, tid))
    path: list[dict[str, Any]] = []
    while current is not None:
        task = ran[current]
        before = [n for n in needs[current] if n in ran and ran[n].finished_at <= task.started_at + 1e-9]
        previous = max(before, key=lambda n: (ran[n].finished_at, n)) if before else None
        ready_at = ran[previous].finished_at if previous is not None else task.started_at
        path.append({"task": current, "duration": round(task.finished_at - task.started_at, 6),
                     "wait": round(max(0.0, task.started_at - ready_at), 6)})
        current = previous
    path.reverse()
    return path
