"""Judge rules and the fix loop, against the real local OpenAI-compatible server (no mocks).

The server is scripted to give a bad answer first and a good one once it sees feedback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from openai_server import FakeOpenAI, Reply

import goatclaw
from goatclaw import llm as room
from goatclaw.store import Store

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
BAD = json.dumps({"score": 0.2})
GOOD = json.dumps({"title": "Goats", "score": 0.9})


@pytest.fixture(scope="module", autouse=True)
def litellm_imported() -> None:
    """Pay litellm's import once, outside the tests' task timeouts."""
    room._litellm()


def _text(body: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content")) for m in body.get("messages", []))


def is_judge(body: dict[str, Any]) -> bool:
    return "strict reviewer" in _text(body)


def bad_then_good(body: dict[str, Any]) -> Reply:
    """A bad answer, and a good one once the request carries feedback."""
    return Reply(GOOD if "rejected because" in _text(body) else BAD)


def pipeline(write: Callable[..., Path], srv: FakeOpenAI, *, fix: str = "{attempts: 2}", retry: str = "{attempts: 1}",
             rules: str = "") -> Path:
    return write(f"""
        version: 1
        name: fix-test
        tasks:
          ask:
            uses: llm
            retry: {retry}
            fix: {fix}
            with:
              api_base: {srv.api_base}
              api_key: sk-test
              model: openai/gpt-4o-mini
              output: json
              prompt: Give a title and a score as JSON
            validate:
              - schema: {{type: object, properties: {{data: {{type: object, required: [title]}}}}}}
                message: the answer needs a title
              - expr: output.data.score >= 0.8
                message: the score must be at least 0.8
              {rules}
        """)


def events(result: goatclaw.RunResult, topic: str) -> list[dict[str, Any]]:
    assert result.store_path is not None
    with Store.open(result.store_path) as db:
        return [e for e in db.events(result.run_id) if e["topic"] == topic]


def test_feedback_carries_every_failed_rule_and_the_fixed_output_passes_all_rules(write_pipeline, srv) -> None:
    srv.respond = bad_then_good
    result = goatclaw.run(pipeline(write_pipeline, srv))
    res = result.tasks["ask"]
    assert result.ok, res.error
    assert res.output["data"] == {"title": "Goats", "score": 0.9}
    assert (res.fixes, res.attempts) == (1, 1)
    assert len(srv.requests) == 2
    feedback = srv.requests[1]["messages"]
    assert [m["role"] for m in feedback] == ["user", "assistant", "user"]
    assert feedback[1]["content"] == BAD
    assert "the answer needs a title" in feedback[2]["content"]
    assert "the score must be at least 0.8" in feedback[2]["content"]
    fixes = events(result, "task.fix")
    assert len(fixes) == 1 and fixes[0]["data"]["passed"] is True and fixes[0]["data"]["mode"] == "feedback"
    assert '+    "title": "Goats"' in fixes[0]["data"]["diff"]
    rules = events(result, "task.rule")
    assert [r["data"]["passed"] for r in rules] == [False, False, True, True]  # the stored output passed every rule


def test_an_output_still_rejected_after_every_fix_attempt_fails_the_task(write_pipeline, srv) -> None:
    srv.respond = lambda body: Reply(BAD)
    result = goatclaw.run(pipeline(write_pipeline, srv, fix="{attempts: 3}"))
    res = result.tasks["ask"]
    assert not result.ok and res.error_class == "validation"
    assert "still rejected after 3 fix attempts" in (res.error or "")
    assert (res.fixes, res.attempts) == (3, 1)  # fix attempts are counted apart from retries
    assert len(srv.requests) == 4


def test_a_500_during_a_fix_is_retried_without_eating_a_fix_attempt(write_pipeline, srv) -> None:
    calls: list[int] = []

    def script(body: dict[str, Any]) -> Reply:
        calls.append(1)
        if len(calls) == 2:
            return Reply(status=500, error="boom")
        return bad_then_good(body)

    srv.respond = script
    result = goatclaw.run(pipeline(write_pipeline, srv, fix="{attempts: 1}", retry="{attempts: 3, delay: 0}"))
    res = result.tasks["ask"]
    assert result.ok, res.error
    assert (res.fixes, res.attempts) == (1, 2)
    assert len(srv.requests) == 3


@pytest.mark.parametrize(("threshold", "ok"), [(0.5, True), (0.7, False)])
def test_a_judge_passes_on_a_pass_verdict_with_a_score_at_the_threshold(write_pipeline, srv, threshold: float,
                                                                        ok: bool) -> None:
    def script(body: dict[str, Any]) -> Reply:
        if is_judge(body):
            return Reply(json.dumps({"verdict": "pass", "score": 0.6, "reason": "names goats"}))
        return Reply(GOOD)

    srv.respond = script
    rule = (f"- judge: The title is about ${{{{ vars.topic | default('goats') }}}}\n"
            f"                threshold: {threshold}")
    result = goatclaw.run(pipeline(write_pipeline, srv, fix="{attempts: 0}", rules=rule))
    assert result.ok is ok, result.tasks["ask"].error
    judge = [r for r in srv.requests if is_judge(r)]
    assert len(judge) == 1 and "The title is about goats" in _text(judge[0]) and "Goats" in _text(judge[0])
    verdict = events(result, "task.rule")[-1]["data"]
    assert verdict["kind"] == "judge" and verdict["passed"] is ok and "score 0.6" in verdict["message"]


def test_a_judge_is_not_asked_when_a_cheaper_rule_failed(write_pipeline, srv) -> None:
    srv.respond = lambda body: Reply(BAD)
    result = goatclaw.run(pipeline(write_pipeline, srv, fix="{attempts: 0}", rules="- judge: It is good"))
    assert not result.ok
    assert not any(is_judge(r) for r in srv.requests)


def test_a_judge_fail_verdict_is_fed_back_and_fixed(write_pipeline, srv) -> None:
    def script(body: dict[str, Any]) -> Reply:
        if is_judge(body):
            good = "Better" in _text(body)
            return Reply(json.dumps({"verdict": "pass" if good else "fail", "score": 0.9 if good else 0.1,
                                     "reason": "fine" if good else "too vague"}))
        if "too vague" in _text(body):
            return Reply(json.dumps({"title": "Better goats", "score": 0.9}))
        return Reply(GOOD)

    srv.respond = script
    result = goatclaw.run(pipeline(write_pipeline, srv, rules="- judge: The title is specific"))
    res = result.tasks["ask"]
    assert result.ok, res.error
    assert res.output["data"]["title"] == "Better goats" and res.fixes == 1


def test_repair_mode_rewrites_a_non_llm_output(write_pipeline, srv, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", srv.api_base)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    srv.respond = lambda body: Reply(json.dumps({"name": "Ada", "email": "ada@example.com"}))
    path = write_pipeline("""
        version: 1
        tasks:
          person:
            uses: echo
            with: {name: Ada, email: not-an-email}
            fix: {mode: repair, attempts: 1, model: openai/gpt-4o-mini}
            validate:
              - expr: "'@' in output.email"
                message: email must be an email address
        """)
    result = goatclaw.run(path)
    res = result.tasks["person"]
    assert result.ok, res.error
    assert res.output == {"name": "Ada", "email": "ada@example.com"} and res.fixes == 1
    asked = _text(srv.requests[0])
    assert "email must be an email address" in asked and "not-an-email" in asked
    assert events(result, "task.fix")[0]["data"]["mode"] == "repair"


def test_rerun_mode_runs_the_task_again_unchanged(write_pipeline, srv) -> None:
    replies = iter([BAD, GOOD])
    srv.respond = lambda body: Reply(next(replies))
    result = goatclaw.run(pipeline(write_pipeline, srv, fix="{mode: rerun, attempts: 2}"))
    res = result.tasks["ask"]
    assert result.ok, res.error
    assert res.fixes == 1 and len(srv.requests) == 2
    assert srv.requests[0]["messages"] == srv.requests[1]["messages"]


def test_the_validated_digest_replays_offline_and_runs_show_tells_how_it_was_fixed(tmp_path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OPENAI_API_KEY": "sk-none", "COLUMNS": "200"}
    store = str(tmp_path / "db")
    done = subprocess.run([sys.executable, "-m", "goatclaw", "apply", "pipelines/validated-digest.yaml",
                           "--llm", "replay", "--store", store],
                          cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    shown = subprocess.run([sys.executable, "-m", "goatclaw", "runs", "show", "--store", store], cwd=REPO,
                           capture_output=True, text=True, timeout=60, env=env)
    assert shown.returncode == 0, shown.stderr
    rejected = "digest rejected because the output failed validation: rule 2 (expr): give at least three items"
    assert rejected in shown.stdout
    assert "fixed after 1 attempt (feedback)" in shown.stdout
    assert "llm: 3 calls" in shown.stdout  # the answer, the feedback and the judge


def test_validate_warns_about_judges_and_repairs_without_a_model(project, write_pipeline) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          a:
            uses: echo
            with: {value: hi}
            validate:
              - judge: It greets
              - judge: It is short
                model: openai/gpt-4o-mini
            fix: {mode: repair}
        """)
    _, problems = goatclaw.check(path)
    found = {(p.path, p.severity) for p in problems if "needs a model" in p.message}
    assert found == {("tasks.a.validate[0].judge", "warn"), ("tasks.a.fix", "warn")}
    (project / "goatclaw.yaml").write_text("version: 1\nmodel: openai/gpt-4o-mini\n")
    _, problems = goatclaw.check(path)
    assert not [p for p in problems if "needs a model" in p.message]


def test_the_engines_own_judge_and_repair_calls_need_the_tasks_network_grant(write_pipeline, srv) -> None:
    srv.respond = lambda body: Reply(json.dumps({"verdict": "pass", "score": 1, "reason": "ok"}))
    path = write_pipeline("""
        version: 1
        name: judged
        permissions: {network: ["127.0.0.1"]}
        tasks:
          judged:
            uses: echo
            with: {value: 1}
            validate:
              - judge: The value is one
                model: openai/gpt-4o-mini
          repaired:
            uses: echo
            with: {value: 1}
            fix: {mode: repair, model: anthropic/claude-3-5-haiku-latest}
            validate:
              - expr: output.value == 2
        """)
    result = goatclaw.run(path)
    judged, repaired = result.tasks["judged"], result.tasks["repaired"]
    assert judged.error_class == "permission_denied" and "api.openai.com" in (judged.error or "")
    assert "permissions.network" in (judged.error or "")
    assert repaired.error_class == "permission_denied" and "api.anthropic.com" in (repaired.error or "")
    assert srv.requests == []  # nothing was asked anywhere
