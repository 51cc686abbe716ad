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

import json
import os
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from goatclaw.errors import StoreError
from goatclaw.security.audit import AuditRow, Verdict, audit_key, sealer, verify
from goatclaw.store import Store

__all__ = ["AuditRow", "Verdict", "audit_log", "audit_record", "verify_audit"]


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


def audit_record(store: str | os.PathLike[str] | Store, action: str, detail: Mapping[str, Any], *,
                 run_id: str | None = None, task_id: str | None = None, ts: float | None = None) -> None:
    """Append one row to the store's audit chain (keyed with the audit key when there is one).

    What a face of the API records about a change it was asked for (``goatclaw serve``: who
    triggered, cancelled or approved what). ``detail`` must hold no secret: it is stored as
    given. ``store`` is a path or an open :class:`~goatclaw.store.Store`. A row that cannot be
    written raises :class:`~goatclaw.errors.StoreError`; it is never dropped silently.
    """
    text = json.dumps(dict(detail), sort_keys=True, ensure_ascii=False, default=str)
    row = (time.time() if ts is None else ts, run_id, task_id, action, text)
    if isinstance(store, Store):
        store.append_audit([row], sealer(audit_key()))
        return
    with Store.open(store) as db:
        db.append_audit([row], sealer(audit_key()))


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
