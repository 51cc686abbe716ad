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
    spans: dict[str, tuple[float, float]] = {}  # tasks of the main graph that ran: (started, finished)
    last, last_end = None, 0.0
    for tid, t in tasks.items():
        start, end = t.started_at, t.finished_at
        if start is None or end is None or tid not in needs:
            continue
        spans[tid] = (start, end)
        if last is None or end > last_end or (end == last_end and tid > last):
            last, last_end = tid, end
    path: list[dict[str, Any]] = []
    current = last
    while current is not None:
        start, end = spans[current]
        previous, previous_end = None, 0.0  # the need that finished last before this task started
        for n in needs[current]:
            span = spans.get(n)
            if span is None or span[1] > start + 1e-9:
                continue
            if previous is None or span[1] > previous_end or (span[1] == previous_end and n > previous):
                previous, previous_end = n, span[1]
        ready_at = previous_end if previous is not None else start
        path.append({"task": current, "duration": round(end - start, 6), "wait": round(max(0.0, start - ready_at), 6)})
        current = previous
    path.reverse()
    return path
