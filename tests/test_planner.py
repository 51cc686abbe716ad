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


def test_planning_recorded_once_replays_offline_with_no_server(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeOpenAI(scripted(answer(BROKEN), answer(FIXED))) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.api_base)
        recorded = run(GOAL, "--llm", "record", "--dry-run")
    assert recorded.exit_code == 0, recorded.output
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens: only the cassette can answer
    monkeypatch.delenv("OPENAI_API_KEY")
    replayed = run(GOAL, "--llm", "replay", "--dry-run")
    assert replayed.exit_code == 0, replayed.output
    assert "draft 1: 3 problems, sent back for repair" in replayed.output and "draft 2: valid" in replayed.output


def test_the_shipped_planned_example_replays_offline_in_goatclaw_test() -> None:
    repo = Path(__file__).resolve().parent.parent
    result = CliRunner().invoke(app, ["test", str(repo / "pipelines" / "summarise-the-languages-catalogue-into-out"
                                                         ".test.yaml")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "1 passed" in result.output
    cassette = json.loads((repo / "pipelines" / "summarise-the-languages-catalogue-into-out.cassette.json")
                          .read_text())
    planning = [e for e in cassette["exchanges"].values()
                if e["request"]["messages"][0]["content"].startswith("You write goatclaw pipeline files")]
    assert len(planning) == 2  # the first draft and its repair were recorded beside the run's own call


# -- which model plans: zero-config (goatclaw/providers.py's choice) -------------------------------------


@pytest.fixture
def no_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from goatclaw.providers import PROVIDERS

    (tmp_path / "goatclaw.yaml").write_text("version: 1\n")
    monkeypatch.chdir(tmp_path)
    for provider in PROVIDERS.values():
        for key in provider.keys:
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("OLLAMA_API_BASE", "http://127.0.0.1:9")  # no Ollama unless a test starts one
    return tmp_path


def _planner_model() -> tuple[str, str | None, dict[str, Any]]:
    from goatclaw.api import load_project_for
    from goatclaw.planner import _planning_model

    return _planning_model(load_project_for(None), None)


def test_with_no_model_a_key_in_the_environment_plans(no_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant")
    model, why, _ = _planner_model()
    assert model == "anthropic/claude-3-5-haiku-latest" and "ANTHROPIC_API_KEY is set (env)" in str(why)


def test_with_no_model_a_key_in_dotenv_plans(no_model: Path) -> None:
    (no_model / ".env").write_text("OPENAI_API_KEY=sk-dotenv\n")
    model, why, _ = _planner_model()
    assert model == "openai/gpt-4o-mini" and "OPENAI_API_KEY is set (.env)" in str(why)


def test_with_no_model_and_no_key_a_local_ollama_plans_with_its_first_model(
        no_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Tags(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"models": [{"name": "qwen2.5:0.5b"}]}).encode()
            self.send_response(200 if self.path == "/api/tags" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Tags)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setenv("OLLAMA_API_BASE", url)
        model, why, endpoints = _planner_model()
    finally:
        server.shutdown()
        server.server_close()
    assert model == "ollama/qwen2.5:0.5b" and endpoints[model].api_base == url and "Ollama answers" in str(why)


def test_with_no_model_anywhere_planning_says_how_to_get_one(no_model: Path) -> None:
    result = run(GOAL, "--yes")
    assert result.exit_code == 1 and "no model to plan with" in result.output


def test_a_similar_goal_planned_before_and_how_its_run_went_are_in_the_next_prompt(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeOpenAI(scripted(answer(FIXED))) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.api_base)
        assert run(GOAL, "--yes").exit_code == 0
        assert "Similar goals planned before" not in srv.requests[0]["messages"][0]["content"]
        assert run("Write a greeting to out/hello.txt in French", "--dry-run").exit_code == 0
    system = srv.requests[1]["messages"][0]["content"]
    assert "## Similar goals planned before" in system
    assert f"'{GOAL}' -> pipelines/write-a-greeting-to-out-hello.yaml: succeeded" in system
