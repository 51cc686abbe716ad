"""Approval gates: a task that waits for a person's decision (``approval:``, or ``uses: approval``).

A gate holds no process. When the run reaches one the first time, the request and its
evidence are stored (the ``approvals`` table), the task is ``waiting``, and once nothing
else can run the run ends ``waiting`` and its process exits. A decision recorded later
(:func:`goatclaw.api.decide`) is read when the run is resumed and reaches the gate again:

- approved: the task runs; the decision (``approved``, ``by``, ``at``, ``inputs``,
  ``reason``) is its ``tasks.<id>.approval`` and its plugin's ``ctx.approval`` (the output
  of a ``uses: approval`` task);
- rejected (or timed out, :func:`goatclaw.api.expire_approvals`): the task fails with error
  class ``rejected`` and its dependents are ``upstream_failed``, as after any failure;
- still undecided: it waits again. The request is not renewed, so a timeout counts from the
  first request.

:func:`approval_problems` checks the gates of a pipeline file before anything runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from goatclaw.errors import Problem, TaskError, TemplateError
from goatclaw.spec.loader import dotted
from goatclaw.spec.model import Pipeline, Task
from goatclaw.spec.schema import check_schema
from goatclaw.template import compile_value

__all__ = ["MAX_EVIDENCE_CHARS", "Gate", "approval_problems", "bounded"]

#: The most characters of one upstream output the request shows (the rest is cut, and says so).
MAX_EVIDENCE_CHARS = 4000

#: What a run's caller adds to a request's evidence: downstream task ids -> ``{cost, permissions}``.
Evidence = Callable[[Sequence[str]], Mapping[str, Any]]


class Gate:
    """The approval of one task in one run: its stored decision, or a new request with its evidence."""

    def __init__(self, task: Task, run_id: str, store: Any, redactor: Any) -> None:
        self.task = task
        self.run_id = run_id
        self.store = store
        self.redactor = redactor

    def decision(self) -> dict[str, Any] | None:
        """The decision, if one was made: approved returns it, rejected raises ``TaskError(rejected)``.

        ``None``: no decision yet (there may be no request yet either: see :meth:`stored`).
        """
        row = self.stored()
        if row is None or row["decision"] is None:
            return None
        if row["decision"] == "rejected":
            why = f": {row['reason']}" if row.get("reason") else ""
            raise TaskError(f"rejected by {row['decided_by']}{why}", error_class="rejected",
                            details={"by": row["decided_by"], "at": row["decided_at"]})
        return {"approved": True, "by": row["decided_by"], "at": row["decided_at"], "inputs": row["inputs"] or {},
                "reason": row["reason"]}

    def stored(self) -> dict[str, Any] | None:
        """The stored request of this task in this run, decided or not."""
        if self.store is None:
            raise TaskError("an approval needs the store (the run has none): the request would be lost",
                            error_class="invalid_input")
        return next((r for r in self.store.approvals(self.run_id, waiting=False) if r["task_id"] == self.task.id),
                    None)

    def request(self, context: Mapping[str, Any], upstream: Mapping[str, Any], downstream: Sequence[str],
                evidence: Evidence | None) -> dict[str, Any]:
        """Store the request with its evidence (secrets masked); the evidence."""
        policy = self.task.approval
        assert policy is not None
        shown = {
            "message": self._message(context),
            "upstream": {tid: bounded(self.redactor.mask_data(output)) for tid, output in upstream.items()},
            "downstream": list(downstream),
            "inputs": dict(policy.inputs) if policy.inputs is not None else None,
            "timeout": policy.timeout,
            **(evidence(downstream) if evidence is not None else {}),
        }
        shown = self.redactor.mask_data(shown)
        self.store.request_approval(self.run_id, self.task.id, shown, timeout=policy.timeout)
        return shown

    def _message(self, context: Mapping[str, Any]) -> str | None:
        message = self.task.approval.message if self.task.approval is not None else None
        if message is None:
            return None
        try:
            return str(compile_value(message).render(context))
        except TemplateError as exc:
            raise TaskError(f"approval.message: {exc.message}", error_class=exc.error_class) from None


def bounded(output: Any, limit: int = MAX_EVIDENCE_CHARS) -> Any:
    """``output`` as it is when its JSON is short, else its JSON cut at ``limit`` characters (saying so)."""
    import json

    text = json.dumps(output, ensure_ascii=False, default=str)
    if len(text) <= limit:
        return output
    return f"{text[:limit]}… ({len(text):,} characters, cut at {limit:,})"


def approval_problems(pipeline: Pipeline) -> list[Problem]:
    """Gates that cannot work: outside ``tasks:``, on a fallback, inputs that are no JSON Schema of an object."""
    problems = []
    for group in (pipeline.on_failure, pipeline.finally_):
        for task in group.values():
            if task.approval is not None:
                where = (*task.path, "uses") if task.uses == "approval" else (*task.path, "approval")
                problems.append(Problem(pipeline.locate(where), dotted(where), f"an approval cannot be in "
                                        f"{task.group}: the run has ended by then; put it under tasks:"))
    fallbacks = {t.fallback for t in pipeline.tasks.values() if t.fallback}
    for task in pipeline.tasks.values():
        policy = task.approval
        if policy is not None and task.id in fallbacks:
            where = (*task.path, "uses") if task.uses == "approval" else (*task.path, "approval")
            problems.append(Problem(pipeline.locate(where), dotted(where), f"'{task.id}' is a fallback (it stands "
                                    "in at once when a task fails): it cannot wait for an approval"))
        if policy is None or policy.inputs is None:
            continue
        where = (*task.path, "approval", "inputs")
        why = check_schema(dict(policy.inputs))
        if why is None and policy.inputs.get("type", "object") != "object":
            why = "inputs must be the schema of an object (type: object): the approver fills in named values"
        if why is not None:
            problems.append(Problem(pipeline.locate(where), dotted(where), f"not a valid JSON Schema: {why}"
                                    if not why.startswith("inputs must") else why))
    return problems
