"""Untrusted data: which outputs of ``llm`` and ``http`` tasks reach which sinks.

A plugin that returns text from outside (a model's answer, a web page) declares
``untrusted_output=True``; a plugin whose arguments can run something declares them as
``sinks`` (``shell``: ``run``, ``script``, ``env``, …; ``file.write``: ``path``; ``python``:
``function``, ``args``, ``kwargs``; ``http``: ``url``). The engine tells this module, per
task and per ``with:`` argument, which tasks the templates read; this module follows the
data through the graph:

* a task's output carries the untrusted *origins* of everything it read (transitively),
  plus itself if its plugin is untrusted;
* ``trust: [a, b]`` on a task accepts what comes from (or through) ``a`` and ``b``: those
  flows are allowed into its sinks, and its own output no longer carries them;
* an untrusted origin reaching a sink argument without ``trust`` is a :class:`Flow`, and
  the task fails with ``permission_denied`` before its plugin is called.

The analysis is static (what the templates name, not what a condition picks at run
time), so it errs on the side of refusing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

__all__ = ["ALL_UPSTREAM", "RUN_ERRORS", "Flow", "TaskFlows", "follow"]

#: In ``reads``: a template indexes ``tasks`` with a computed key, so it may read any upstream task.
ALL_UPSTREAM: frozenset[str] = frozenset({"*"})
#: In ``reads``: ``run.errors`` (no task id can be spelt so), which carries every failed task's error text.
RUN_ERRORS = "$run.errors"


@dataclass(frozen=True)
class TaskFlows:
    """What the engine knows about one task for the analysis."""

    reads: Mapping[str, frozenset[str]]  # with: argument (or "foreach", "if") -> task ids its templates name
    untrusted_output: bool = False
    sinks: tuple[str, ...] = ()  # "*": every argument
    trust: tuple[str, ...] = ()


@dataclass(frozen=True)
class Flow:
    """An untrusted value reaching a sink: ``task``'s argument ``field`` reads ``via``, carrying ``origins``."""

    task: str
    field: str
    via: str
    origins: frozenset[str]

    @property
    def message(self) -> str:
        """Why the task is refused, and how to allow the flow."""
        came = sorted(self.origins)
        if self.via == RUN_ERRORS:  # trust names tasks: the origins themselves
            source, trust = "run.errors", ", ".join(came)
        else:
            source, trust = f"tasks.{self.via}", self.via
        through = "" if came == [self.via] else f", which carries output of {', '.join(came)}"
        return (f"untrusted data: with.{self.field} reads {source}{through} (untrusted: llm/http "
                f"output, which a prompt injection controls); add trust: [{trust}] to task '{self.task}' "
                "if this flow is intended")


def follow(order: Iterable[str], tasks: Mapping[str, TaskFlows],
           upstream: Callable[[str], Iterable[str]]) -> tuple[dict[str, frozenset[str]], dict[str, list[Flow]]]:
    """Origins of every task's output and the refused flows, tasks visited in ``order`` (upstream first).

    ``upstream(task_id)`` lists the tasks a computed ``tasks[...]`` index may reach.
    """
    origins: dict[str, frozenset[str]] = {}
    flows: dict[str, list[Flow]] = {}
    for tid in order:
        info = tasks.get(tid)
        if info is None:
            continue
        carried_all: set[str] = set()
        for name, refs in info.reads.items():
            if refs & ALL_UPSTREAM:
                refs = (refs - ALL_UPSTREAM) | frozenset(upstream(tid))
            for ref in sorted(refs):
                came = origins.get(ref, frozenset())
                if not came or ref in info.trust or came <= set(info.trust):
                    continue
                came = frozenset(came - set(info.trust))
                carried_all |= came
                if "*" in info.sinks or name in info.sinks:
                    flows.setdefault(tid, []).append(Flow(tid, name, ref, came))
        if info.untrusted_output:
            carried_all.add(tid)
        if carried_all:
            origins[tid] = frozenset(carried_all)
    return origins, flows
