"""``goatclaw runs fork`` and ``goatclaw runs diff``: replay a stored run with one change, and see what moved.

A real store, real runs and the local OpenAI server (tests/openai_server.py), whose request
log counts the calls: a fork sends only the requests that changed (every other answer comes
from the stored run, at $0, even at a sampling temperature), and ``runs diff`` shows the
changed output and cost per task.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from openai_server import FakeOpenAI, Reply
from typer.testing import CliRunner

import goatclaw
from goatclaw import llm as room
from goatclaw.cli.app import app
from goatclaw.errors import GoatclawError
from goatclaw.store import Store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def litellm_imported() -> None:
    room._litellm()


def digest(srv: FakeOpenAI, summary_prompt: str = "Summarise: ${{ tasks.facts.output.text }}") -> str:
    """Three LLM tasks in a chain and a report; sampled (temperature 0.7), so no answer cache applies."""
    def llm(name: str, prompt: str, needs: str = "") -> str:
        return f"""
  {name}:
    uses: llm
    {needs}
    retry: {{attempts: 1}}
    with:
      model: openai/gpt-4o-mini
      api_base: {srv.api_base}
      api_key: sk-test
      temperature: 0.7
      prompt: "{prompt}"
"""
    return ("version: 1\nname: digest\nvars:\n  topic: go\ntasks:"
            + llm("facts", "Facts about ${{ vars.topic }}")
            + llm("summary", summary_prompt, "needs: facts")
            + llm("title", "A title about ${{ vars.topic }}", "needs: summary")
            + """
  report:
    uses: echo
    needs: [summary, title]
    with: {value: "${{ tasks.title.output.text }} / ${{ tasks.summary.output.text }}"}
""")


def answer(body: dict[str, Any]) -> Reply:
    """The model: a reply that names the prompt it got, so a changed prompt gives a changed answer."""
    return Reply(f"[{body['model'].split('/')[-1]}] {body['messages'][-1]['content']}")


@pytest.fixture
def stored(write_pipeline: Callable[..., Path], srv: FakeOpenAI, store_path: Path) -> tuple[Path, str]:
    srv.respond = answer
    path = write_pipeline(digest(srv), name="digest.yaml")
    first = goatclaw.run(path)
    assert first.ok, first.tasks
    assert len(srv.requests) == 3
    srv.requests.clear()
    return path, first.run_id


def sources(store_path: Path, run_id: str) -> dict[str, str]:
    with Store.open(store_path) as db:
        return {e["task"]: e["data"]["source"] for e in db.events(run_id) if e["topic"] == "llm.call"}


def test_a_prompt_change_forked_at_its_task_sends_only_the_changed_requests(
        project: Path, write_pipeline: Callable[..., Path], srv: FakeOpenAI, store_path: Path,
        stored: tuple[Path, str]) -> None:
    _path, run_id = stored
    edited = write_pipeline(digest(srv, "Summarise in one line: ${{ tasks.facts.output.text }}"), name="edited.yaml")
    done = CliRunner().invoke(app, ["runs", "fork", run_id, "--from", "summary", "--edit", str(edited)])
    assert done.exit_code == 0, done.output
    assert len(srv.requests) == 1  # only summary's prompt changed; title asked the same and got the stored answer
    assert srv.requests[0]["messages"][-1]["content"].startswith("Summarise in one line: [gpt-4o-mini] Facts")
    assert "1 LLM calls sent" in done.stderr and "1 answered from the stored run" in done.stderr
    assert "facts succeeded before: kept, not run again" in done.stdout and "facts succeeded in" not in done.stdout
    with Store.open(store_path) as db:
        fork = db.runs(limit=1)[0]
        tasks = {t.task_id: t for t in db.tasks(fork.id)}
        original = {t.task_id: t for t in db.tasks(run_id)}
        forked = next(e["data"] for e in db.events(fork.id) if e["topic"] == "run.forked")
    assert fork.status == "succeeded" and fork.id != run_id
    assert sources(store_path, fork.id) == {"summary": "live", "title": "stored"}  # facts did not run at all
    assert tasks["facts"].output == original["facts"].output and tasks["facts"].attempts == original["facts"].attempts
    assert tasks["title"].output["text"] == original["title"].output["text"]
    assert tasks["title"].output["cost_usd"] == 0.0 and tasks["summary"].output["cost_usd"] > 0
    assert tasks["summary"].output["text"] != original["summary"].output["text"]
    assert (forked["from_run"], forked["from_task"], forked["rerun"]) == (run_id, "summary",
                                                                          ["report", "summary", "title"])

    diff = CliRunner().invoke(app, ["runs", "diff", run_id, fork.id])
    assert diff.exit_code == 0, diff.output
    out = diff.stdout
    assert f"{fork.id} forks {run_id} at task 'summary'" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in tasks}
    assert "changed" in rows["summary"] and "same" in rows["facts"] and "same" in rows["title"]
    assert "changed" in rows["report"]
    assert re.search(r"\$0\.0000\d+ → \$0 ", rows["title"]), rows["title"]  # the stored answer cost nothing
    assert "-[gpt-4o-mini] Summarise: [gpt-4o-mini] Facts about go" in out
    assert "+[gpt-4o-mini] Summarise in one line: [gpt-4o-mini] Facts about go" in out

    alone = CliRunner().invoke(app, ["runs", "diff", "last"])  # one run, a fork: compared with the run it forks
    assert alone.exit_code == 0 and alone.stdout == out
    not_a_fork = CliRunner().invoke(app, ["runs", "diff", run_id])
    assert not_a_fork.exit_code == 1 and "is not a fork" in not_a_fork.output

    md = CliRunner().invoke(app, ["runs", "diff", run_id, fork.id, "--format", "markdown", "--changed"])
    assert md.exit_code == 0, md.output
    assert md.stdout.startswith(f"## runs diff {run_id} → {fork.id}")
    assert "| task | status | output | cost | tokens | duration | rules |" in md.stdout
    assert "| summary | succeeded → succeeded | changed |" in md.stdout
    assert "| title |" not in md.stdout and "| facts |" not in md.stdout  # --changed: only what moved
    assert "```diff" in md.stdout and "<details><summary>summary: output</summary>" in md.stdout

    as_json = json.loads(CliRunner().invoke(app, ["runs", "diff", run_id, fork.id, "--format", "json"]).stdout)
    by_task = {t["task"]: t for t in as_json["tasks"]}
    assert by_task["summary"]["changed"] and not by_task["title"]["changed"]
    assert by_task["summary"]["calls"] == [1, 1] and by_task["facts"]["calls"] == [1, 0]
    assert as_json["cost_usd"][1] < as_json["cost_usd"][0]  # the fork paid for one call of three


def test_a_changed_var_reuses_every_answer_whose_request_did_not_change(
        project: Path, srv: FakeOpenAI, store_path: Path, stored: tuple[Path, str]) -> None:
    _path, run_id = stored
    result = goatclaw.fork(run_id, "summary", vars={"topic": "rust"})
    assert result.ok
    # summary's prompt reads facts (kept), so it is the same request; title's names the topic, so it is sent
    assert [r["messages"][-1]["content"] for r in srv.requests] == ["A title about rust"]
    assert sources(store_path, result.run_id) == {"summary": "stored", "title": "live"}
    assert result.tasks["facts"].output["text"] == "[gpt-4o-mini] Facts about go"  # upstream: as it was stored


def test_model_changes_the_model_of_the_task_and_those_after_it(
        project: Path, srv: FakeOpenAI, store_path: Path, stored: tuple[Path, str]) -> None:
    _path, run_id = stored
    result = goatclaw.fork(run_id, "title", model="openai/gpt-4o")
    assert result.ok
    assert [r["model"] for r in srv.requests] == ["gpt-4o"]
    assert result.tasks["title"].output["text"].startswith("[gpt-4o] A title")
    d = goatclaw.diff_runs(run_id, result.run_id)
    changed = {t.task for t in d.tasks if t.output_changed}
    assert changed == {"title", "report"}


def test_a_fork_refuses_what_it_cannot_do(project: Path, write_pipeline: Callable[..., Path], srv: FakeOpenAI,
                                          store_path: Path, stored: tuple[Path, str]) -> None:
    path, run_id = stored
    with pytest.raises(GoatclawError, match="has no task 'nope'"):
        goatclaw.fork(run_id, "nope")
    with pytest.raises(GoatclawError, match="no run 'zzz'"):
        goatclaw.fork("zzz", "summary")
    srv.respond = lambda body: Reply(status=400, error="bad request")
    failed = goatclaw.run(path)
    assert not failed.ok
    with pytest.raises(GoatclawError, match="facts before it did not succeed"):
        goatclaw.fork(failed.run_id, "summary")
    runner = CliRunner()
    bad_set = runner.invoke(app, ["runs", "fork", run_id, "--from", "summary", "--set", "topic=x"])
    assert bad_set.exit_code == 2 and "expected vars.NAME=VALUE" in bad_set.output
    missing = runner.invoke(app, ["runs", "fork", run_id, "--from", "nope"])
    assert missing.exit_code == 1 and "has no task 'nope'" in missing.output and "Traceback" not in missing.output


def test_diff_shows_the_rule_verdicts_side_by_side(project: Path, write_pipeline: Callable[..., Path],
                                                   store_path: Path) -> None:
    path = write_pipeline("""
        version: 1
        name: ruled
        vars: {n: 3}
        tasks:
          count:
            uses: echo
            with: {value: "${{ vars.n }}"}
            validate:
              - expr: "output > 2"
          after:
            uses: echo
            needs: count
            with: {value: done}
        """, name="ruled.yaml")
    first = goatclaw.run(path)
    assert first.ok
    fork = goatclaw.fork(first.run_id, "count", vars={"n": 1})
    assert not fork.ok and fork.tasks["count"].error_class == "validation"
    d = goatclaw.diff_runs(fork.run_id)
    count = next(t for t in d.tasks if t.task == "count")
    assert count.status == ("succeeded", "failed") and count.rules == {"rule 1 (expr)": (True, False)}
    assert count.changed
    text = CliRunner().invoke(app, ["runs", "diff", fork.run_id]).stdout
    row = next(line for line in text.splitlines() if line.startswith("count "))
    assert "succeeded → failed" in row and "rule 1 (expr): pass → fail" in row
    after = next(line for line in text.splitlines() if line.startswith("after "))
    assert "succeeded → upstream_failed" in after
