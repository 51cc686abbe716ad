"""Budgets that never overshoot, rate limits shared by processes, and Retry-After: 0.

Against the local OpenAI-compatible server (tests/openai_server.py) through litellm; the
cross-process test runs two real goatclaw processes on one SQLite store.
"""

from __future__ import annotations

import os
import subprocess
import sys
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


# -- rate limits across processes that share a store -------------------------------------------


def _in_two_processes(project: Path, pipeline: Path) -> list[subprocess.CompletedProcess[str]]:
    code = "import goatclaw, sys; r = goatclaw.run(sys.argv[1]); print(r.status.value)"
    paths = (os.environ.get("PYTHONPATH"), str(REPO / "tests"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(pipeline)], cwd=project, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def test_two_processes_with_rpm_2_make_two_calls_a_minute_between_them(project, write_pipeline, srv) -> None:
    (project / "goatclaw.yaml").write_text("version: 1\nrate_limits:\n  openai/gpt-4o-mini: {rpm: 2}\n"
                                            "permissions: {network: [127.0.0.1]}\n")
    path = write_pipeline(f"""
        version: 1
        concurrency: 3
        tasks:
          ask:
            uses: llm
            foreach: [a, b, c]
            timeout: 4s
            retry: {{attempts: 1}}
            with: {{model: openai/gpt-4o-mini, prompt: "${{{{ item }}}}", api_base: "{srv.api_base}",
                    api_key: sk-test}}
        """)
    done = _in_two_processes(project, path)
    assert all(d.returncode == 0 for d in done), [d.stderr[-2000:] for d in done]
    assert len(srv.requests) == 2  # not 2 per process


def test_two_processes_share_the_processes_per_minute_limit(project, write_pipeline) -> None:
    (project / "goatclaw.yaml").write_text("version: 1\nrate_limits:\n  side_effects: {processes_per_minute: 2}\n"
                                            "permissions: {shell: true, files: {read: [.], write: [.]}}\n")
    path = write_pipeline("""
        version: 1
        concurrency: 3
        tasks:
          touch:
            uses: shell
            foreach: [a, b, c]
            timeout: 3s
            retry: {attempts: 1}
            with: {run: [sh, -c, "echo ${{ item }} >> started.txt"]}
        """)
    done = _in_two_processes(project, path)
    assert all(d.returncode == 0 for d in done), [d.stderr[-2000:] for d in done]
    assert len((project / "started.txt").read_text().split()) == 2


def test_a_flat_priced_model_costs_what_litellm_prices_it_at() -> None:
    """The budget's estimates price a flat-priced model from its two rates: litellm's figure, to the last bit."""
    import importlib
    import random

    provider = importlib.import_module("goatclaw.llm.provider")
    litellm = room._litellm()
    chat = [m for m, e in sorted(litellm.model_cost.items()) if isinstance(e, dict) and e.get("mode") == "chat"]
    assert provider._flat_prices("openai/gpt-4o-mini") is not None
    pick = random.Random(24)
    flat = [m for m in pick.sample(chat, 150) if provider._flat_prices(m) is not None]
    assert len(flat) > 50
    for model in ["openai/gpt-4o-mini", *flat]:
        prompt, completion = pick.randint(0, 300_000), pick.randint(0, 60_000)
        a, b = litellm.cost_per_token(model=model, prompt_tokens=prompt, completion_tokens=completion)
        assert provider._cost(model, prompt, completion) == float(a) + float(b), model


def test_a_model_priced_by_tier_is_priced_by_litellm_every_time() -> None:
    """A price that changes above a token count is litellm's to work out, call by call."""
    import importlib

    provider = importlib.import_module("goatclaw.llm.provider")
    litellm = room._litellm()
    tiered = [m for m, e in sorted(litellm.model_cost.items()) if isinstance(e, dict) and e.get("mode") == "chat"
              and (any("above_" in k for k in e) or "tiered_pricing" in e)]
    assert tiered
    assert all(provider._flat_prices(m) is None for m in tiered)
    model = next(m for m in tiered if any(k.startswith("input_cost_per_token_above_") for k in litellm.model_cost[m]))
    a, b = litellm.cost_per_token(model=model, prompt_tokens=300_000, completion_tokens=10)
    assert provider._cost(model, 300_000, 10) == float(a) + float(b)
