"""Evals: what a fork saves against re-running a whole pipeline, and what an assertion costs to judge.

Run: ``python benchmarks/evals.py [--tasks 6] [--n 2000] [--smoke]``

Fork. A chain of ``--tasks`` ``llm`` tasks (each reads the one before; sampled at temperature
0.7, so no answer cache applies) runs once against the local OpenAI server of
tests/openai_server.py (in this process: its request log counts the calls). Then, in the same
store: the whole pipeline again with one prompt changed (the baseline: what you do without a
fork), and ``goatclaw.fork`` at the first, middle and last task with that same change. Printed
per way: requests the server got, answers taken from the stored run, dollars (gpt-4o-mini
prices for the server's token counts), wall time, and the ratio of requests to the baseline's.

Assertions. ``--n`` evaluations of each cheap kind (contains, icontains, regex on RE2,
is_json with a schema, levenshtein, starts_with, cost, latency) against one observed run,
next to the same number of expression asserts (``check_assert``) measured in the same run as
the baseline; ``similar`` is timed over fewer (it embeds two texts with wordllama each time;
the first call's model load is reported apart).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def load_note() -> str:
    try:
        one, _five, _fifteen = os.getloadavg()
        return f"load average {one:.2f} on {os.cpu_count()} cores"
    except OSError:
        return "load unknown"


def chain(api_base: str, tasks: int, changed: int | None = None) -> str:
    """A pipeline of ``tasks`` llm tasks in a chain; task ``changed`` (if any) has another prompt."""
    lines = ["version: 1", "name: chain", "tasks:"]
    for i in range(tasks):
        before = f" after ${{{{ tasks.t{i - 1}.output.text | length }}}} characters" if i else ""
        word = "Restate" if i == changed else "State"
        lines += [f"  t{i}:", "    uses: llm", "    retry: {attempts: 1}"]
        if i:
            lines.append(f"    needs: t{i - 1}")
        lines += ["    with:", "      model: openai/gpt-4o-mini", f"      api_base: {api_base}",
                  "      api_key: sk-bench", "      temperature: 0.7", f"      prompt: \"{word} fact {i}{before}\""]
    return "\n".join(lines) + "\n"


def fork_table(tasks: int) -> list[str]:
    from openai_server import FakeOpenAI

    import goatclaw
    from goatclaw import llm as room

    room._litellm()
    rows = []
    with FakeOpenAI() as srv, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "goatclaw.yaml").write_text("version: 1\npermissions: {network: [127.0.0.1]}\n")
        os.chdir(root)
        store = root / "store.db"
        (root / "chain.yaml").write_text(chain(srv.api_base, tasks))
        first = goatclaw.run(root / "chain.yaml", store=store)
        assert first.ok, first.tasks
        srv.requests.clear()

        def measure(way: str, at: int | None) -> None:
            (root / "edited.yaml").write_text(chain(srv.api_base, tasks, changed=at if at is not None else 0))
            srv.requests.clear()
            started = time.perf_counter()
            if at is None:
                result = goatclaw.run(root / "edited.yaml", store=store)
            else:
                result = goatclaw.fork(first.run_id, f"t{at}", edit=root / "edited.yaml", store=store)
            wall = time.perf_counter() - started
            assert result.ok, result.tasks
            outs = [t.output for tid, t in result.tasks.items() if isinstance(t.output, dict)
                    and tid not in result.resumed]  # a fork's kept tasks did not run: not its cost
            stored = sum(1 for o in outs if o.get("source") == "stored")
            cost = sum(float(o.get("cost_usd") or 0.0) for o in outs if o.get("source") == "live")
            rows.append((way, len(srv.requests), stored, cost, wall))

        measure(f"re-run all {tasks} tasks, one prompt (t0's) changed (baseline)", None)
        for at in (0, tasks // 2, tasks - 1):
            measure(f"fork --from t{at}, t{at}'s prompt changed", at)
    base = rows[0][1]
    out = ["| way | server requests | stored answers used | cost | wall | requests vs baseline |",
           "|---|---:|---:|---:|---:|---:|"]
    for way, sent, stored, cost, wall in rows:
        out.append(f"| {way} | {sent} | {stored} | ${cost:.6f} | {wall * 1000:.0f} ms | {sent / base:.2f}x |")
    return out


def assertion_table(n: int, similar_n: int) -> list[str]:
    from goatclaw.assertions import Observation, evaluate, parse
    from goatclaw.engine.state import RunResult, RunStatus, TaskResult, TaskState
    from goatclaw.testing import assert_context, check_assert

    text = '{"capital": "Tokyo", "fact": "Tokyo, formerly Edo, became the capital of Japan in 1868."}'
    task = TaskResult("answer", TaskState.SUCCEEDED, output=text, started_at=0.0, finished_at=0.2)
    run = RunResult("bench", "bench", RunStatus.SUCCEEDED, {"answer": task})
    context = assert_context(run, {"country": "Japan"})
    seen = Observation(run, (("llm.call", "answer", {"source": "live", "cost_usd": 0.00001}),), 0.2, context,
                       "answer")
    kinds: list[tuple[str, dict[str, Any]]] = [
        ("contains", {"contains": "Tokyo"}), ("icontains", {"icontains": "TOKYO"}),
        ("regex (RE2)", {"regex": r'"capital":\s*"[A-Z][a-z]+"'}),
        ("is_json + schema", {"is_json": {"schema": {"type": "object", "required": ["capital", "fact"]}}}),
        ("levenshtein", {"levenshtein": text.replace("Tokyo", "Tokio")}), ("starts_with", {"starts_with": '{"cap'}),
        ("cost", {"cost": 0.001}), ("latency", {"latency": 1000}),
    ]

    async def timed(item: dict[str, Any], count: int) -> float:
        assertion = parse(item)
        started = time.perf_counter()
        for _ in range(count):
            outcome = await evaluate(assertion, seen)
            assert outcome.passed, outcome
        return (time.perf_counter() - started) / count * 1e6

    expression = "tasks.answer.output | length > 10"
    started = time.perf_counter()
    for _ in range(n):
        assert check_assert(expression, context) is None
    base = (time.perf_counter() - started) / n * 1e6
    out = ["| assertion | per evaluation | vs an expression assert |", "|---|---:|---:|",
           f"| expression `{expression}` (baseline) | {base:.1f} µs | 1.00x |"]
    for label, item in kinds:
        us = asyncio.run(timed(item, n))
        out.append(f"| {label} | {us:.1f} µs | {us / base:.2f}x |")
    load_started = time.perf_counter()
    asyncio.run(timed({"similar": "Tokyo became the capital of Japan in 1868.", "threshold": 0.5}, 1))
    first = (time.perf_counter() - load_started) * 1000
    us = asyncio.run(timed({"similar": "Tokyo became the capital of Japan in 1868.", "threshold": 0.5}, similar_n))
    out.append(f"| similar (wordllama; first call {first:.0f} ms with the model load) | {us:.1f} µs "
               f"| {us / base:.2f}x |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=textwrap.dedent(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=int, default=6)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check that the benchmark runs")
    args = parser.parse_args()
    tasks, n, similar_n = (3, 20, 3) if args.smoke else (args.tasks, args.n, max(20, args.n // 20))
    print(f"# evals ({load_note()})\n")
    print(f"## fork vs re-run ({tasks} llm tasks in a chain)\n")
    print("\n".join(fork_table(tasks)))
    print(f"\n## assertions ({n} evaluations each; similar {similar_n})\n")
    print("\n".join(assertion_table(n, similar_n)))


if __name__ == "__main__":
    main()
