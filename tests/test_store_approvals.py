"""The approvals table (migration 018_approvals) on a real SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest

from goatclaw.store import Store


def test_request_list_and_decide_once(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as store:
        store.request_approval("r1", "deploy", {"upstream": {"build": 1}}, timeout=60.0, now=10.0)
        [row] = store.approvals()
        assert (row["run_id"], row["task_id"], row["timeout"], row["evidence"]) == (
            "r1", "deploy", 60.0, {"upstream": {"build": 1}})
        assert store.decide_approval("r1", "deploy", "approved", by="ann", inputs={"n": 2}, now=20.0)
        assert store.approvals() == []
        assert not store.decide_approval("r1", "deploy", "rejected", by="bob")  # decided already
        [done] = store.approvals("r1", waiting=False)
        assert (done["decision"], done["decided_by"], done["inputs"]) == ("approved", "ann", {"n": 2})


def test_unknown_decision_is_refused(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as store, pytest.raises(ValueError):
        store.decide_approval("r1", "t", "maybe", by="ann")
