"""Approval steps: the run stops ``waiting`` with nothing held, a decision resumes it (docs/approvals.md).

Through the front door: the CLI via typer's runner on a real project folder and SQLite
store, the public API, and a round trip in real subprocesses (one process applies and
exits with the run waiting, a second approves and the run finishes). Every shell task
appends a line to ``effects.log``, so a task that ran twice would show.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import goatclaw
from goatclaw.cli.app import app
from goatclaw.store import Store

RELEASE = """
version: 1
name: release
secrets: [DEPLOY_TOKEN]
tasks:
  build:
    uses: shell
    with: {script: "echo build >> effects.log; echo v1.2"}
  side:
    uses: shell
    with: {script: "echo side >> effects.log"}
  gate:
    uses: approval
    needs: build
    approval:
      message: "Ship ${{ tasks.build.output.stdout | trim }}?"
      timeout: 1h
      inputs:
        type: object
        required: [env]
        properties:
          env: {type: string, enum: [staging, prod]}
          replicas: {type: integer, default: 2}
  deploy:
    uses: shell
    needs: gate
    with:
      script: >-
        echo "deploy ${{ tasks.gate.output.inputs.env }} x${{ tasks.gate.output.inputs.replicas }}
        by ${{ tasks.gate.output.by }}" >> effects.log
"""


def cli(*args: str) -> tuple[int, str]:
    """Run a command as typer runs it; its exit code and everything it printed."""
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def effects(project: Path) -> Counter[str]:
    """How many times each line was appended to effects.log."""
    log = project / "effects.log"
    return Counter(log.read_text().splitlines()) if log.exists() else Counter()


@pytest.fixture
def release(write_pipeline: Callable[..., Path]) -> Path:
    return write_pipeline(RELEASE)


def test_apply_stops_waiting_and_approve_resumes_without_running_anything_twice(release: Path, project: Path,
                                                                               store_path: Path) -> None:
    code, out = cli("apply", "p.yaml", "--output", "plain")
    assert code == 4, out
    assert "gate waits for approval: goatclaw approve" in out
    with Store.open(store_path) as db:
        [run] = db.runs()
        assert run.status == "waiting"
        assert db.running() == [] and db.incomplete_runs() == []  # waiting is not running, nor interrupted
        assert {t.task_id: t.status for t in db.tasks(run.id)} == {"build": "succeeded", "side": "succeeded",
                                                                    "gate": "waiting"}
    code, out = cli("runs", "list")
    assert "waiting" in out and "interrupted" not in out
    assert effects(project) == {"build": 1, "side": 1}

    code, out = cli("approvals", "--json")
    assert code == 0, out
    [request] = json.loads(out)
    ev = request["evidence"]
    assert (request["run_id"], request["task_id"], request["pipeline"]) == (run.id, "gate", "release")
    assert ev["message"] == "Ship v1.2?"
    assert ev["upstream"] == {"build": {"exit_code": 0, "stdout": "v1.2\n", "stderr": ""}}
    assert ev["downstream"] == ["deploy"]
    assert [(p["task"], p["needs"]) for p in ev["permissions"]] == [("deploy", ["shell"])]
    assert ev["cost"] == {"tasks": [], "usd": 0.0, "unpriced": 0}
    assert ev["inputs"]["required"] == ["env"]
    assert request["expires_at"] == pytest.approx(request["requested_at"] + 3600)
    code, out = cli("approvals")
    assert "Ship v1.2?" in out and "then runs: deploy [shell]" in out and "--input env=" in out
    code, out = cli("runs", "show", "last")  # the run says what it waits for, and how to decide it
    assert code == 0 and "approval of gate waiting: Ship v1.2?" in out and f"goatclaw approve {run.id} gate" in out

    code, out = cli("approve", "last", "--input", "env=prod", "--as", "ann", "--output", "plain")
    assert code == 0, out
    assert "kept, not run again" in out
    assert effects(project) == {"build": 1, "side": 1, "deploy prod x2 by ann": 1}
    with Store.open(store_path) as db:
        assert db.run(run.id).status == "succeeded"  # type: ignore[union-attr]
        [decided] = db.approvals(run.id, waiting=False)
        assert (decided["decision"], decided["decided_by"], decided["inputs"]) == ("approved", "ann",
                                                                                    {"env": "prod", "replicas": 2})
    audit = goatclaw.audit_log(store_path, run=run.id, action="approval")
    assert [r.action for r in audit] == ["approval.requested", "approval.approved"]
    assert audit[1].data["by"] == "ann" and audit[1].data["inputs"] == {"env": "prod", "replicas": 2}
    assert goatclaw.verify_audit(store_path).ok

    code, out = cli("approve", "last", "--input", "env=prod", "--as", "bob")  # a second decision
    assert code == 1
    assert "already approved by ann" in out and "a decision is final" in out
    assert effects(project)["deploy prod x2 by ann"] == 1


def test_reject_fails_the_gate_and_its_dependents_do_not_run(release: Path, project: Path, store_path: Path) -> None:
    assert cli("apply", "p.yaml")[0] == 4
    code, out = cli("reject", "last", "--reason", "not on a Friday", "--as", "bob", "--output", "plain")
    assert code == 1, out
    assert "rejected by bob: not on a Friday" in out
    with Store.open(store_path) as db:
        [run] = db.runs()
        tasks = {t.task_id: t for t in db.tasks(run.id)}
        assert (run.status, tasks["gate"].status, tasks["gate"].error_class) == ("failed", "failed", "rejected")
        assert tasks["deploy"].status == "upstream_failed"
        assert db.dead_letters(run_id=run.id) == []  # a person's no is not a dead letter
    assert effects(project) == {"build": 1, "side": 1}
    assert [r.action for r in goatclaw.audit_log(store_path, action="approval.rejected")] == ["approval.rejected"]
    code, out = cli("runs", "show", "last")
    assert "approval of gate rejected by bob at " in out and ": not on a Friday" in out
    code, out = cli("runs", "show", "last", "--json")
    assert [(r["task_id"], r["decision"]) for r in json.loads(out)["approvals"]] == [("gate", "rejected")]
    code, out = cli("approve", "last", "--input", "env=prod")
    assert code == 1 and "already rejected by bob" in out


def test_a_reason_is_required_to_reject(release: Path) -> None:
    assert cli("apply", "p.yaml")[0] == 4
    code, out = cli("reject", "last")
    assert code == 2 and "--reason" in out


def test_a_missed_timeout_is_a_rejection(release: Path, project: Path, store_path: Path) -> None:
    assert cli("apply", "p.yaml")[0] == 4
    assert goatclaw.expire_approvals(now=time.time() + 1800) == []  # not yet
    [expired] = goatclaw.expire_approvals(now=time.time() + 3601)
    assert (expired["task_id"], expired["decision"], expired["by"]) == ("gate", "rejected", "timeout")
    assert goatclaw.approvals() == []
    code, out = cli("approve", "last", "--input", "env=prod")
    assert code == 1 and "timed out" in out
    code, out = cli("apply", "p.yaml", "--resume", "--output", "plain")  # the run goes on, and the gate fails
    assert code == 1, out
    with Store.open(store_path) as db:
        [run] = db.runs()
        gate = next(t for t in db.tasks(run.id) if t.task_id == "gate")
        assert (run.status, gate.error_class, gate.error) == ("failed", "rejected", "rejected by timeout: no "
                                                                                    "decision within 3600s")
    assert effects(project) == {"build": 1, "side": 1}
    assert [r.action for r in goatclaw.audit_log(store_path, action="approval")] == ["approval.requested",
                                                                                      "approval.expired"]


def test_listing_approvals_enforces_timeouts(write_pipeline: Callable[..., Path]) -> None:
    write_pipeline("""
        version: 1
        name: quick
        tasks:
          gate: {uses: approval, timeout: 50ms}
        """)
    assert cli("apply", "p.yaml")[0] == 4
    time.sleep(0.1)
    code, out = cli("approvals")
    assert code == 0 and "no approval is waiting" in out
    code, out = cli("approvals", "--all", "--json")
    [row] = json.loads(out)
    assert (row["decision"], row["decided_by"], row["timeout"]) == ("rejected", "timeout", 0.05)


@pytest.mark.parametrize(("given", "said"), [
    (["--input", "env=dev"], "gate.inputs: env: 'dev' is not one of ['staging', 'prod']"),
    ([], "'env' is a required property"),
    (["--input", "env=prod", "--input", "replicas=many"], "replicas: 'many' is not of type 'integer'"),
    (["--input", "env"], "expected key=value"),
])
def test_inputs_that_do_not_fit_the_schema_are_exit_2_and_decide_nothing(release: Path, given: list[str],
                                                                        said: str) -> None:
    assert cli("apply", "p.yaml")[0] == 4
    code, out = cli("approve", "last", *given)
    assert code == 2, out
    assert said in out
    [still] = goatclaw.approvals()
    assert still["decision"] is None


def test_inputs_to_an_approval_that_asks_for_none_are_refused(write_pipeline: Callable[..., Path]) -> None:
    write_pipeline("""
        version: 1
        name: plain
        tasks:
          gate: {uses: approval}
        """)
    assert cli("apply", "p.yaml")[0] == 4
    code, out = cli("approve", "last", "--input", "x=1")
    assert code == 2 and "asks for no inputs" in out


def test_a_run_with_two_approvals_waits_for_each(write_pipeline: Callable[..., Path], project: Path,
                                                 store_path: Path) -> None:
    write_pipeline("""
        version: 1
        name: two
        tasks:
          a_ok: {uses: approval, approval: "Ship A?"}
          b_ok: {uses: approval, approval: "Ship B?"}
          a:
            uses: shell
            needs: a_ok
            with: {script: "echo a >> effects.log"}
          b:
            uses: shell
            needs: b_ok
            with: {script: "echo b >> effects.log"}
          both:
            uses: shell
            needs: [a, b]
            with: {script: "echo both >> effects.log"}
        """)
    assert cli("apply", "p.yaml")[0] == 4
    first = {r["task_id"]: r["requested_at"] for r in goatclaw.approvals()}
    assert set(first) == {"a_ok", "b_ok"}
    code, out = cli("approve", "last")
    assert code == 1 and "waits for 2 approvals (a_ok, b_ok): name the task" in out
    code, out = cli("approve", "last", "a_ok")
    assert code == 4, out  # a ran; the run waits again, for b_ok
    assert effects(project) == {"a": 1}
    [left] = goatclaw.approvals()
    assert (left["task_id"], left["requested_at"]) == ("b_ok", first["b_ok"])  # not renewed: its timeout holds
    code, out = cli("approve", "last")  # the one left: no task needed
    assert code == 0, out
    assert effects(project) == {"a": 1, "b": 1, "both": 1}


def test_approval_on_any_task_runs_the_task_once_approved(write_pipeline: Callable[..., Path], project: Path) -> None:
    write_pipeline("""
        version: 1
        name: guarded
        tasks:
          deploy:
            uses: shell
            approval: {message: "Run the deploy script?"}
            with: {script: "echo deploy >> effects.log"}
          note:
            uses: echo
            needs: deploy
            with: {value: "deployed, approved by ${{ tasks.deploy.approval.by }}"}
        """)
    assert cli("apply", "p.yaml")[0] == 4
    [request] = goatclaw.approvals()
    assert request["evidence"]["downstream"] == ["deploy", "note"]  # the gated task itself runs after it
    assert effects(project) == {}
    result = goatclaw.decide("last", approve=True, who="ann")
    assert result is not None and result.ok
    assert result.outputs["note"] == "deployed, approved by ann"
    assert effects(project) == {"deploy": 1}


def test_a_task_whose_if_is_false_is_skipped_without_asking(write_pipeline: Callable[..., Path]) -> None:
    write_pipeline("""
        version: 1
        name: maybe
        vars: {risky: false}
        tasks:
          gate: {uses: approval, if: "vars.risky"}
          after: {uses: echo, needs: gate, with: {value: 1}}
        """)
    code, out = cli("apply", "p.yaml")
    assert code == 0, out
    assert goatclaw.approvals(waiting=False) == []


def test_no_resume_records_the_decision_and_a_later_resume_finishes(release: Path, project: Path) -> None:
    assert cli("apply", "p.yaml")[0] == 4
    code, out = cli("approve", "last", "--input", "env=staging", "--as", "ann", "--no-resume")
    assert code == 0 and "approved" in out and "not resumed" in out
    assert effects(project) == {"build": 1, "side": 1}
    code, out = cli("apply", "p.yaml", "--resume")
    assert code == 0, out
    assert effects(project) == {"build": 1, "side": 1, "deploy staging x2 by ann": 1}


def test_the_api_decides_by_run_id_and_returns_the_resumed_result(release: Path, project: Path) -> None:
    waiting = goatclaw.run("p.yaml")
    assert waiting.status is goatclaw.RunStatus.WAITING
    assert waiting.tasks["gate"].status is goatclaw.TaskState.WAITING
    assert waiting.tasks["deploy"].status is goatclaw.TaskState.PENDING
    assert goatclaw.decide(waiting.run_id[:10], "gate", approve=True, who="ci", inputs={"env": "prod"},
                           resume=False) is None
    result = asyncio.run(goatclaw.arun("p.yaml", resume=waiting.run_id))
    assert result.ok and result.run_id == waiting.run_id
    assert result.outputs["gate"]["inputs"] == {"env": "prod", "replicas": 2}
    assert set(result.resumed) == {"build", "side"}
    with pytest.raises(goatclaw.GoatclawError, match="a decision is final"):
        asyncio.run(goatclaw.adecide(waiting.run_id, approve=False, who="x", reason="late"))


def test_evidence_masks_secrets_and_bounds_large_outputs(write_pipeline: Callable[..., Path],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPLOY_TOKEN", "tok-s3cr3t-value")
    write_pipeline("""
        version: 1
        name: leaky
        secrets: [DEPLOY_TOKEN]
        tasks:
          token:
            uses: echo
            with: {value: "the token is ${{ secrets.DEPLOY_TOKEN }}"}
          big:
            uses: echo
            with: {value: "${{ 'x' * 20000 }}"}
          gate:
            uses: approval
            needs: [token, big]
            approval: "Use ${{ secrets.DEPLOY_TOKEN }}?"
        """)
    assert cli("apply", "p.yaml")[0] == 4
    code, out = cli("approvals", "--json")
    assert code == 0 and "tok-s3cr3t-value" not in out
    ev = json.loads(out)[0]["evidence"]
    assert ev["upstream"]["token"] == "the token is ***" and ev["message"] == "Use ***?"
    assert ev["upstream"]["big"].endswith("(20,002 characters, cut at 4,000)")
    assert len(ev["upstream"]["big"]) < 4100


def test_a_run_without_a_store_cannot_wait(write_pipeline: Callable[..., Path]) -> None:
    write_pipeline("""
        version: 1
        name: nostore
        tasks:
          gate: {uses: approval}
        """)
    result = goatclaw.run("p.yaml", store=False)
    assert result.status is goatclaw.RunStatus.FAILED
    assert "needs the store" in (result.tasks["gate"].error or "")


@pytest.mark.parametrize(("task", "said"), [
    ("{uses: echo, approval: 5}", "tasks.t.approval"),
    ("{uses: echo, approval: {timeot: 1h}}", "timeot"),
    ("{uses: echo, approval: {timeout: soon}}", "tasks.t.approval.timeout"),
    ("{uses: echo, approval: {inputs: {type: string}}}", "inputs must be the schema of an object"),
    ("{uses: echo, approval: {inputs: {type: object, properties: {n: {type: nope}}}}}", "not a valid JSON Schema"),
    ("{uses: approval, with: {message: hi}}", "message"),
    ("{uses: echo, approval: 'Go ${{ tasks.nope.output }}?'}", "unknown task 'nope'"),
    ("{uses: echo, approval: true}\n  u: {uses: echo, fallback: t}", "cannot wait for an approval"),
])
def test_bad_approvals_are_located_errors(write_pipeline: Callable[..., Path], task: str, said: str) -> None:
    path = write_pipeline(f"version: 1\nname: bad\ntasks:\n  t: {task}\n")
    code, out = cli("validate", str(path))
    assert code == 2, out
    assert "p.yaml:4:" in out and said in out


def test_an_approval_cannot_be_in_finally(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        name: late
        tasks:
          a: {uses: echo, with: {value: 1}}
        finally:
          ask: {uses: approval}
        """)
    code, out = cli("validate", str(path))
    assert code == 2 and "p.yaml:6:" in out and "cannot be in finally" in out


@pytest.mark.slow  # reads litellm's price map
def test_the_cost_of_what_follows_is_estimated_as_plan_cost_does(write_pipeline: Callable[..., Path],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-used")  # the llm task does not run: nobody approves it here
    write_pipeline("""
        version: 1
        name: costly
        tasks:
          gate: {uses: approval}
          summarise:
            uses: llm
            needs: gate
            with: {model: gpt-4o-mini, prompt: "Summarise the release notes in one line.", max_tokens: 100}
        """)
    assert goatclaw.run("p.yaml").status is goatclaw.RunStatus.WAITING
    [request] = goatclaw.approvals()
    cost = request["evidence"]["cost"]
    [row] = cost["tasks"]
    assert (row["task"], row["model"], row["max_tokens"]) == ("summarise", "gpt-4o-mini", 100)
    assert row["usd"] is not None and 0 < cost["usd"] == row["usd"] < 0.01
    assert [p["needs"] for p in request["evidence"]["permissions"]] == [["network"]]


# -- the round trip in real processes ---------------------------------------------------------------------


def _goatclaw(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("GOATCLAW_STORE", None)
    return subprocess.run([sys.executable, "-m", "goatclaw", *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_approval_round_trip_in_two_processes(release: Path, project: Path, store_path: Path) -> None:
    first = _goatclaw(project, "apply", "p.yaml", "--output", "plain")
    assert first.returncode == 4, first.stdout + first.stderr  # the process ended; the run waits in the store
    with Store.open(store_path) as db:
        [run] = db.runs()
        assert run.status == "waiting" and not run.interrupted
    assert effects(project) == {"build": 1, "side": 1}
    second = _goatclaw(project, "approve", "last", "--input", "env=prod", "--as", "ann", "--output", "plain")
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"run {run.id} resumed" in second.stdout and f"run {run.id} succeeded" in second.stdout
    assert effects(project) == {"build": 1, "side": 1, "deploy prod x2 by ann": 1}  # nothing before it ran twice
    with Store.open(store_path) as db:
        assert [r.id for r in db.runs()] == [run.id]  # the same run, not a new one
        assert db.run(run.id).status == "succeeded"  # type: ignore[union-attr]


def test_a_changed_pipeline_keeps_the_decision_and_says_how_to_resume(release: Path, project: Path) -> None:
    assert cli("apply", "p.yaml")[0] == 4
    release.write_text(release.read_text().replace("name: release", "name: release\ndescription: changed"))
    code, out = cli("approve", "last", "--input", "env=prod", "--as", "ann")
    assert code == 1
    assert "the decision is recorded, but run" in out and "--force" in out
    code, out = cli("apply", "p.yaml", "--resume", "--force")
    assert code == 0, out
    assert effects(project) == {"build": 1, "side": 1, "deploy prod x2 by ann": 1}


def test_prune_keeps_a_waiting_run_and_drops_a_decided_ones_requests(release: Path, store_path: Path) -> None:
    assert cli("apply", "p.yaml")[0] == 4
    time.sleep(0.01)
    code, out = cli("runs", "prune", "--older-than", "0s")
    assert code == 0 and "deleted 0 runs" in out, out
    assert len(goatclaw.approvals()) == 1
    assert cli("reject", "last", "--reason", "no")[0] == 1
    time.sleep(0.01)
    code, out = cli("runs", "prune", "--older-than", "0s")
    assert code == 0 and "deleted 1 run" in out, out
    assert goatclaw.approvals(waiting=False) == []


def test_a_junit_report_of_a_waiting_run_does_not_pass_the_waiting_task(release: Path, project: Path) -> None:
    code, out = cli("apply", "p.yaml", "--report", "junit:out/r.xml")
    assert code == 4, out
    report = (project / "out" / "r.xml").read_text()
    gate = report[report.index('name="gate"'):]
    assert "<skipped" in gate.split("</testcase>")[0] and "waiting" in gate.split("</testcase>")[0]


def test_a_decision_recorded_while_the_run_goes_on_is_taken_before_it_stops(write_pipeline: Callable[..., Path],
                                                                            project: Path) -> None:
    """Another approver decides b_ok (a real second process) after this run found it waiting: the run goes on."""
    write_pipeline(f"""
        version: 1
        name: together
        tasks:
          a_ok: {{uses: approval}}
          b_ok: {{uses: approval}}
          a:
            uses: shell
            needs: a_ok
            with:
              script: 'echo a >> effects.log; "$PY" -m goatclaw approve ${{{{ run.id }}}} b_ok --as bob --no-resume'
              env: {{PY: "{sys.executable}"}}
          b:
            uses: shell
            needs: b_ok
            with: {{script: "echo b >> effects.log"}}
        """)
    assert cli("apply", "p.yaml")[0] == 4
    code, out = cli("approve", "last", "a_ok", "--as", "ann", "--output", "plain")
    assert code == 0, out
    assert effects(project) == {"a": 1, "b": 1}
    decided = {r["task_id"]: r["decided_by"] for r in goatclaw.approvals(waiting=False)}
    assert decided == {"a_ok": "ann", "b_ok": "bob"}


@pytest.mark.slow  # imports litellm
def test_a_pipeline_called_as_a_tool_cannot_wait(write_pipeline: Callable[..., Path], srv: Any,
                                                  store_path: Path) -> None:
    """A model's tool call waits for its answer, not for a person: the child's approval fails, nothing waits."""
    from openai_server import Reply, final, scripted, tool_call

    write_pipeline("""
        version: 1
        name: gated
        description: A pipeline with an approval in it.
        tasks:
          ok: {uses: approval}
          after: {uses: echo, needs: ok, with: {value: done}}
        """, name="pipelines/gated.yaml")
    srv.respond = scripted(Reply(None, tool_calls=[tool_call("gated", {})]), final)
    tools = json.dumps([{"pipeline": "pipelines/gated.yaml"}])
    write_pipeline(f"""
        version: 1
        name: caller
        tasks:
          ask:
            uses: llm
            retry: {{attempts: 1}}
            with:
              model: openai/gpt-4o-mini
              api_base: {srv.api_base}
              api_key: sk-test
              prompt: use the tools
              tools: {tools}
        """)
    result = goatclaw.run("p.yaml")
    assert result.status is not goatclaw.RunStatus.WAITING
    with Store.open(store_path) as db:
        assert [r.status for r in db.runs() if r.pipeline == "gated"] == ["failed"]
        [child] = [r for r in db.runs() if r.pipeline == "gated"]
        ok = next(t for t in db.tasks(child.id) if t.task_id == "ok")
        assert "cannot wait inside a pipeline called as a tool" in (ok.error or "")
    assert goatclaw.approvals(waiting=False) == []


def test_approve_with_json_output_masks_the_runs_secrets(write_pipeline: Callable[..., Path],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPLOY_TOKEN", "tok-s3cr3t-value")
    write_pipeline("""
        version: 1
        name: leaky
        secrets: [DEPLOY_TOKEN]
        tasks:
          gate: {uses: approval}
          use: {uses: echo, needs: gate, with: {value: "token ${{ secrets.DEPLOY_TOKEN }}"}}
        """)
    assert cli("apply", "p.yaml")[0] == 4
    code, out = cli("approve", "last", "--output", "json")
    assert code == 0, out
    assert json.loads(out)["tasks"]["use"]["output"] == "token ***"
