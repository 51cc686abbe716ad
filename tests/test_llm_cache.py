"""LLM answer caching: one rule (reused at temperature 0, or when the task says cache: true), a TTL,
``--no-cache`` meaning no cache, and ``goatclaw cache list|clear``.

Against the local OpenAI-compatible server (tests/openai_server.py) through litellm; the store
is a real SQLite file in the test's project.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlean
from openai_server import FakeOpenAI
from typer.testing import CliRunner

import goatclaw
from goatclaw import llm as room
from goatclaw.cli.app import app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def litellm_imported() -> None:
    room._litellm()


def _pipeline(write: Callable[..., Path], srv: FakeOpenAI, extra: str = "", task: str = "") -> Path:
    return write(f"""
        version: 1
        name: cached-llm
        tasks:
          ask:
            uses: llm
            retry: {{attempts: 1}}
            {task}
            with:
              model: openai/gpt-4o-mini
              prompt: hi
              api_base: {srv.api_base}
              api_key: sk-test
              {extra}
        """)


def test_a_rerun_at_a_sampling_temperature_asks_the_model_again(write_pipeline, srv) -> None:
    path = _pipeline(write_pipeline, srv, "temperature: 0.9")
    first, second = goatclaw.run(path), goatclaw.run(path)
    assert first.ok and second.ok
    assert len(srv.requests) == 2  # neither the task cache nor the answer cache reused a sampled answer
    assert second.tasks["ask"].status.value == "succeeded" and second.tasks["ask"].output["source"] == "live"


def test_a_rerun_at_temperature_0_is_answered_from_the_answer_cache(write_pipeline, srv) -> None:
    path = _pipeline(write_pipeline, srv, "temperature: 0")
    first, second = goatclaw.run(path), goatclaw.run(path)
    assert first.ok and second.ok
    assert len(srv.requests) == 1
    out = second.tasks["ask"].output
    assert out["source"] == "cache" and out["cost_usd"] == 0.0 and out["text"] == first.tasks["ask"].output["text"]


def test_cache_true_on_the_task_reuses_even_a_sampled_answer(write_pipeline, srv) -> None:
    path = _pipeline(write_pipeline, srv, "temperature: 0.9", task="cache: true")
    assert goatclaw.run(path).ok and goatclaw.run(path).tasks["ask"].output["source"] == "cache"
    assert len(srv.requests) == 1


def test_cache_false_on_the_task_never_uses_the_answer_cache(write_pipeline, srv) -> None:
    path = _pipeline(write_pipeline, srv, "temperature: 0", task="cache: false")
    assert goatclaw.run(path).ok and goatclaw.run(path).ok
    assert len(srv.requests) == 2


def test_no_cache_bypasses_the_answer_cache(project, write_pipeline, srv) -> None:
    (project / "goatclaw.yaml").write_text("version: 1\nllm: {cache: true}\npermissions: {network: [127.0.0.1]}\n")
    path = _pipeline(write_pipeline, srv, "temperature: 0")
    assert goatclaw.run(path).ok
    again = goatclaw.run(path, cache=False)
    assert again.ok and again.tasks["ask"].output["source"] == "live"
    assert len(srv.requests) == 2
    done = CliRunner().invoke(app, ["apply", str(path), "--no-cache", "--output", "json"])
    assert done.exit_code == 0, done.output
    assert len(srv.requests) == 3


def test_the_project_can_turn_the_answer_cache_off(project, write_pipeline, srv) -> None:
    (project / "goatclaw.yaml").write_text("version: 1\nllm: {cache: false}\npermissions: {network: [127.0.0.1]}\n")
    path = _pipeline(write_pipeline, srv, "temperature: 0")
    assert goatclaw.run(path).ok and goatclaw.run(path).ok
    assert len(srv.requests) == 2


def test_an_answer_older_than_the_ttl_is_not_reused(project, write_pipeline, srv, store_path) -> None:
    (project / "goatclaw.yaml").write_text("version: 1\nllm: {cache: {ttl: 1h}}\npermissions: {network: [127.0.0.1]}\n")
    path = _pipeline(write_pipeline, srv, "temperature: 0")
    assert goatclaw.run(path).ok and goatclaw.run(path).tasks["ask"].output["source"] == "cache"
    db = sqlean.connect(str(store_path))
    with db:
        db.execute("UPDATE llm_cache SET created_at = created_at - 7200")  # two hours ago
    db.close()
    third = goatclaw.run(path)
    assert third.tasks["ask"].output["source"] == "live" and len(srv.requests) == 2


def test_the_default_ttl_is_a_week(project, write_pipeline, srv, store_path) -> None:
    path = _pipeline(write_pipeline, srv, "temperature: 0")
    assert goatclaw.run(path).ok
    db = sqlean.connect(str(store_path))
    with db:
        db.execute("UPDATE llm_cache SET created_at = created_at - 6 * 86400")
    db.close()
    assert goatclaw.run(path).tasks["ask"].output["source"] == "cache"
    db = sqlean.connect(str(store_path))
    with db:
        db.execute("UPDATE llm_cache SET created_at = created_at - 2 * 86400")
    db.close()
    assert goatclaw.run(path).tasks["ask"].output["source"] == "live"


def test_cache_list_and_clear(project, write_pipeline, srv, store_path) -> None:
    path = _pipeline(write_pipeline, srv, "temperature: 0")
    echo = write_pipeline("""
        version: 1
        tasks:
          say: {uses: echo, with: {value: hello}}
        """, "echo.yaml")
    assert goatclaw.run(path).ok and goatclaw.run(echo).ok
    runner = CliRunner()
    listed = runner.invoke(app, ["cache", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert sorted((r["kind"], r["name"]) for r in rows) == [("llm", "openai/gpt-4o-mini"), ("task", "echo")]
    plain = runner.invoke(app, ["cache", "list", "--kind", "llm"])
    assert plain.exit_code == 0 and "openai/gpt-4o-mini" in plain.output and "echo" not in plain.output
    cleared = runner.invoke(app, ["cache", "clear", "--kind", "llm"])
    assert cleared.exit_code == 0, cleared.output
    assert "1 LLM answer" in cleared.output
    assert goatclaw.run(path).tasks["ask"].output["source"] == "live" and len(srv.requests) == 2
    kept = runner.invoke(app, ["cache", "clear", "--older-than", "7d"])
    assert kept.exit_code == 0 and "0 task outputs and 0 LLM answers" in kept.output
    assert runner.invoke(app, ["cache", "clear"]).exit_code == 0
    assert json.loads(runner.invoke(app, ["cache", "list", "--json"]).output) == []
    bad = runner.invoke(app, ["cache", "clear", "--older-than", "soon"])
    assert bad.exit_code == 2 and "--older-than" in bad.output
