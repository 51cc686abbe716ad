"""Cost-aware model choice: cascades, routing by capability, the zero-config choice, what it saved.

Against the real local OpenAI-compatible server of tests/openai_server.py, through litellm
over HTTP; the Ollama stand-in is a real HTTP server answering ``/api/tags``. Nothing mocked.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from local_http import serving
from openai_server import FakeOpenAI, Reply
from typer.testing import CliRunner

import goatclaw
from goatclaw import llm as room
from goatclaw import providers
from goatclaw.cli.app import app
from goatclaw.history import llm_costs, stats
from goatclaw.store import Store

pytestmark = pytest.mark.slow
KEYS = [k for p in providers.PROVIDERS.values() for k in p.keys]

CHEAP, MIDDLE, STRONG = "openai/gpt-4o-mini", "openai/gpt-4.1-mini", "openai/gpt-4o"


@pytest.fixture(scope="module", autouse=True)
def litellm_imported() -> None:
    room._litellm()


@pytest.fixture
def no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("OLLAMA_API_BASE", "http://127.0.0.1:9")  # nothing listens: no Ollama unless a test says so


def by_model(answers: dict[str, str]) -> Any:
    """Answer each model (the name the server sees, without the provider) with its own text."""
    return lambda body: Reply(answers.get(body["model"], "?"))


def cascade_pipeline(write: Any, srv: FakeOpenAI, *, feedback: bool = False) -> Path:
    return write(f"""
        version: 1
        name: cascade-test
        tasks:
          answer:
            uses: llm
            retry: {{attempts: 1}}
            with:
              model: {{cascade: [{CHEAP}, {MIDDLE}, {STRONG}]{', feedback: true' if feedback else ''}}}
              api_base: {srv.api_base}
              api_key: sk-test
              prompt: Is the sky blue? Answer YES or NO.
            validate:
              - expr: "output.text == 'YES'"
                message: the answer must be YES
        """)


def test_a_cascade_escalates_past_a_rejected_answer_and_keeps_the_next(write_pipeline, srv) -> None:
    srv.respond = by_model({"gpt-4o-mini": "maybe", "gpt-4.1-mini": "YES", "gpt-4o": "YES"})
    result = goatclaw.run(cascade_pipeline(write_pipeline, srv))
    assert result.ok, result.tasks["answer"].error
    assert [r["model"] for r in srv.requests] == ["gpt-4o-mini", "gpt-4.1-mini"]  # two calls, the strong one unasked
    out = result.tasks["answer"].output
    assert out["text"] == "YES" and out["model"] == MIDDLE
    assert out["cascade"]["answered_by"] == MIDDLE and out["cascade"]["models"] == [CHEAP, MIDDLE, STRONG]
    [passed] = out["cascade"]["passed_over"]
    assert passed["model"] == CHEAP and "the answer must be YES" in passed["reason"]
    cheap, middle = 11 * 0.15e-6 + 7 * 0.6e-6, room.price(MIDDLE, {"prompt_tokens": 11, "completion_tokens": 7})
    strong = 11 * 2.5e-6 + 7 * 10e-6
    with Store.open(result.store_path) as db:
        events = db.events(result.run_id)
    costs = llm_costs(events)
    assert costs["cost_usd"] == pytest.approx(cheap + middle)
    assert costs["if_last_usd"] == pytest.approx(strong)  # the kept answer at the strong model's prices, one call
    assert costs["tasks"]["answer"]["if_last_usd"] == pytest.approx(strong)
    [escalated] = [e for e in events if e["topic"] == "task.escalate"]
    assert escalated["data"]["model"] == CHEAP and escalated["data"]["to"] == MIDDLE
    shown = CliRunner().invoke(app, ["runs", "show", "last", "--store", str(result.store_path)])
    assert shown.exit_code == 0, shown.output
    assert "gpt-4o-mini passed over for openai/gpt-4.1-mini" in shown.output
    assert "had every call gone to its last model" in shown.output and "saved $" in shown.output
    rows = {t["task"]: t for t in stats(result.store_path)["tasks"]}
    assert rows["answer"]["cost_usd"] == pytest.approx(cheap + middle, abs=1e-6)
    assert rows["answer"]["if_last_usd"] == pytest.approx(strong, abs=1e-6)
    table = CliRunner().invoke(app, ["stats", "--store", str(result.store_path)], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "if last model" in table.output, table.output


def test_a_cascade_with_feedback_gives_the_next_model_the_failed_rules(write_pipeline, srv) -> None:
    srv.respond = by_model({"gpt-4o-mini": "maybe", "gpt-4.1-mini": "maybe", "gpt-4o": "YES"})
    result = goatclaw.run(cascade_pipeline(write_pipeline, srv, feedback=True))
    assert result.ok, result.tasks["answer"].error
    assert [r["model"] for r in srv.requests] == ["gpt-4o-mini", "gpt-4.1-mini", "gpt-4o"]
    last = srv.requests[-1]["messages"]
    assert last[-2] == {"role": "assistant", "content": "maybe"}
    assert "the answer must be YES" in last[-1]["content"]
    out = result.tasks["answer"].output
    assert [p["model"] for p in out["cascade"]["passed_over"]] == [CHEAP, MIDDLE]
    with Store.open(result.store_path) as db:
        costs = llm_costs(db.events(result.run_id))
    assert costs["if_last_usd"] < costs["cost_usd"]  # reaching the last model costs more than asking it alone


def test_a_cascade_whose_every_answer_fails_fails_the_task_naming_each_model(write_pipeline, srv) -> None:
    srv.respond = lambda body: Reply("NO")
    result = goatclaw.run(cascade_pipeline(write_pipeline, srv))
    assert not result.ok and len(srv.requests) == 3
    assert "every model of the cascade was passed over" in result.tasks["answer"].error


def test_a_cascade_in_goatclaw_yaml_serves_tasks_without_a_model(project, write_pipeline, srv) -> None:
    (project / "goatclaw.yaml").write_text(
        "version: 1\npermissions: {network: true}\n"
        f"model: {{cascade: [{{name: {CHEAP}, api_base: {srv.api_base}}}, {{name: {STRONG}, "
        f"api_base: {srv.api_base}}}]}}\n")
    srv.respond = by_model({"gpt-4o-mini": "maybe", "gpt-4o": "YES"})
    path = write_pipeline("""
        version: 1
        tasks:
          answer:
            uses: llm
            retry: {attempts: 1}
            with: {prompt: Is the sky blue?, api_key: sk-test}
            validate: [{expr: "output.text == 'YES'"}]
        """)
    result = goatclaw.run(path)
    assert result.ok, result.tasks["answer"].error
    assert [r["model"] for r in srv.requests] == ["gpt-4o-mini", "gpt-4o"]
    assert result.tasks["answer"].output["cascade"]["answered_by"] == STRONG


# -- routing by capability -------------------------------------------------------------------


def tools_pipeline(write: Any, srv: FakeOpenAI, models: list[str], extra: str = "") -> Path:
    return write(f"""
        version: 1
        name: routing-test
        {extra}
        tasks:
          ask:
            uses: llm
            retry: {{attempts: 1}}
            with:
              model: {json.dumps(models)}
              api_base: {srv.api_base}
              api_key: sk-test
              prompt: slug it
              tools: [{{uses: slugify, name: slug}}]
        """)


def test_a_task_needing_tools_skips_a_model_without_tool_support(write_pipeline, srv) -> None:
    # litellm's model map: gpt-3.5-turbo-16k has no function calling, gpt-4o-mini has
    assert room.lacks("openai/gpt-3.5-turbo-16k", {"tools": True}) == ["tools"]
    srv.respond = lambda body: Reply("no tools needed")
    result = goatclaw.run(tools_pipeline(write_pipeline, srv, ["openai/gpt-3.5-turbo-16k", CHEAP]))
    assert result.ok, result.tasks["ask"].error
    assert [r["model"] for r in srv.requests] == ["gpt-4o-mini"] and srv.requests[0]["tools"]
    out = result.tasks["ask"].output
    assert out["model"] == CHEAP and out["skipped"] == [{"model": "openai/gpt-3.5-turbo-16k", "lacks": ["tools"]}]


def test_no_capable_model_refuses_the_call_before_sending_it(write_pipeline, srv) -> None:
    result = goatclaw.run(tools_pipeline(write_pipeline, srv, ["openai/gpt-3.5-turbo-16k"]))
    assert not result.ok and srv.requests == []
    assert "gpt-3.5-turbo-16k lacks tools" in result.tasks["ask"].error


def test_validate_warns_when_no_model_of_the_chain_has_what_the_task_needs(write_pipeline, srv) -> None:
    path = tools_pipeline(write_pipeline, srv, ["openai/gpt-3.5-turbo-16k"])
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert "no model of the chain supports tools" in result.output, result.output


def test_prefer_cheapest_tries_the_cheapest_capable_model_first(project, write_pipeline, srv) -> None:
    (project / "goatclaw.yaml").write_text("version: 1\npermissions: {network: true}\nllm: {prefer: cheapest}\n")
    srv.respond = lambda body: Reply("ok")
    path = write_pipeline(f"""
        version: 1
        tasks:
          ask:
            uses: llm
            with: {{model: [{STRONG}, {CHEAP}], prompt: hi, api_base: {srv.api_base}, api_key: sk-test}}
        """)
    result = goatclaw.run(path)
    assert result.ok, result.tasks["ask"].error
    assert [r["model"] for r in srv.requests] == ["gpt-4o-mini"]


# -- zero-config choice ----------------------------------------------------------------------


def test_with_no_model_set_a_key_in_dotenv_picks_its_provider(project, write_pipeline, no_keys) -> None:
    (project / ".env").write_text("OPENAI_API_KEY=sk-from-dotenv\n")
    chosen = providers.choose_model(project)
    assert chosen is not None and chosen["model"] == "openai/gpt-4o-mini"
    assert "OPENAI_API_KEY is set (.env)" in chosen["why"]
    report = json.loads(CliRunner().invoke(app, ["doctor", "--json"]).output)
    assert report["model"]["model"] == "openai/gpt-4o-mini" and report["model"]["from"] == "detected"
    assert "OPENAI_API_KEY" in report["model"]["message"]


class OllamaTags(BaseHTTPRequestHandler):
    """Answers like Ollama's ``GET /api/tags``."""

    def do_GET(self) -> None:
        body = json.dumps({"models": [{"name": "qwen2.5:0.5b", "size": 1}, {"name": "llama3.2:latest"}]}).encode()
        self.send_response(200 if self.path == "/api/tags" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_with_no_model_and_no_key_a_running_ollama_gives_its_first_local_model(project, no_keys,
                                                                               monkeypatch) -> None:
    with serving(OllamaTags) as url:
        monkeypatch.setenv("OLLAMA_API_BASE", url)
        chosen = providers.choose_model(project)
        assert chosen == {"model": "ollama/qwen2.5:0.5b", "api_base": url, "why": chosen["why"]}
        assert f"Ollama answers on {url} with 2 local models" in chosen["why"]
        shown = CliRunner().invoke(app, ["doctor"])
        assert "ollama/qwen2.5:0.5b" in shown.output, shown.output
    assert providers.choose_model(project) is None  # the server is gone and there is no key


def test_a_run_without_a_model_uses_the_choice_and_says_why(project, write_pipeline, no_keys, srv,
                                                           monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_API_BASE", srv.api_base)  # litellm's own variable: the chosen model's server
    path = write_pipeline("version: 1\ntasks:\n  ask: {uses: llm, with: {prompt: hi}}\n")
    result = goatclaw.run(path)
    assert result.ok, result.tasks["ask"].error
    assert result.tasks["ask"].output["model"] == "openai/gpt-4o-mini" and srv.requests[0]["model"] == "gpt-4o-mini"
    with Store.open(result.store_path) as db:
        [choice] = [e for e in db.events(result.run_id) if e["topic"] == "llm.choice"]
    assert choice["data"]["model"] == "openai/gpt-4o-mini" and "OPENAI_API_KEY is set (env)" in choice["data"]["why"]


def test_a_run_recorded_with_the_choice_replays_where_no_key_is_set(project, write_pipeline, no_keys, srv,
                                                                    monkeypatch) -> None:
    """Recorded with OPENAI_API_KEY set (the choice: gpt-4o-mini), replayed without any key: the cassette's model."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_API_BASE", srv.api_base)
    srv.respond = lambda body: Reply("recorded answer")
    path = write_pipeline("version: 1\ntasks:\n  ask: {uses: llm, with: {prompt: hi}}\n")
    recorded = goatclaw.run(path, llm="record")
    assert recorded.ok, recorded.tasks["ask"].error
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_API_BASE")
    srv.requests.clear()
    replayed = goatclaw.run(path, llm="replay")
    assert replayed.ok, replayed.tasks["ask"].error
    assert replayed.tasks["ask"].output["text"] == "recorded answer" and srv.requests == []
    with Store.open(replayed.store_path) as db:
        [choice] = [e for e in db.events(replayed.run_id) if e["topic"] == "llm.choice"]
    assert choice["data"]["model"] == "openai/gpt-4o-mini"
    assert "replaying p.cassette.json, whose answers all came from openai/gpt-4o-mini" in choice["data"]["why"]


def test_fix_applies_to_the_last_model_of_a_cascade(write_pipeline, srv) -> None:
    def respond(body: dict[str, Any]) -> Reply:
        fed_back = "rejected because" in json.dumps(body["messages"])
        return Reply("YES" if body["model"] == "gpt-4o" and fed_back else "NO")

    srv.respond = respond
    path = write_pipeline(f"""
        version: 1
        tasks:
          answer:
            uses: llm
            retry: {{attempts: 1}}
            with:
              model: {{cascade: [{CHEAP}, {STRONG}]}}
              api_base: {srv.api_base}
              api_key: sk-test
              prompt: Is the sky blue?
            validate: [{{expr: "output.text == 'YES'"}}]
            fix: {{attempts: 1}}
        """)
    result = goatclaw.run(path)
    assert result.ok, result.tasks["answer"].error
    assert [r["model"] for r in srv.requests] == ["gpt-4o-mini", "gpt-4o", "gpt-4o"]  # the cheap model is not fixed
    assert result.tasks["answer"].output["cascade"]["passed_over"][0]["model"] == CHEAP


def test_an_error_in_a_cascade_stage_follows_the_fallback_chain_not_the_cascade(project, write_pipeline,
                                                                                 srv) -> None:
    (project / "goatclaw.yaml").write_text("version: 1\npermissions: {network: true}\n"
                                           f"fallbacks: [{MIDDLE}]\n")
    srv.respond = lambda body: Reply(status=500, error="down") if body["model"] == "gpt-4o-mini" else Reply("YES")
    path = write_pipeline(f"""
        version: 1
        tasks:
          answer:
            uses: llm
            retry: {{attempts: 1}}
            with: {{model: {{cascade: [{CHEAP}, {STRONG}]}}, prompt: hi, api_base: {srv.api_base}, api_key: sk-test}}
            validate: [{{expr: "output.text == 'YES'"}}]
        """)
    result = goatclaw.run(path)
    assert result.ok, result.tasks["answer"].error
    assert [r["model"] for r in srv.requests] == ["gpt-4o-mini", "gpt-4.1-mini"]  # the fallback, not the next stage
    out = result.tasks["answer"].output
    assert out["model"] == MIDDLE and out["hops"][0]["model"] == CHEAP
    assert out["hops"][0]["error_class"] == "server_error"
    assert out["cascade"]["at"] == 0 and out["cascade"]["passed_over"] == []


def test_a_bad_prefer_or_cascade_in_goatclaw_yaml_is_refused_with_its_line(project, write_pipeline) -> None:
    path = write_pipeline("version: 1\ntasks:\n  a: {uses: echo, with: {message: hi}}\n")
    (project / "goatclaw.yaml").write_text("version: 1\nllm: {prefer: fastest}\n")
    done = CliRunner().invoke(app, ["validate", str(path)])
    assert done.exit_code == 2 and "goatclaw.yaml:2" in done.output and "prefer" in done.output, done.output
    (project / "goatclaw.yaml").write_text("version: 1\nmodel: {cascade: []}\n")
    done = CliRunner().invoke(app, ["validate", str(path)])
    assert done.exit_code == 2 and "goatclaw.yaml:2" in done.output, done.output


IMAGE = [{"type": "text", "text": "what is this?"},
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]


@pytest.mark.parametrize(("content", "lacks"), [(IMAGE, ["vision"]), ("word " * 20_000, ["context"])],
                         ids=["an-image", "a-long-prompt"])
def test_images_and_long_prompts_skip_models_the_map_says_cannot_take_them(srv, content: Any,
                                                                          lacks: list[str]) -> None:
    import asyncio

    srv.respond = lambda body: Reply("seen")
    request = room.Request(models=("openai/gpt-3.5-turbo-16k", CHEAP), messages=({"role": "user", "content": content},),
                           api_base=srv.api_base, api_key="sk-test", max_tokens=5)
    events: list[tuple[str, dict[str, Any]]] = []
    response = asyncio.run(room.complete(request, emit=lambda topic, **data: events.append((topic, data))))
    assert response.model == CHEAP and [r["model"] for r in srv.requests] == ["gpt-4o-mini"]
    assert response.skipped == [{"model": "openai/gpt-3.5-turbo-16k", "lacks": lacks}]
    assert ("llm.skip", {"model": "openai/gpt-3.5-turbo-16k", "lacks": lacks}) in events


@pytest.mark.parametrize("model", ["${{ vars.chain }}", "{cascade: '${{ vars.chain.cascade }}'}"])
def test_a_cascade_a_var_gives_escalates_like_a_written_one(write_pipeline, srv, model) -> None:
    """``model: ${{ vars.chain }}`` (or ``{cascade: ${{ … }}}``): the rendered cascade is a cascade, not one model."""
    srv.respond = by_model({"gpt-4o-mini": "maybe", "gpt-4.1-mini": "YES"})
    path = write_pipeline(f"""
        version: 1
        name: cascade-var
        vars:
          chain: {{cascade: [{CHEAP}, {MIDDLE}]}}
        tasks:
          answer:
            uses: llm
            retry: {{attempts: 1}}
            with:
              model: {model}
              api_base: {srv.api_base}
              api_key: sk-test
              prompt: Is the sky blue? Answer YES or NO.
            validate:
              - expr: "output.text == 'YES'"
        """)
    result = goatclaw.run(path)
    assert result.ok, result.tasks["answer"].error
    assert [r["model"] for r in srv.requests] == ["gpt-4o-mini", "gpt-4.1-mini"]
    assert result.tasks["answer"].output["cascade"]["answered_by"] == MIDDLE


@pytest.mark.parametrize(("models", "prompt", "warned"), [
    (["openai/gpt-3.5-turbo-16k"], "word " * 20_000, True),       # ~25k tokens: over its 16k input window
    (["openai/gpt-3.5-turbo-16k", CHEAP], "word " * 20_000, False),  # gpt-4o-mini takes 128k
    (["openai/gpt-3.5-turbo-16k"], "word " * 100, False),
    (["openai/gpt-3.5-turbo-16k"], "word ${{ vars.more }} " * 20_000, False),  # its size is known when it renders
])
def test_validate_warns_when_the_files_prompt_fits_no_model_of_the_chain(write_pipeline, models, prompt,
                                                                         warned) -> None:
    path = write_pipeline(f"""
        version: 1
        name: long-prompt
        vars: {{more: x}}
        tasks:
          ask:
            uses: llm
            with:
              model: {json.dumps(models)}
              api_base: http://127.0.0.1:9
              api_key: sk-test
              prompt: {json.dumps(prompt)}
        """)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    line = "no model of the chain supports a prompt of ~25,001 tokens (context)"
    assert (line in result.output) is warned, result.output
    if warned:
        assert "gpt-3.5-turbo-16k lacks context" in result.output


def test_validate_warns_when_no_model_of_an_agent_calls_tools(write_pipeline) -> None:
    path = write_pipeline("""
        version: 1
        name: agent-tools
        tasks:
          find:
            uses: agent
            with:
              model: openai/gpt-3.5-turbo-16k
              api_base: http://127.0.0.1:9
              api_key: sk-test
              goal: Slug it.
              tools: [{uses: slugify}]
        """)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert "tasks.find.with.model: no model of the chain supports tools" in result.output, result.output
