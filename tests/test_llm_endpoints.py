"""Model entries with their own api_base and key: a fallback chain across two servers; doctor's model and Ollama.

Two real local OpenAI-compatible servers (tests/openai_server.py), called through litellm.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler

import pytest
from local_http import serving
from openai_server import FakeOpenAI, Reply
from typer.testing import CliRunner

import goatclaw
from goatclaw import llm as room
from goatclaw.cli.app import app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def litellm_imported() -> None:
    room._litellm()


def test_a_fallback_chain_in_goatclaw_yaml_spans_two_servers(project, write_pipeline, monkeypatch) -> None:
    monkeypatch.setenv("HOSTED_KEY", "sk-hosted-123456")
    with FakeOpenAI(lambda body: Reply(status=503, error="local is down")) as local, FakeOpenAI() as hosted:
        (project / "goatclaw.yaml").write_text(f"""version: 1
model: {{name: openai/local-llama, api_base: "{local.api_base}", api_key_env: LOCAL_KEY}}
fallbacks:
  - {{name: openai/gpt-4o-mini, api_base: "{hosted.api_base}", api_key_env: HOSTED_KEY}}
permissions: {{network: [127.0.0.1]}}
""")
        monkeypatch.setenv("LOCAL_KEY", "sk-local-123456")
        path = write_pipeline("""
            version: 1
            tasks:
              ask: {uses: llm, retry: {attempts: 1}, with: {prompt: hi}}
            """)
        result = goatclaw.run(path)
        assert result.ok, result.tasks["ask"].error
        out = result.tasks["ask"].output
        assert out["model"] == "openai/gpt-4o-mini" and out["hops"][0]["model"] == "openai/local-llama"
        assert [r["model"] for r in local.requests] == ["local-llama"]
        assert [r["model"] for r in hosted.requests] == ["gpt-4o-mini"]
        assert local.headers[0]["authorization"] == "Bearer sk-local-123456"
        assert hosted.headers[0]["authorization"] == "Bearer sk-hosted-123456"


def test_a_task_model_list_can_give_each_model_its_server(write_pipeline) -> None:
    with FakeOpenAI(lambda body: Reply(status=429, error="busy")) as first, FakeOpenAI() as second:
        path = write_pipeline(f"""
            version: 1
            tasks:
              ask:
                uses: llm
                retry: {{attempts: 1}}
                with:
                  prompt: hi
                  model:
                    - {{name: openai/one, api_base: "{first.api_base}", api_key: sk-one}}
                    - {{name: openai/two, api_base: "{second.api_base}", api_key: sk-two}}
            """)
        result = goatclaw.run(path)
        assert result.ok, result.tasks["ask"].error
        assert result.tasks["ask"].output["model"] == "openai/two"
        assert len(first.requests) == 1 and len(second.requests) == 1
        assert second.headers[0]["authorization"] == "Bearer sk-two"


def test_a_bad_model_entry_is_refused_at_validate(project) -> None:
    (project / "goatclaw.yaml").write_text("version: 1\nmodel: {name: openai/x, api_key: sk-literal}\n")
    (project / "p.yaml").write_text("version: 1\ntasks:\n  a: {uses: echo, with: {value: 1}}\n")
    done = CliRunner().invoke(app, ["validate", "p.yaml"])
    assert done.exit_code == 2 and "goatclaw.yaml" in done.output and "api_key" in done.output


class _Ollama(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"models": []}).encode()
        self.send_response(200 if self.path == "/api/tags" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_doctor_honours_ollama_api_base_and_names_the_model(project, monkeypatch) -> None:
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    with serving(_Ollama) as url:
        monkeypatch.setenv("OLLAMA_API_BASE", url)
        done = CliRunner().invoke(app, ["doctor", "--json"])
        assert done.exit_code == 0, done.output
        report = json.loads(done.output)
        ollama = next(p for p in report["providers"] if p["provider"] == "ollama")
        assert ollama["usable"] and ollama["how"] == url
        assert report["model"]["model"] is None and "without model: fails" in report["model"]["message"]
        assert "ollama" in report["model"]["message"]
    (project / "goatclaw.yaml").write_text("version: 1\nmodel: ollama/llama3.2\nfallbacks: [openai/gpt-4o-mini]\n")
    text = CliRunner().invoke(app, ["doctor"])
    assert "llm tasks without model: use ollama/llama3.2, then openai/gpt-4o-mini" in text.output
