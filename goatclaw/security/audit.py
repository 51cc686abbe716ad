"""The audit chain: every side effect as a row that carries the hash of the row before it.

A row is ``(seq, ts, run_id, task_id, action, detail, prev, hash)``: ``seq`` numbers the
rows of the whole store from 1 (one chain across runs, so removing a whole run's rows
shows too), ``detail`` is JSON text (secrets already masked), ``prev`` is the previous
row's ``hash`` (:data:`GENESIS` for row 1) and ``hash`` is the SHA-256 of the canonical
JSON of the other seven fields. The store keeps the last ``(seq, hash)`` as the chain's
head, so removing the newest rows shows as well.

With a secret key (:data:`KEY_ENV` or :data:`KEY_FILE_ENV`, see :mod:`goatclaw.security.auditkey`), rows
are *keyed*: their ``hash`` is ``hmac:`` and the HMAC-SHA256 of the same JSON. Nobody
without the key can then alter or forge a row, or rebuild the chain from an altered
row on, without :func:`verify` (given the key) finding it: a plain row after keyed ones
is refused, and ``keyed_from`` says from which row on every row must be keyed.

This module is pure: it links rows (:func:`seal`) and checks them (:func:`verify`); the
store runs :func:`seal` inside its write transaction, so concurrent writers extend one
chain in commit order.

What it guarantees: any change to a stored row (any field), a removed row, or rows
removed from the end are found, and :func:`verify` names the first row affected. What it
does not: without a key, someone able to write the store file can rebuild the whole
chain from the altered row on; with or without one, removing the newest rows together
with the head record is found only against a copy of the head kept elsewhere
(``goatclaw audit verify --json``).
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from goatclaw.security.auditkey import KEY_ENV, KEY_FILE_ENV, audit_key

__all__ = ["ACTIONS", "GENESIS", "KEYED", "KEY_ENV", "KEY_FILE_ENV", "AuditRow", "Verdict", "audit_key", "row_hash",
           "seal", "sealer", "verify"]

#: The ``prev`` of the first row.
GENESIS = hashlib.sha256(b"goatclaw audit chain v1").hexdigest()

#: The prefix of a keyed row's hash (HMAC-SHA256 with the audit key).
KEYED = "hmac:"

#: The side effects the built-in tasks and the engine record.
ACTIONS = ("process.started", "file.written", "request.sent", "llm.called", "secret.read", "permission.denied",
           "threat.detected", "run.blocked", "approval.requested", "approval.approved", "approval.rejected",
           "approval.expired")


@dataclass(frozen=True)
class AuditRow:
    """One stored row of the chain."""

    seq: int
    ts: float
    run_id: str | None
    task_id: str | None
    action: str
    detail: str
    prev: str
    hash: str

    @property
    def data(self) -> Any:
        """``detail`` parsed (the text itself when it is not JSON)."""
        try:
            return json.loads(self.detail)
        except ValueError:
            return self.detail

    def to_dict(self) -> dict[str, Any]:
        """The row as plain data (``detail`` parsed)."""
        return {"seq": self.seq, "ts": self.ts, "run_id": self.run_id, "task_id": self.task_id,
                "action": self.action, "detail": self.data, "prev": self.prev, "hash": self.hash}


def row_hash(seq: int, ts: float, run_id: str | None, task_id: str | None, action: str, detail: str,
             prev: str, key: bytes | None = None) -> str:
    """SHA-256 (hex) of the canonical JSON of a row's fields and the previous row's hash.

    With ``key``: :data:`KEYED` and the HMAC-SHA256 (hex) of the same text.
    """
    fields = {"action": action, "detail": detail, "prev": prev, "run_id": run_id, "seq": seq, "task_id": task_id,
              "ts": ts}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if key is not None:
        return KEYED + hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()
    return hashlib.sha256(canonical.encode()).hexdigest()


def sealer(key: bytes | None = None) -> Callable[[int, str | None, Iterable[Sequence[Any]]], list[tuple[Any, ...]]]:
    """:func:`seal`, keyed with ``key`` when there is one (a picklable callable: writer processes get it)."""
    return seal if key is None else functools.partial(seal, key=key)


def seal(head_seq: int, head_hash: str | None, pending: Iterable[Sequence[Any]],
         key: bytes | None = None) -> list[tuple[Any, ...]]:
    """Number and link ``pending`` rows ``(ts, run_id, task_id, action, detail)`` after the head.

    Returns rows in table order ``(seq, ts, run_id, task_id, action, detail, prev, hash)``;
    with ``key`` the rows are keyed.
    """
    prev = head_hash or GENESIS
    sealed: list[tuple[Any, ...]] = []
    seq = head_seq
    for ts, run_id, task_id, action, detail in pending:
        seq += 1
        digest = row_hash(seq, ts, run_id, task_id, action, detail, prev, key)
        sealed.append((seq, ts, run_id, task_id, action, detail, prev, digest))
        prev = digest
    return sealed


@dataclass(frozen=True)
class Verdict:
    """What :func:`verify` found: ``ok``, how many rows it read, and the first problem."""

    ok: bool
    rows: int
    seq: int | None = None
    problem: str | None = None
    head: str | None = None
    keyed_from: int | None = None  # the first keyed row, if any
    #: ``(run id, why)`` of runs whose rows are not all stored: the chain may lack their side effects (not ``ok``).
    incomplete: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        if self.ok:
            keyed = f", keyed from row {self.keyed_from}" if self.keyed_from is not None else ""
            return f"audit chain intact: {self.rows} rows{keyed}"
        if self.seq is None and self.incomplete:
            runs = "; ".join(f"run {run}: {why}" for run, why in self.incomplete)
            return (f"audit chain incomplete: its {self.rows} rows are unaltered, but side effects may be missing "
                    f"({runs})")
        return f"audit chain broken at row {self.seq}: {self.problem}"

    def to_dict(self) -> dict[str, Any]:
        """The verdict as plain data."""
        return {"ok": self.ok, "rows": self.rows, "seq": self.seq, "problem": self.problem, "head": self.head,
                "keyed_from": self.keyed_from, "incomplete": [{"run": run, "why": why} for run, why in self.incomplete]}


def verify(rows: Iterable[AuditRow], head: tuple[int, str] | None, *, key: bytes | None = None,
           keyed_from: int | None = None) -> Verdict:
    """Check ``rows`` (in ``seq`` order) against each other and the stored ``head``; the first problem.

    Rows must be numbered 1, 2, … without gaps, each ``prev`` must be the hash of the row
    before, each ``hash`` must match the row's fields, and the last row must be the head.
    Keyed rows are checked with ``key`` (a keyed row without it is a problem); once a
    keyed row is seen, and from row ``keyed_from`` on, every row must be keyed.
    """
    expected, prev, count, first_keyed = 1, GENESIS, 0, None
    for row in rows:
        count += 1
        problem = _row_problem(row, expected, prev, key) or _unkeyed_problem(row, first_keyed, keyed_from)
        if problem is not None:
            return Verdict(False, count, problem[0], problem[1], keyed_from=first_keyed)
        if first_keyed is None and row.hash.startswith(KEYED):
            first_keyed = row.seq
        expected, prev = row.seq + 1, row.hash
    last = expected - 1
    if head is None:
        if last == 0:
            return Verdict(True, 0, head=GENESIS)
        return Verdict(False, count, last, "the chain head is missing (its record was removed)", keyed_from=first_keyed)
    head_seq, head_hash = head
    if head_seq > last:
        return Verdict(False, count, last + 1, f"row {last + 1} is missing (the chain head records {head_seq} "
                                               f"rows, the table ends at {last})", keyed_from=first_keyed)
    if head_seq < last or head_hash != prev:
        return Verdict(False, count, last, f"row {last} does not match the chain head (head: row {head_seq}, "
                                           f"{head_hash[:12]}…)", keyed_from=first_keyed)
    return Verdict(True, count, head=prev, keyed_from=first_keyed)


def _unkeyed_problem(row: AuditRow, first_keyed: int | None, keyed_from: int | None) -> tuple[int, str] | None:
    """A plain row where every row must be keyed: after a keyed row, or from ``keyed_from`` on."""
    if row.hash.startswith(KEYED):
        return None
    if first_keyed is not None:
        return row.seq, (f"row {row.seq} is not keyed, but rows from {first_keyed} on are: the chain was "
                         "rebuilt without the audit key")
    if keyed_from is not None and row.seq >= keyed_from:
        return row.seq, f"row {row.seq} is not keyed, but every row from {keyed_from} on must be"
    return None


def _row_problem(row: AuditRow, expected: int, prev: str, key: bytes | None) -> tuple[int, str] | None:
    """A gap, a broken link, or a hash that does not match the row (a keyed row's, with ``key``)."""
    if row.seq > expected:
        gap = f"row {expected} is missing" if row.seq == expected + 1 else f"rows {expected}-{row.seq - 1} are missing"
        return expected, f"{gap} (the next stored row is {row.seq})"
    if row.seq < expected:
        return row.seq, f"row {row.seq} is out of sequence (expected {expected})"
    if row.prev != prev:
        before = "the genesis hash" if row.seq == 1 else f"row {row.seq - 1}"
        return row.seq, f"row {row.seq} does not link to {before} (its prev hash differs: the row was altered, " \
                        "or one before it was replaced)"
    keyed = row.hash.startswith(KEYED)
    if keyed and key is None:
        return row.seq, f"row {row.seq} is keyed: set {KEY_ENV} to verify it"
    try:
        digest = row_hash(row.seq, row.ts, row.run_id, row.task_id, row.action, row.detail, row.prev,
                          key if keyed else None)
    except (TypeError, ValueError) as exc:
        return row.seq, f"row {row.seq} cannot be hashed ({exc}): it was altered"
    if hmac.compare_digest(digest.encode(), row.hash.encode()):  # bytes: an altered hash may be any text
        return None
    if keyed:
        return row.seq, (f"row {row.seq} does not match the audit key: it was altered, or it was written with "
                         "another key")
    return row.seq, f"row {row.seq} was altered (its fields do not match its hash)"
