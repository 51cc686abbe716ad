"""Approval steps over ``goatclaw serve`` (real HTTP): a run waits, a person with the approve scope decides.

The run resumes through the server's queue under its own id; what finished before the
approval does not run again; a rejection fails the waiting task as ``rejected``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from live_server import live, make_project, run_to_end, sse, store_of, token

import goatclaw
from goatclaw.server.app import build_app

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    return make_project(tmp_path / "demo")


def test_approve_a_waiting_run_over_http(demo: Path) -> None:
    run, read, release = token(demo, "run"), token(demo, "read", name="r"), token(demo, "approve", name="rel")
    with live(build_app([demo])) as server, server.client(run) as http:
        run_id = http.post("/api/projects/demo/runs", json={"pipeline": "pipelines/gated.yaml"}).json()["run_id"]
        waiting = run_to_end(http, "demo", run_id)
        assert waiting["status"] == "waiting"
        build = next(t for t in waiting["tasks"] if t["id"] == "build")
        end = sse(http.get(f"/api/projects/demo/runs/{run_id}/events").text)[-1]
        assert end["event"] == "end" and json.loads(end["data"])["status"] == "waiting"
        [request] = http.get("/api/projects/demo/approvals").json()["approvals"]
        assert (request["run_id"], request["task_id"]) == (run_id, "review")
        assert request["evidence"]["message"] == "Release 1.0?"
        for key in (read, run):
            with server.client(key) as other:
                denied = other.post(f"/api/projects/demo/runs/{run_id}/approve", json={"inputs": {"channel": "beta"}})
                assert denied.status_code == 403 and "'approve' scope" in denied.json()["error"]
        with server.client(release) as approver:
            bad = approver.post(f"/api/projects/demo/runs/{run_id}/approve", json={"inputs": {"channel": "nightly"}})
            assert bad.status_code == 422 and "schema" in bad.json()["error"]
            ok = approver.post(f"/api/projects/demo/runs/{run_id}/approve", json={"inputs": {"channel": "stable"}})
            assert ok.status_code == 202, ok.text
            assert ok.json()["decision"] == "approved" and ok.json()["resumed"] == "queued"
            done = run_to_end(http, "demo", run_id)
            assert done["status"] == "succeeded", done
            tasks = {t["id"]: t for t in done["tasks"]}
            assert tasks["publish"]["output"] == "1.0 on stable by token:rel"
            assert tasks["build"]["started_at"] == build["started_at"]  # not run again
            again = approver.post(f"/api/projects/demo/runs/{run_id}/approve", json={"inputs": {"channel": "beta"}})
            assert again.status_code == 409
            # a second run, rejected
            second = http.post("/api/projects/demo/runs", json={"pipeline": "pipelines/gated.yaml"}).json()["run_id"]
            assert run_to_end(http, "demo", second)["status"] == "waiting"
            no = approver.post(f"/api/projects/demo/runs/{second}/reject", json={"reason": "not today"})
            assert no.status_code == 202
            rejected = run_to_end(http, "demo", second)
            assert rejected["status"] == "failed"
            assert {t["id"]: t for t in rejected["tasks"]}["review"]["error_class"] == "rejected"
        assert http.get("/api/projects/demo/approvals").json()["approvals"] == []
    actions = [r.action for r in goatclaw.audit_log(store_of(demo), run=run_id)]
    assert "approval.approved" in actions
