"""The ``llm`` task end to end, against a real local HTTP server speaking the OpenAI API.

litellm is pointed at the server with ``api_base``; nothing of litellm is mocked. The
first test to call a model pays litellm's import (seconds); the rest reuse it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai_server import FakeOpenAI, Reply, echo

import goatclaw
from goatclaw import llm as room
from goatclaw.errors import TaskError
from goatclaw.store import Store

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def litellm_imported() -> None:
    """Pay litellm's import (seconds) once, outside the tests' task timeouts."""
    room._litellm()


def by_model(replies: dict[str, Reply]) -> Callable[[dict[str, Any]], Reply]:
    return lambda body: replies.get(body["model"], echo(body))


def llm_pipeline(write: Callable[..., Path], srv: FakeOpenAI, with_: str, *, extra: str = "",
                 name: str = "p.yaml", tasks: str = "") -> Path:
    body = f"""
        version: 1
        name: llm-test
        concurrency: 1
        {extra}
        tasks:
          ask:
            uses: llm
            retry: {{attempts: 1}}
            with:
              api_base: {srv.api_base}
              api_key: sk-test
              {with_}
        {tasks}
        """
    return write(body, name)


def test_an_llm_task_answers_and_reports_usage_cost_and_model(write_pipeline, srv) -> None:
    path = llm_pipeline(write_pipeline, srv, "model: openai/gpt-4o-mini\n              prompt: Say hi\n"
                                             "              system: Be brief\n              temperature: 0.2")
    result = goatclaw.run(path)
    assert result.ok, result.tasks["ask"].error
    out = result.tasks["ask"].output
    assert out["text"] == "echo: Say hi"
    assert out["data"] is None
    assert out["model"] == "openai/gpt-4o-mini"
    assert out["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    assert out["cost_usd"] == pytest.approx(11 * 0.15e-6 + 7 * 0.6e-6)
    assert out["latency_ms"] > 0 and out["hops"] == [] and out["source"] == "live"
    sent = srv.requests[0]
    assert sent["messages"] == [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Say hi"}]
    assert sent["temperature"] == 0.2 and sent["model"] == "gpt-4o-mini"
    assert srv.headers[0]["authorization"] == "Bearer sk-test"
    with Store.open(result.store_path) as db:  # stored with the run
        assert db.tasks(result.run_id)[0].output["usage"]["total_tokens"] == 18


def test_an_unpriced_model_costs_zero_and_never_crashes(write_pipeline, srv) -> None:
    path = llm_pipeline(write_pipeline, srv, "model: openai/my-local-model\n              prompt: hi")
    result = goatclaw.run(path)
    assert result.ok and result.tasks["ask"].output["cost_usd"] == 0.0


def test_json_output_is_parsed_and_checked_against_the_schema(write_pipeline, srv) -> None:
    srv.respond = lambda body: Reply('```json\n{"summary": "s", "confidence": 0.9}\n```')
    path = llm_pipeline(write_pipeline, srv, "model: openai/gpt-4o-mini\n              prompt: give JSON\n"
                                             "              output: json\n"
                                             "              schema: {type: object, required: [summary, confidence]}")
    result = goatclaw.run(path)
    assert result.ok, result.tasks["ask"].error
    assert result.tasks["ask"].output["data"] == {"summary": "s", "confidence": 0.9}
    assert srv.requests[0]["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize("reply", ["not json at all", '{"confidence": Infinity, "summary": "x"}',
                                   '{"confidence": NaN, "summary": "x"}', '{"summary": "no confidence"}'])
def test_a_reply_that_is_not_the_json_asked_for_is_invalid_output(write_pipeline, srv, reply: str) -> None:
    srv.respond = lambda body: Reply(reply)
    path = llm_pipeline(write_pipeline, srv, "model: openai/gpt-4o-mini\n              prompt: give JSON\n"
                                             "              output: json\n"
                                             "              schema: {type: object, required: [summary, confidence]}")
    result = goatclaw.run(path)
    task = result.tasks["ask"]
    assert not result.ok and task.error_class == "invalid_output", task.error


def ask(srv: FakeOpenAI, *models: str, **kwargs: Any) -> room.Response:
    """One direct call through the LLM room (no pipeline)."""
    request = room.Request(models=models, messages=({"role": "user", "content": "hi"},), api_base=srv.api_base,
                           api_key="sk-test", **kwargs)
    return asyncio.run(_closing(room.complete(request)))


async def _closing(coro: Any) -> Any:
    async with room.using(room.Session()):
        return await coro


def test_429_is_rate_limit_with_the_servers_retry_after(srv) -> None:
    srv.respond = lambda body: Reply(status=429, headers={"Retry-After": "7"}, error="slow down")
    with pytest.raises(TaskError) as info:
        ask(srv, "openai/gpt-4o-mini")
    assert info.value.error_class == "rate_limit" and info.value.retry_after == 7.0
    assert "slow down" in info.value.message
    assert len(srv.requests) == 1  # litellm did not retry on its own


@pytest.mark.parametrize(("status", "error", "error_class"), [
    (500, "boom", "server_error"), (503, "overloaded", "server_error"), (401, "bad key", "auth"),
    (403, "forbidden", "auth"), (400, "bad request", "invalid_input"), (404, "no such model", "invalid_input"),
    (400, "This model's maximum context length is 8192 tokens", "context_length"),
])
def test_http_errors_map_to_error_classes(srv, status: int, error: str, error_class: str) -> None:
    srv.respond = lambda body: Reply(status=status, error=error)
    with pytest.raises(TaskError) as info:
        ask(srv, "openai/gpt-4o-mini")
    assert info.value.error_class == error_class, info.value.message
    assert len(srv.requests) == 1


def test_a_hanging_server_is_a_timeout(srv) -> None:
    srv.respond = lambda body: Reply(hang=10)
    started = time.monotonic()
    with pytest.raises(TaskError) as info:
        ask(srv, "openai/gpt-4o-mini", timeout=0.5)
    assert info.value.error_class == "timeout"
    assert time.monotonic() - started < 5


def test_a_server_that_is_gone_is_a_connection_error() -> None:
    gone = FakeOpenAI().start()
    gone.stop()
    with pytest.raises(TaskError) as info:
        ask(gone, "openai/gpt-4o-mini", timeout=5)
    assert info.value.error_class == "connection", info.value.message


def test_a_missing_api_key_is_auth(srv, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    request = room.Request(models=("openai/gpt-4o-mini",), messages=({"role": "user", "content": "hi"},),
                           api_base=srv.api_base)
    with pytest.raises(TaskError) as info:
        asyncio.run(_closing(room.complete(request)))
    assert info.value.error_class == "auth", info.value.message


def test_fallbacks_take_the_next_model_and_record_every_hop(write_pipeline, srv) -> None:
    srv.respond = by_model({"primary": Reply(status=429, error="busy"), "second": Reply(status=500, error="down")})
    path = llm_pipeline(write_pipeline, srv, "model: [openai/primary, openai/second, openai/third]\n"
                                             "              prompt: hi")
    bus = goatclaw.Bus()
    seen: list[Any] = []
    bus.subscribe("llm.*", seen.append)
    result = goatclaw.run(path, bus=bus)
    assert result.ok, result.tasks["ask"].error
    out = result.tasks["ask"].output
    assert out["model"] == "openai/third" and out["text"] == "echo: hi"
    assert [(h["model"], h["error_class"]) for h in out["hops"]] == [("openai/primary", "rate_limit"),
                                                                      ("openai/second", "server_error")]
    assert [r["model"] for r in srv.requests] == ["primary", "second", "third"]
    assert [e.topic for e in seen] == ["llm.fallback", "llm.fallback", "llm.call"]


def test_the_project_fallbacks_follow_a_single_model(project, write_pipeline, srv) -> None:
    (project / "goatclaw.yaml").write_text("version: 1\nmodel: openai/primary\nfallbacks: [openai/backup]\n"
                                            "permissions: {network: [127.0.0.1]}\n")
    srv.respond = by_model({"primary": Reply(status=503, error="down")})
    path = llm_pipeline(write_pipeline, srv, "prompt: hi")
    result = goatclaw.run(path)
    assert result.ok and result.tasks["ask"].output["model"] == "openai/backup"


def test_auth_errors_are_neither_retried_nor_fallen_back_from(write_pipeline, srv) -> None:
    srv.respond = by_model({"primary": Reply(status=401, error="invalid api key")})
    path = llm_pipeline(write_pipeline, srv, "model: [openai/primary, openai/backup]\n              prompt: hi")
    path.write_text(path.read_text().replace("retry: {attempts: 1}", "retry: {attempts: 3, delay: 0}"))
    result = goatclaw.run(path)
    task = result.tasks["ask"]
    assert task.error_class == "auth" and task.attempts == 1
    assert [r["model"] for r in srv.requests] == ["primary"]


def test_when_every_model_fails_the_last_error_names_the_hops(srv) -> None:
    srv.respond = lambda body: Reply(status=503, error="down")
    with pytest.raises(TaskError) as info:
        ask(srv, "openai/a", "openai/b")
    assert info.value.error_class == "server_error"
    assert [h["model"] for h in info.value.details["hops"]] == ["openai/a", "openai/b"]


def test_the_cache_answers_an_identical_request_without_the_server(project, write_pipeline, srv) -> None:
    (project / "goatclaw.yaml").write_text("version: 1\nllm: {cache: true}\npermissions: {network: [127.0.0.1]}\n")
    path = llm_pipeline(write_pipeline, srv, "model: openai/gpt-4o-mini\n              prompt: hi\n"
                                             "              temperature: 0")
    first = goatclaw.run(path)
    second = goatclaw.run(path)
    assert first.ok and second.ok
    assert len(srv.requests) == 1
    assert second.tasks["ask"].output["source"] == "cache"
    assert second.tasks["ask"].output["text"] == first.tasks["ask"].output["text"]
    assert second.tasks["ask"].output["cost_usd"] == 0.0


def test_a_recorded_cassette_answers_with_the_server_shut_down(project, write_pipeline, monkeypatch) -> None:
    monkeypatch.setenv("DIGEST_TOKEN", "tok-very-secret-123")
    with FakeOpenAI() as own:
        path = llm_pipeline(write_pipeline, own, "model: openai/gpt-4o-mini\n"
                                                 "              prompt: 'token ${{ secrets.DIGEST_TOKEN }}: hi'",
                            extra="secrets: [DIGEST_TOKEN]")
        recorded = goatclaw.run(path, llm="record")
        assert recorded.ok, recorded.tasks["ask"].error
        assert len(own.requests) == 1 and "tok-very-secret-123" in own.requests[0]["messages"][0]["content"]
    cassette = path.with_suffix(".cassette.json")
    text = cassette.read_text()
    assert "tok-very-secret-123" not in text and "sk-test" not in text and "***" in text
    assert len(json.loads(text)["exchanges"]) == 1
    monkeypatch.setenv("DIGEST_TOKEN", "another-value-in-ci")  # the key does not depend on the secret's value
    replayed = goatclaw.run(path, llm="replay")
    assert replayed.ok, replayed.tasks["ask"].error
    out = replayed.tasks["ask"].output
    assert out["source"] == "cassette" and out["text"] == "echo: token ***: hi" and out["cost_usd"] == 0.0


def test_a_recording_that_fell_back_replays_from_the_model_that_answered(write_pipeline) -> None:
    with FakeOpenAI(by_model({"primary": Reply(status=429, error="busy")})) as own:
        path = llm_pipeline(write_pipeline, own, "model: [openai/primary, openai/backup]\n              prompt: hi")
        assert goatclaw.run(path, llm="record").ok
    replayed = goatclaw.run(path, llm="replay")
    assert replayed.ok and replayed.tasks["ask"].output["model"] == "openai/backup"


def test_replay_of_an_unseen_request_fails_clearly(write_pipeline, srv) -> None:
    path = llm_pipeline(write_pipeline, srv, "model: openai/gpt-4o-mini\n              prompt: never recorded")
    path.with_suffix(".cassette.json").write_text('{"version": 1, "exchanges": {}}')
    result = goatclaw.run(path, llm="replay")
    task = result.tasks["ask"]
    assert task.error_class == "invalid_input"
    key = room.request_key("openai/gpt-4o-mini", room.Request(
        models=("openai/gpt-4o-mini",), messages=({"role": "user", "content": "never recorded"},)))
    assert key[:16] in (task.error or "") and "openai/gpt-4o-mini" in (task.error or "")
    assert srv.requests == []


def test_a_budget_stops_the_run_before_it_is_exceeded(write_pipeline, srv) -> None:
    # each call: ~8 prompt tokens + max_tokens 10 estimated, 11 + 7 tokens charged (5.85e-06 $)
    path = llm_pipeline(write_pipeline, srv, "model: openai/gpt-4o-mini\n              prompt: hi\n"
                                             "              max_tokens: 10",
                        extra="budget: {usd: 0.00001}",
                        tasks=f"""
          again:
            uses: llm
            needs: ask
            retry: {{attempts: 1}}
            with: {{model: openai/gpt-4o-mini, prompt: hi again, max_tokens: 10, api_base: {srv.api_base},
                   api_key: sk-test}}
        """)
    result = goatclaw.run(path)
    assert result.tasks["ask"].status.value == "succeeded"
    assert result.tasks["again"].error_class == "budget", result.tasks["again"].error
    assert len(srv.requests) == 1


def test_the_rate_limiter_holds_a_sliding_window() -> None:
    now = [0.0]
    limiter = room.RateLimiter(rpm=2, tpm=100, clock=lambda: now[0])
    assert limiter._wait_time(10) == 0
    limiter._calls.extend([(0.0, 10), (1.0, 10)])
    assert limiter._wait_time(10) == 60.0  # the third request waits for the first to leave
    now[0] = 60.5  # the first call has left the window
    assert limiter._wait_time(10) == 0
    assert limiter._wait_time(95) == pytest.approx(0.5)  # too many tokens until 61.0


def test_rate_limits_hold_under_100_concurrent_tasks(project, write_pipeline, srv) -> None:
    (project / "goatclaw.yaml").write_text("version: 1\nrate_limits:\n  openai/gpt-4o-mini: {rpm: 40}\n"
                                            "permissions: {network: [127.0.0.1]}\n")
    path = write_pipeline(f"""
        version: 1
        concurrency: 100
        vars: {{n: {list(range(100))}}}
        tasks:
          ask:
            uses: llm
            foreach: ${{{{ vars.n }}}}
            timeout: 3s
            retry: {{attempts: 1}}
            with: {{model: openai/gpt-4o-mini, prompt: "n=${{{{ item }}}}", api_base: {srv.api_base},
                    api_key: sk-test}}
        """)
    result = goatclaw.run(path)
    assert not result.ok  # 60 of the 100 cannot start within a minute, so they time out
    assert len(srv.requests) == 40


def test_the_llm_task_is_checked_at_validate_time(write_pipeline) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          ask: {uses: llm, with: {promt: hi, model: openai/gpt-4o-mini}}
        """)
    _, problems = goatclaw.check(path)
    assert any("promt" in p.message for p in problems)


def test_goatclaw_without_llm_tasks_never_imports_litellm(project) -> None:
    code = ("import sys, goatclaw\n"
            "r = goatclaw.run('pipelines/quickstart.yaml', store=False)\n"
            "assert r.ok, r\n"
            "assert 'litellm' not in sys.modules, 'litellm was imported'\n"
            "import goatclaw.llm, goatclaw.tasks.llm\n"
            "assert 'litellm' not in sys.modules, 'litellm was imported by the llm modules'\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_example_replays_offline_from_its_cassette(tmp_path) -> None:
    done = subprocess.run([sys.executable, "-m", "goatclaw", "apply", "pipelines/llm-digest.yaml", "--llm", "replay",
                           "--output", "json", "--store", str(tmp_path / "db")],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OPENAI_API_KEY": "sk-none"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(secret=st.one_of(st.text(alphabet="abcdefXYZ0123456789-_", min_size=8, max_size=20), _TEXT.filter(
    lambda s: len(s) >= 8)), before=_TEXT, after=_TEXT, inside=st.booleans(), encoded=st.sampled_from(
    ["plain", "base64", "hex", "json", "none"]))
def test_a_request_key_is_the_key_of_the_request_masked_value_by_value(secret: str, before: str, after: str,
                                                                       inside: bool, encoded: str) -> None:
    """The fast path (no secret in the canonical JSON: no masking) gives the key the masked request gives."""
    import base64
    import hashlib

    from goatclaw.llm import request as req

    form = {"plain": secret, "base64": base64.b64encode(secret.encode()).decode(), "hex": secret.encode().hex(),
            "json": json.dumps(secret)[1:-1], "none": ""}[encoded]
    content = before + (form if inside else "") + after
    request = room.Request(models=("m",), messages=({"role": "user", "content": content},
                                                    {"role": "system", "content": after}))
    slow = hashlib.sha256(req._canonical(req._masked_request("m", request, [secret])).encode()).hexdigest()
    assert room.request_key("m", request, [secret]) == slow


_JSONISH = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _TEXT),
                        lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                                                st.dictionaries(_TEXT, inner, max_size=4)), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(value=_JSONISH)
def test_the_canonical_json_is_what_json_dumps_writes(value: Any) -> None:
    """Request keys (and so every recorded cassette) hash this text: the encoder built once writes what dumps did."""
    from goatclaw.llm import request as req

    value = {"value": value, "other": Path("x")}  # not JSON: its str()
    assert req._canonical(value) == json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                               default=str)


def test_an_answer_is_read_from_a_plain_response_object_too() -> None:
    """Usage and cost come from where pydantic keeps them in litellm's responses, and by attribute otherwise."""
    from types import SimpleNamespace

    from goatclaw.llm import provider

    message = SimpleNamespace(content="hi", tool_calls=None)
    raw = SimpleNamespace(choices=[SimpleNamespace(message=message)], model="served",
                          usage=SimpleNamespace(prompt_tokens=3, completion_tokens=2, total_tokens=5),
                          _hidden_params={"response_cost": 0.25})
    answer = provider._answer_of(raw, "openai/gpt-4o-mini", 1.5)
    assert answer == {"text": "hi", "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
                      "cost_usd": 0.25, "model": "openai/gpt-4o-mini", "served_by": "served", "latency_ms": 1.5}
