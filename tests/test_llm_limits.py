"""Budgets that never overshoot, rate limits shared by processes, and Retry-After: 0.

Against the local OpenAI-compatible server (tests/openai_server.py) through litellm; the
cross-process test runs two real goatclaw processes on one SQLite store.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from openai_server import FakeOpenAI, Reply

import goatclaw
from goatclaw import llm as room
from goatclaw.store import Store

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def litellm_imported() -> None:
    room._litellm()


def _two_calls(write: Callable[..., Path], srv: FakeOpenAI, budget: float, max_tokens: str = "") -> Path:
    def task(tid: str, needs: str = "") -> str:
        return f"""
          {tid}:
            uses: llm
            {needs}
            retry: {{attempts: 1}}
            with: {{model: openai/gpt-4o-mini, prompt: "{tid}", api_base: "{srv.api_base}", api_key: sk-test
                    {max_tokens}}}"""
    return write(f"""
        version: 1
        budget: {{usd: {budget}}}
        tasks:{task("first")}{task("second", "needs: [first]")}
        """)


def test_a_budget_without_max_tokens_is_never_overshot(write_pipeline, srv) -> None:
    # each answer is 10,000 completion tokens (0.006 $ for gpt-4o-mini): two do not fit in 0.01 $
    srv.respond = lambda body: Reply("long answer", completion_tokens=10_000)
    path = _two_calls(write_pipeline, srv, 0.01)
    result = goatclaw.run(path)
    spent = sum(t.output["cost_usd"] for t in result.tasks.values() if t.output)
    assert spent <= 0.01, f"spent {spent} of a 0.01 $ budget"
    assert result.tasks["first"].status.value == "succeeded"
    assert result.tasks["second"].error_class == "budget", result.tasks["second"].error
    assert len(srv.requests) == 1


def test_max_tokens_bounds_the_worst_case(write_pipeline, srv) -> None:
    srv.respond = lambda body: Reply("short", completion_tokens=50)
    path = _two_calls(write_pipeline, srv, 0.01, ", max_tokens: 100")
    result = goatclaw.run(path)
    assert result.ok, {t: r.error for t, r in result.tasks.items()}


def test_validate_warns_when_a_budgeted_llm_task_has_no_max_tokens(write_pipeline, srv) -> None:
    path = _two_calls(write_pipeline, srv, 0.01)
    _, problems = goatclaw.check(path)
    warned = [p for p in problems if "max_tokens" in p.message]
    assert [p.severity for p in warned] == ["warn", "warn"]
    assert [p.path for p in warned] == ["tasks.first.with", "tasks.second.with"]
    bounded = _two_calls(write_pipeline, srv, 0.01, ", max_tokens: 100")
    assert not [p for p in goatclaw.check(bounded)[1] if "max_tokens" in p.message]


def test_adaptive_backoff_honours_retry_after_zero(write_pipeline, srv) -> None:
    calls = []

    def busy_then_ok(body: dict) -> Reply:
        calls.append(time.monotonic())
        return Reply(status=429, headers={"Retry-After": "0"}, error="busy") if len(calls) < 3 else Reply("ok")

    srv.respond = busy_then_ok
    path = write_pipeline(f"""
        version: 1
        tasks:
          ask:
            uses: llm
            retry: {{attempts: 3, backoff: adaptive, delay: 2s, max_delay: 30s}}
            with: {{model: openai/gpt-4o-mini, prompt: hi, api_base: "{srv.api_base}", api_key: sk-test}}
        """)
    result = goatclaw.run(path)
    assert result.ok, result.tasks["ask"].error
    with Store.open(result.store_path) as db:
        delays = [e["data"]["delay"] for e in db.events(result.run_id) if e["topic"] == "task.retrying"]
    assert delays == [0.0, 0.0]
    assert calls[-1] - calls[0] < 1.5
