"""``goatclaw run "GOAL"``: a model (the local OpenAI-compatible server) drafts, goatclaw checks, repairs, runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openai_server import FakeOpenAI, Reply, scripted
from typer.testing import CliRunner

from goatclaw.cli.app import app

GOAL = "Write a greeting to out/hello.txt"

#: The first draft: an unknown `needs` and a file.write the pipeline grants no folder for.
BROKEN = {"version": 1, "tasks": {
    "greet": {"uses": "echo", "with": {"value": "hello"}},
    "save": {"uses": "file.write", "needs": ["greeting"],
             "with": {"path": "out/hello.txt", "content": "${{ tasks.greet.output }}"}}}}
#: The repair: `needs` names the real task, and the write is granted.
FIXED = {"version": 1, "permissions": {"files": {"write": ["out/"]}}, "tasks": {
    "greet": {"uses": "echo", "with": {"value": "hello"}},
    "save": {"uses": "file.write", "needs": ["greet"],
             "with": {"path": "out/hello.txt", "content": "${{ tasks.greet.output }}"}}}}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project whose ceiling refuses shell, and whose model is the local server's."""
    (tmp_path / "goatclaw.yaml").write_text(
        "version: 1\nmodel: openai/gpt-4o-mini\npermissions:\n  shell: false\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("GOATCLAW_STORE", raising=False)
    monkeypatch.delenv("GOATCLAW_LLM", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    return tmp_path


def run(*args: str) -> Any:
    return CliRunner().invoke(app, ["run", *args], catch_exceptions=False)


def answer(doc: Any) -> Reply:
    return Reply(json.dumps(doc))


def test_an_invalid_first_draft_is_repaired_from_its_located_problems_and_the_repair_runs(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeOpenAI(scripted(answer(BROKEN), answer(FIXED))) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.api_base)
        result = run(GOAL, "--yes")
    assert result.exit_code == 0, result.output
    assert (project / "out" / "hello.txt").read_text() == "hello"
    assert len(srv.requests) == 2
    feedback = srv.requests[1]["messages"][-1]["content"]
    assert "write-a-greeting-to-out-hello.yaml:" in feedback  # located: file:line:col
    assert "greeting" in feedback and "needs" in feedback
    assert "needs permissions.files.write, which nothing grants" in feedback  # the missing grant
    system = srv.requests[0]["messages"][0]["content"]
    assert "file.write" in system and '"shell": false' in system  # the catalogue and the ceiling
    assert srv.requests[0]["response_format"]["type"] == "json_schema"  # structured output where supported
    saved = project / "pipelines" / "write-a-greeting-to-out-hello.yaml"
    assert saved.read_text().startswith(f"# goal: {GOAL}\n")


def test_a_model_that_never_gives_a_valid_pipeline_stops_after_the_bound_exit_2_nothing_run(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeOpenAI(scripted(answer(BROKEN))) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.api_base)
        result = run(GOAL, "--yes", "--repairs", "2")
    assert result.exit_code == 2, result.output
    assert len(srv.requests) == 3  # the draft and two repairs
    assert "gave no valid pipeline in 3 drafts" in result.output
    assert "greeting" in result.output  # the last problems, shown
    assert not (project / "out").exists()
    assert not (project / "pipelines").exists() or not list((project / "pipelines").glob("*.yaml"))
    assert not (project / ".goatclaw").exists()  # no run was stored


def test_without_a_terminal_or_yes_the_plan_is_printed_and_saved_not_run(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeOpenAI(scripted(answer(FIXED))) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.api_base)
        result = run(GOAL)
    assert result.exit_code == 0, result.output
    assert "not run" in result.output
    assert "file.write" in result.output and "tasks:" in result.output  # the graph and the YAML
    assert not (project / "out").exists()


def test_planning_calls_are_recorded_in_the_run_they_plan(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from goatclaw.history import llm_costs
    from goatclaw.store import Store

    with FakeOpenAI(scripted(answer(BROKEN), answer(FIXED))) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.api_base)
        assert run(GOAL, "--yes").exit_code == 0
    with Store.open(project / ".goatclaw" / "goatclaw.db") as db:
        row = db.runs(limit=1)[0]
        events = db.events(row.id)
    planning = [e for e in events if e["topic"] == "llm.call" and e["task"] == "plan"]
    assert [e["data"]["attempt"] for e in planning] == [1, 2]
    assert llm_costs(events)["calls"] == 2


def test_a_planned_file_never_overwrites_a_different_one(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = project / "pipelines" / "write-a-greeting-to-out-hello.yaml"
    mine.parent.mkdir()
    mine.write_text("# my own\n")
    with FakeOpenAI(scripted(answer(FIXED))) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.api_base)
        assert run(GOAL).exit_code == 0
    assert mine.read_text() == "# my own\n"
    assert (project / "pipelines" / "write-a-greeting-to-out-hello-2.yaml").exists()
