"""The decisions on approval requests, over the store: list, pick, check inputs, record, expire.

:mod:`goatclaw.api` (``approvals``, ``decide``, ``adecide``, ``expire_approvals``) is the
front door; this module holds its steps. A decision is recorded once: the store's update
only touches an undecided request, and the decision's audit row (``approval.approved``,
``approval.rejected``, ``approval.expired``) commits in the same transaction, in the
store's one hash chain (:mod:`goatclaw.security.audit`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from goatclaw.errors import GoatclawError, Problem, SpecError
from goatclaw.security.audit import audit_key, sealer
from goatclaw.security.auditkey import with_audit_key
from goatclaw.security.secrets import Redactor
from goatclaw.spec.schema import check_instance
from goatclaw.store import RunRow, Store

__all__ = ["EXPIRED_BY", "checked_inputs", "expire", "listing", "pick", "record"]

#: Who a timed-out request is decided by (a rejection).
EXPIRED_BY = "timeout"


def listing(db: Store, run_ref: str | None = None, *, waiting: bool = True) -> list[dict[str, Any]]:
    """The requests (undecided ones unless ``waiting`` is false), each with its run's pipeline and deadline."""
    run_id = _run(db, run_ref).id if run_ref is not None else None
    pipelines: dict[str, str | None] = {}
    rows = []
    for row in db.approvals(run_id, waiting=waiting):
        if row["run_id"] not in pipelines:
            found = db.run(row["run_id"])
            pipelines[row["run_id"]] = found.pipeline if found is not None else None
        rows.append({**row, "pipeline": pipelines[row["run_id"]],
                     "expires_at": None if row["timeout"] is None else row["requested_at"] + row["timeout"]})
    return rows


def pick(db: Store, run_ref: str, task_id: str | None) -> tuple[RunRow, dict[str, Any]]:
    """The run and the undecided request a decision is about; a clear error when there is none, or several."""
    run = _run(db, run_ref)
    requests = db.approvals(run.id, waiting=False)
    if task_id is not None:
        row = next((r for r in requests if r["task_id"] == task_id), None)
        if row is None:
            asked = ", ".join(r["task_id"] for r in requests) or "none"
            raise GoatclawError(f"run {run.id} has no approval request for task '{task_id}' (it has: {asked})")
        if row["decision"] is not None:
            raise GoatclawError(_decided(run.id, row))
        return run, row
    waiting = [r for r in requests if r["decision"] is None]
    if len(waiting) == 1:
        return run, waiting[0]
    if waiting:
        names = ", ".join(r["task_id"] for r in waiting)
        raise GoatclawError(f"run {run.id} waits for {len(waiting)} approvals ({names}): name the task")
    if requests:
        raise GoatclawError(_decided(run.id, requests[-1]))
    raise GoatclawError(f"run {run.id} ({run.status}) has no approval request")


def _decided(run_id: str, row: Mapping[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["decided_at"]))
    if row["decided_by"] == EXPIRED_BY and row["decision"] == "rejected":
        return (f"the approval of {row['task_id']} in run {run_id} timed out at {when} (a rejection); "
                "a decision is final")
    return f"the approval of {row['task_id']} in run {run_id} was already {row['decision']} by " \
           f"{row['decided_by']} at {when}; a decision is final"


def _run(db: Store, ref: str) -> RunRow:
    found = db.run(ref)
    if found is None:
        raise GoatclawError(f"no run '{ref}' in {db.path}")
    return found


def checked_inputs(request: Mapping[str, Any], inputs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The approver's inputs with the schema's top-level defaults; :class:`SpecError` (exit 2) if they do not fit."""
    schema = (request.get("evidence") or {}).get("inputs")
    values = dict(inputs or {})
    if schema is None:
        if values:
            raise SpecError([Problem(None, "inputs", f"the approval of {request['task_id']} asks for no inputs "
                                                     f"(given: {', '.join(sorted(values))})")])
        return values
    for name, prop in (schema.get("properties") or {}).items():
        if name not in values and isinstance(prop, Mapping) and "default" in prop:
            values[name] = prop["default"]
    problems = check_instance(values, dict(schema))
    if problems:
        raise SpecError([Problem(None, f"{request['task_id']}.inputs", message) for message in problems])
    return values


def record(db: Store, run_id: str, task_id: str, *, approve: bool, who: str, inputs: Mapping[str, Any] | None,
           reason: str | None, now: float | None = None, action: str | None = None) -> dict[str, Any]:
    """Record the decision and its audit row in one transaction; refused if another decision came first."""
    decision = "approved" if approve else "rejected"
    at = time.time() if now is None else now
    detail = {"decision": decision, "by": who, "at": at, "inputs": inputs, "reason": reason}
    masked = Redactor(with_audit_key({})).mask(json.dumps(detail, ensure_ascii=False, default=str))  # never the key
    audit = (at, run_id, task_id, action or f"approval.{decision}", masked)
    if not db.decide_approval(run_id, task_id, decision, by=who, inputs=inputs, reason=reason, now=at,
                              audit=audit, seal=sealer(audit_key())):
        row = next((r for r in db.approvals(run_id, waiting=False) if r["task_id"] == task_id), None)
        raise GoatclawError(_decided(run_id, row) if row is not None and row["decision"] is not None
                            else f"run {run_id} has no approval request for task '{task_id}'")
    return {"run_id": run_id, "task_id": task_id, **detail}


def expire(db: Store, now: float | None = None) -> list[dict[str, Any]]:
    """Turn every undecided request past its timeout into a rejection (by ``timeout``); those decisions."""
    at = time.time() if now is None else now
    expired = []
    for row in db.approvals(waiting=True):
        if row["timeout"] is None or row["requested_at"] + row["timeout"] > at:
            continue
        reason = f"no decision within {row['timeout']:g}s"
        try:
            expired.append(record(db, row["run_id"], row["task_id"], approve=False, who=EXPIRED_BY, inputs=None,
                                  reason=reason, now=at, action="approval.expired"))
        except GoatclawError:
            continue  # decided meanwhile by someone else: their decision stands
    return expired
