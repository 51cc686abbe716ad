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
    last, last_end = None, 0.0
    for tid, t in tasks.items():  # one pass over every task: the task of the main graph that finished last
        end = t.finished_at
        if end is None or (last is not None and end < last_end) or t.started_at is None or tid not in needs:
            continue
        if last is None or end > last_end or tid > last:  # (equal ends: the greater id, whatever the order)
            last, last_end = tid, end
    path: list[dict[str, Any]] = []
    current = last
    while current is not None:
        t = tasks[current]
        start, end = t.started_at, t.finished_at
        previous, previous_end = None, 0.0  # the need that finished last before this task started
        for n in needs[current]:
            span = _span(tasks, needs, n)
            if span is None or span[1] > start + 1e-9:
                continue
            if previous is None or span[1] > previous_end or (span[1] == previous_end and n > previous):
                previous, previous_end = n, span[1]
        ready_at = previous_end if previous is not None else start
        path.append({"task": current, "duration": round(end - start, 6), "wait": round(max(0.0, start - ready_at), 6)})
        current = previous
    path.reverse()
    return path


def _span(tasks: Mapping[str, Any], needs: Mapping[str, Sequence[str]], tid: str) -> tuple[float, float] | None:
    """(started, finished) of ``tid`` if it is a task of the main graph that ran."""
    t = tasks.get(tid)
    if t is None or t.started_at is None or t.finished_at is None or tid not in needs:
        return None
    return t.started_at, t.finished_at
