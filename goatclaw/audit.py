"""The audit chain of a store, from Python: read it, verify it.

Every side effect of every run (process started, file written, request sent, LLM
called, secret read, permission denied, threat detected) is a row of one hash chain in
the store (see :mod:`goatclaw.security.audit` for the format and what it guarantees)::

    import goatclaw

    verdict = goatclaw.verify_audit(".goatclaw/goatclaw.db")
    if not verdict.ok:
        print(verdict)          # audit chain broken at row 17: row 17 was altered (...)
    for row in goatclaw.audit_log(".goatclaw/goatclaw.db", run="last"):
        print(row.seq, row.action, row.data)
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from goatclaw.errors import StoreError
from goatclaw.security.audit import AuditRow, Verdict, audit_key, verify
from goatclaw.store import Store

__all__ = ["AuditRow", "Verdict", "audit_log", "verify_audit"]


def _open(store: str | os.PathLike[str]) -> Store:
    if not Path(store).exists():
        raise StoreError(f"no store at {store}")
    return Store.open(store)


def audit_log(store: str | os.PathLike[str], *, run: str | None = None, action: str | None = None,
              limit: int | None = None) -> list[AuditRow]:
    """The chain's rows in order: all, or one run's (an id, unique prefix or ``last``), or one action's.

    ``limit`` keeps the newest ``limit`` rows.
    """
    with _open(store) as db:
        run_id = None
        if run is not None:
            found = db.run(run)
            if found is None:
                raise StoreError(f"no run '{run}' in {db.path}")
            run_id = found.id
        rows = [AuditRow(*r) for r in db.audit_rows(run_id=run_id)]
    if action is not None:
        rows = [r for r in rows if r.action == action or r.action.startswith(action + ".")]
    return rows[-limit:] if limit else rows


def verify_audit(store: str | os.PathLike[str], *, key: str | bytes | None = None,
                 keyed_from: int | None = None) -> Verdict:
    """Check the whole chain (every run's rows) and its head; the first altered or missing row.

    Keyed rows are checked with ``key`` (default: ``GOATCLAW_AUDIT_KEY``); from row
    ``keyed_from`` on (pinned where the store cannot reach), every row must be keyed.
    A chain whose rows are all sound is still not ``ok`` while a run's rows are not all
    stored (a commit that failed for good, a run interrupted and not resumed): the
    verdict's ``incomplete`` names them (:meth:`goatclaw.store.Store.incomplete_runs`).
    """
    secret = key.encode() if isinstance(key, str) else key if key is not None else audit_key()
    with _open(store) as db:
        verdict = verify((AuditRow(*r) for r in db.audit_rows()), db.audit_head(), key=secret, keyed_from=keyed_from)
        incomplete = tuple(db.incomplete_runs())
    return replace(verdict, ok=verdict.ok and not incomplete, incomplete=incomplete) if incomplete else verdict
