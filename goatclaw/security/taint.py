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

Untrusted data also comes back at run time, from where an untrusted flow put it: a file
that ``file.write`` wrote with such data (in this run or an earlier one), a memory that
the ``memory`` task stored from it. A plugin that reads such a place reports it (its
output then carries the origins recorded with the data); :class:`RuntimeTaint` follows
those outputs through the tasks that read them, with the same ``trust:`` rules, and
finds the flows into sinks that the static analysis could not see.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

__all__ = ["ALL_UPSTREAM", "RUN_ERRORS", "Flow", "RuntimeTaint", "TaskFlows", "carried", "follow"]

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
    how: str = ""  # how the data got there when it is not the templates alone ("read back from ...")

    @property
    def message(self) -> str:
        """Why the task is refused, and how to allow the flow."""
        came = sorted(self.origins)
        if self.via == RUN_ERRORS:  # trust names tasks: the origins themselves
            source, trust = "run.errors", ", ".join(came)
        else:
            source, trust = f"tasks.{self.via}", self.via
        through = "" if came == [self.via] else f", which carries output of {', '.join(came)}"
        through += f" ({self.how})" if self.how else ""
        return (f"untrusted data: with.{self.field} reads {source}{through} (untrusted: llm/http "
                f"output, which a prompt injection controls); add trust: [{trust}] to task '{self.task}' "
                "if this flow is intended")


def carried(tid: str, info: TaskFlows, origins_of: Callable[[str], frozenset[str]],
            upstream: Callable[[str], Iterable[str]]) -> tuple[frozenset[str], list[Flow]]:
    """What ``tid``'s inputs carry (the untrusted origins left after its ``trust:``), and the refused flows."""
    carried_all: set[str] = set()
    flows: list[Flow] = []
    trust = set(info.trust)
    for name, refs in info.reads.items():
        if refs & ALL_UPSTREAM:
            refs = (refs - ALL_UPSTREAM) | frozenset(upstream(tid))
        for ref in sorted(refs):
            came = origins_of(ref)
            if not came or ref in trust or came <= trust:
                continue
            came = frozenset(came - trust)
            carried_all |= came
            if "*" in info.sinks or name in info.sinks:
                flows.append(Flow(tid, name, ref, came))
    return frozenset(carried_all), flows


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
        came, refused = carried(tid, info, lambda ref: origins.get(ref, frozenset()), upstream)
        if refused:
            flows[tid] = refused
        if info.untrusted_output:
            came |= {tid}
        if came:
            origins[tid] = came
    return origins, flows


class RuntimeTaint:
    """Untrusted origins that appear while a run goes, and where they flow.

    ``info(task_id)`` gives a task's :class:`TaskFlows` (its reads and ``trust:``; its
    sinks), ``upstream`` as for :func:`follow`. A plugin's report that its output holds
    untrusted data is :meth:`mark`; :meth:`settle` fixes what a finished task's output
    carries; :meth:`flows` are the refusals for a task about to run. Origins known
    statically are :func:`follow`'s: this class only holds what the templates cannot show.
    """

    def __init__(self, info: Callable[[str], TaskFlows | None], upstream: Callable[[str], Iterable[str]],
                 tasks: Iterable[str] = ()) -> None:
        self._info = info
        self._upstream = upstream
        self._main = tuple(tasks)  # the graph's tasks: what run.errors carries
        self._marks: dict[str, tuple[frozenset[str], str]] = {}
        self._settled: dict[str, frozenset[str]] = {}
        self._how: dict[str, str] = {}
        #: Whether anything untrusted came back in this run so far (an attribute: the runner reads it for every task).
        self.seen = False

    def __bool__(self) -> bool:
        """Whether anything untrusted came back in this run so far."""
        return self.seen

    def mark(self, tid: str, origins: Iterable[str], how: str = "") -> None:
        """``tid``'s output holds data that came from ``origins`` (untrusted tasks), ``how`` it got in."""
        came = frozenset(origins)
        if not came:
            return
        old, old_how = self._marks.get(tid, (frozenset(), ""))
        self._marks[tid] = (old | came, old_how or how)
        self.seen = True

    def origins(self, tid: str) -> frozenset[str]:
        """What ``tid``'s output carries, as far as the run has seen (empty before it settled)."""
        return self._settled.get(tid, frozenset())

    def how(self, tid: str) -> str:
        """How the untrusted data in ``tid``'s output came in at run time (``""``: unknown)."""
        return self._how.get(tid, "")

    def inputs(self, tid: str) -> frozenset[str]:
        """What ``tid``'s inputs carry at run time (after its ``trust:``)."""
        if not self._settled:  # nothing untrusted came back yet: no task's reads need looking at
            return frozenset()
        info = self._info(tid)
        return frozenset() if info is None else carried(tid, info, self._origins_of, self._upstream)[0]

    def settle(self, tid: str, also: Iterable[str] = ()) -> frozenset[str]:
        """``tid`` finished: what its output carries (its inputs' origins, its marks, ``also``'s), after ``trust:``."""
        if not self._settled and tid not in self._marks:
            return frozenset()
        info = self._info(tid)
        trust = set(info.trust) if info is not None else set()
        came = set(self.inputs(tid)) | set(self._marks.get(tid, (frozenset(), ""))[0])
        for other in also:  # a fallback's output stands in for the task's
            came |= self.origins(other)
            self._how.setdefault(tid, self._how.get(other, ""))
        came -= trust
        if came:
            self._settled[tid] = frozenset(came)
            self.seen = True
            how = self._marks.get(tid, (frozenset(), ""))[1] or next(
                (self._how[r] for r in sorted(self._refs(tid)) if self._how.get(r)), "")
            self._how.setdefault(tid, how)
        return frozenset(came)

    def flows(self, tid: str) -> list[Flow]:
        """Run-time untrusted data reaching ``tid``'s sinks without ``trust:``."""
        if not self._settled:  # nothing untrusted came back yet
            return []
        info = self._info(tid)
        if info is None or not info.sinks:
            return []
        found = carried(tid, info, self._origins_of, self._upstream)[1]
        return [Flow(f.task, f.field, f.via, f.origins, self._how_of(f.via)) for f in found]

    def _origins_of(self, ref: str) -> frozenset[str]:
        if ref == RUN_ERRORS:
            return frozenset().union(*(self.origins(t) for t in self._main))
        return self.origins(ref)

    def _how_of(self, ref: str) -> str:
        if ref == RUN_ERRORS:
            return next((self._how[t] for t in self._main if self._how.get(t)), "")
        return self._how.get(ref, "")

    def _refs(self, tid: str) -> set[str]:
        info = self._info(tid)
        return set().union(*info.reads.values()) - ALL_UPSTREAM if info is not None and info.reads else set()
