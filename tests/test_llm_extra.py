"""Embeddings, provider detection (doctor, validate), cost estimates and totals, budget downgrade.

Against the real local OpenAI-compatible server of tests/openai_server.py; nothing mocked.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from openai_server import EMBED_DIM, FakeOpenAI, vector
from typer.testing import CliRunner

import goatclaw
from goatclaw import llm as room
from goatclaw import providers
from goatclaw.cli.app import app
from goatclaw.errors import TaskError
from goatclaw.history import llm_costs
from goatclaw.store import Store

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
KEYS = [k for p in providers.PROVIDERS.values() for k in p.keys]


@pytest.fixture(scope="module", autouse=True)
def litellm_imported() -> None:
    room._litellm()


@pytest.fixture
def no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in KEYS:
        monkeypatch.delenv(key, raising=False)


# -- embeddings ------------------------------------------------------------------------------


def test_embed_returns_one_vector_per_text_in_order(srv) -> None:
    out = room.embed("openai/text-embedding-3-small", ["alpha", "beta", "gamma"], api_base=srv.api_base,
                     api_key="sk-test")
    assert len(out) == 3 and all(len(v) == EMBED_DIM for v in out)
    assert [pytest.approx(v) for v in out] == [vector("alpha"), vector("beta"), vector("gamma")]
    assert srv.requests[0]["input"] == ["alpha", "beta", "gamma"]
    assert srv.headers[0]["authorization"] == "Bearer sk-test"
    assert room.embed("openai/text-embedding-3-small", [], api_base=srv.api_base) == []


def test_embed_maps_errors_like_complete(srv) -> None:
    with pytest.raises(TaskError) as info:  # nothing listens there
        room.embed("openai/text-embedding-3-small", ["x"], api_base="http://127.0.0.1:9/v1", api_key="sk-test",
                   timeout=2)
    assert info.value.error_class in ("connection", "timeout"), info.value
    with pytest.raises(TaskError) as info:
        room.embed("", ["x"])
    assert info.value.error_class == "invalid_input"


def test_the_memory_litellm_embedder_embeds_through_the_local_server(srv, project, monkeypatch) -> None:
    pytest.importorskip("numpy")
    from goatclaw.memory.embedders import embedder_for

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_API_BASE", srv.api_base)
    embedder = embedder_for("litellm/openai/text-embedding-3-small")
    assert embedder.dim == EMBED_DIM
    vecs = embedder.embed(["one", "two"])
    assert vecs.shape == (2, EMBED_DIM)
    assert all(math.isclose(float((v * v).sum()), 1.0, rel_tol=1e-5) for v in vecs)
    assert srv.requests[-1]["input"] == ["one", "two"]


# -- provider detection ------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "provider"), [
    ("gpt-4o-mini", "openai"), ("openai/gpt-4o", "openai"), ("o3-mini", "openai"), ("o1", "openai"),
    ("claude-3-5-haiku-latest", "anthropic"), ("anthropic/claude-3-opus", "anthropic"),
    ("gemini/gemini-1.5-flash", "gemini"), ("mistral/mistral-small", "mistral"), ("groq/llama3-8b", "groq"),
    ("ollama/llama3.2", "ollama"), ("bedrock/whatever", None), ("my-model", None), ("o1x", None),
])
def test_models_map_to_providers(model: str, provider: str | None) -> None:
    found = providers.provider_of(model)
    assert (found.name if found else None) == provider


def test_a_key_counts_from_the_environment_or_dotenv(project, no_keys, monkeypatch) -> None:
    openai = providers.PROVIDERS["openai"]
    assert providers.key_status(openai, project) == (False, None)
    (project / ".env").write_text("# keys\nexport OPENAI_API_KEY='sk-dotenv'\n")
    assert providers.key_status(openai, project) == (True, ".env")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert providers.key_status(openai, project) == (True, "env")
    monkeypatch.setenv("GOOGLE_API_KEY", "g")
    assert providers.key_status(providers.PROVIDERS["gemini"], project) == (True, "env")


LLM_TASKS = """
version: 1
tasks:
  plain: {uses: llm, with: {model: gpt-4o-mini, prompt: hi}}
  chain: {uses: llm, with: {model: [claude-3-5-haiku-latest, ollama/llama3.2], prompt: hi}}
  local: {uses: llm, with: {model: ollama/llama3.2, prompt: hi}}
  based: {uses: llm, with: {model: gpt-4o, prompt: hi, api_base: "http://127.0.0.1:1/v1"}}
  templated: {uses: llm, with: {model: "${{ vars.m }}", prompt: hi}}
  unknown: {uses: llm, with: {model: bedrock/x, prompt: hi}}
"""


def test_validate_refuses_a_model_without_its_key(write_pipeline, no_keys) -> None:
    path = write_pipeline(LLM_TASKS)
    pipeline, problems = goatclaw.check(path)
    assert pipeline is not None
    found = {p.path: p for p in problems}
    assert set(found) == {"tasks.plain.with.model", "tasks.chain.with.model"}, problems
    plain = found["tasks.plain.with.model"]
    # nothing else can answer for `plain`: an error that names the key
    assert plain.severity == "error" and plain.location is not None and plain.location.line == 3
    assert plain.message.startswith("model 'gpt-4o-mini' needs OPENAI_API_KEY (not set in the environment or .env)")
    assert "no other model of the task can answer" in plain.message
    # `chain` falls back to a local Ollama model: a warning
    chain = found["tasks.chain.with.model"]
    assert chain.severity == "warn" and "ANTHROPIC_API_KEY" in chain.message
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "needs OPENAI_API_KEY" in result.output


def test_a_cassette_next_to_the_pipeline_turns_the_error_into_a_warning(write_pipeline, no_keys) -> None:
    path = write_pipeline(LLM_TASKS)
    path.with_suffix(".cassette.json").write_text('{"version": 1, "exchanges": {}}')
    _, problems = goatclaw.check(path)
    plain = next(p for p in problems if p.path == "tasks.plain.with.model")
    assert plain.severity == "warn" and "only `--llm replay` from p.cassette.json can run it" in plain.message
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output


def test_validate_is_quiet_once_the_keys_are_set(write_pipeline, project, no_keys, monkeypatch) -> None:
    path = write_pipeline(LLM_TASKS)
    (project / ".env").write_text("OPENAI_API_KEY=sk-a\n")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-b")
    _, problems = goatclaw.check(path)
    assert problems == []


def test_doctor_reports_keys_ollama_and_the_store(write_pipeline, project, no_keys, monkeypatch, srv) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-b")
    (project / ".env").write_text("GROQ_API_KEY=gsk\n")
    path = write_pipeline("version: 1\ntasks:\n  a: {uses: echo, with: {message: hi}}\n")
    assert goatclaw.run(path).ok
    result = CliRunner().invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    usable = {p["provider"]: p for p in report["providers"]}
    assert usable["anthropic"]["usable"] and usable["anthropic"]["how"] == "ANTHROPIC_API_KEY (env)"
    assert usable["groq"]["usable"] and usable["groq"]["how"] == "GROQ_API_KEY (.env)"
    assert not usable["openai"]["usable"] and usable["openai"]["needs"] == "OPENAI_API_KEY"
    assert "ollama" in usable  # usable or not depends on this machine; probed within 0.3 s
    assert report["store"]["ok"] and report["store"]["runs"] == 1
    text = CliRunner().invoke(app, ["doctor"])
    assert text.exit_code == 0 and "anthropic" in text.output and "store" in text.output


def test_the_ollama_probe_answers_false_fast_where_nothing_listens() -> None:
    import time

    started = time.perf_counter()
    assert providers.ollama_running("http://127.0.0.1:9") is False
    assert time.perf_counter() - started < 1.0


def test_validate_and_the_key_check_do_not_import_litellm_or_httpx(write_pipeline) -> None:
    path = write_pipeline(LLM_TASKS)
    code = ("import sys, goatclaw; goatclaw.check(sys.argv[1]); "
            "print('litellm' in sys.modules, 'httpx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# -- costs -------------------------------------------------------------------------------------


def test_plan_cost_estimates_each_llm_task(write_pipeline) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          a: {uses: llm, with: {model: openai/gpt-4o-mini, prompt: "%s", max_tokens: 100, api_key: k}}
          b: {uses: llm, with: {model: openai/my-local, prompt: hi, api_key: k}}
          c: {uses: echo, with: {message: hi}}
        """ % ("x" * 400))
    rows = {r["task"]: r for r in room.estimate_costs(goatclaw.load(path))}
    assert set(rows) == {"a", "b"}
    assert rows["a"]["prompt_tokens"] == 101 and rows["a"]["max_tokens"] == 100
    assert rows["a"]["usd"] == pytest.approx(101 * 0.15e-6 + 100 * 0.6e-6)
    assert rows["b"]["usd"] is None
    result = CliRunner().invoke(app, ["plan", str(path), "--cost"])
    assert result.exit_code == 0, result.output
    assert "cost estimate" in result.output and "1 not priced" in result.output
    plain = CliRunner().invoke(app, ["plan", str(path)])
    assert "cost estimate" not in plain.output


def llm_task(srv: FakeOpenAI, tid: str, model: str, needs: str = "") -> str:
    after = f"\n            needs: {needs}" if needs else ""
    return f"""
          {tid}:
            uses: llm{after}
            retry: {{attempts: 1}}
            with: {{model: {model}, prompt: hi {tid}, max_tokens: 1000, api_base: {srv.api_base}, api_key: sk-test}}"""


def test_runs_show_sums_the_runs_llm_costs(write_pipeline, srv) -> None:
    path = write_pipeline("version: 1\nconcurrency: 1\ntasks:" + llm_task(srv, "a", "openai/gpt-4o-mini")
                          + llm_task(srv, "b", "openai/gpt-4o-mini", "a") + "\n")
    result = goatclaw.run(path)
    assert result.ok, {k: t.error for k, t in result.tasks.items()}
    with Store.open(result.store_path) as db:
        costs = llm_costs(db.events(result.run_id))
    each = 11 * 0.15e-6 + 7 * 0.6e-6
    assert costs["calls"] == 2 and costs["cost_usd"] == pytest.approx(2 * each)
    assert costs["prompt_tokens"] == 22 and costs["tasks"]["a"]["cost_usd"] == pytest.approx(each)
    shown = CliRunner().invoke(app, ["runs", "show", "last", "--store", str(result.store_path)])
    assert shown.exit_code == 0 and "llm: 2 calls, 22 + 14 tokens" in shown.output, shown.output
    as_json = json.loads(CliRunner().invoke(app, ["runs", "show", "--json", "--store",
                                                  str(result.store_path)]).output)
    assert as_json["llm"]["calls"] == 2


# -- budget downgrade ------------------------------------------------------------------------


def test_a_budget_downgrades_to_the_cheaper_model_instead_of_stopping(write_pipeline, srv) -> None:
    # gpt-4o with max_tokens 1000 is estimated at ~$0.01, over the $0.005 budget; gpt-4o-mini ~$0.0006
    path = write_pipeline("version: 1\nbudget: {usd: 0.005, downgrade: openai/gpt-4o-mini}\ntasks:"
                          + llm_task(srv, "ask", "openai/gpt-4o") + "\n")
    result = goatclaw.run(path)
    assert result.ok, result.tasks["ask"].error
    assert result.tasks["ask"].output["model"] == "openai/gpt-4o-mini"
    assert [r["model"] for r in srv.requests] == ["gpt-4o-mini"]
    with Store.open(result.store_path) as db:
        events = db.events(result.run_id)
    downgrade = [e for e in events if e["topic"] == "llm.downgrade"]
    assert len(downgrade) == 1 and downgrade[0]["data"]["model"] == "openai/gpt-4o"
    assert downgrade[0]["data"]["to"] == "openai/gpt-4o-mini"
    assert llm_costs(events)["downgrades"] == 1


def test_a_downgrade_the_budget_cannot_afford_either_still_stops(write_pipeline, srv) -> None:
    path = write_pipeline("version: 1\nbudget: {usd: 0.0001, downgrade: openai/gpt-4o-mini}\ntasks:"
                          + llm_task(srv, "ask", "openai/gpt-4o") + "\n")
    result = goatclaw.run(path)
    assert result.tasks["ask"].error_class == "budget", result.tasks["ask"].error
    assert srv.requests == []
