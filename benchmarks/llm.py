"""LLM calls: goatclaw's overhead per call next to calling litellm directly, in the same run.

Run: ``python benchmarks/llm.py [--n 1000] [--concurrency 50] [--tools K [--repeat 3]] [--smoke]``

The local OpenAI-compatible server of tests/openai_server.py runs in a subprocess (so its
threads do not share this interpreter's GIL) and answers every chat completion at once.
Against it, in one process and in this order (litellm imported and warmed up first):

* ``litellm.acompletion`` direct: ``n`` calls, at most ``concurrency`` in flight;
* ``goatclaw.llm.complete``: the same through the LLM room (key, budget/rate-limit
  checks, error mapping, answer parsing), no engine;
* ``goatclaw.llm.complete`` in a session with a budget (never reached): every call's worst
  case counted (tokens, price) and reserved;
* ``goatclaw.run``: a pipeline of ``n`` ``llm`` tasks with ``concurrency:``, each task
  stored with its events in a fresh store.

Printed per way: wall time, calls per second, wall ms per call, median in-call latency,
and the overhead per call against the direct calls (wall difference / n).

``--tools K`` times the tool loop instead: a second server plays a model that calls the
``echo`` tool ``K`` times at once, then answers; ``n`` loops (two model calls and ``K``
tool calls each) run as the bare litellm loop (the tool a plain function), through
``goatclaw.llm.converse`` (the LLM room's loop, the tool a plain function), and as
``goatclaw.run`` of ``n`` ``llm`` tasks with ``tools: [{uses: echo}]`` (each call an
attempt of its task: grant, masking, events, audit, store). The overhead is per tool call:
the wall difference / (n × K).

``--plan`` times planning a goal (``goatclaw run "GOAL"``'s planner) instead: the server answers
every call with a valid pipeline; ``n`` plans one after another through
``goatclaw.planner.aplan_goal`` (the prompt from the catalogue, the ceiling and memory, the
model call, the YAML draft and its full check), against ``n`` bare ``litellm.acompletion``
calls with the same messages and ``response_format``. The overhead is goatclaw's own work per
plan beyond the model's time (target: under 50 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MODEL = "openai/gpt-4o-mini"


def start_server(*args: str) -> tuple[subprocess.Popen[str], str]:
    """The local server in a subprocess, and its api_base."""
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "openai_server.py"), *args], stdout=subprocess.PIPE,
                            text=True, cwd=REPO / "tests")
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


async def direct(api_base: str, n: int, concurrency: int) -> tuple[float, list[float]]:
    """``n`` litellm.acompletion calls, ``concurrency`` at a time: wall seconds and each call's ms."""
    from goatclaw import llm as room

    litellm = room._litellm()
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(i: int) -> None:
        async with gate:
            t = time.perf_counter()
            await litellm.acompletion(model=MODEL, messages=[{"role": "user", "content": f"hello {i}"}],
                                      api_base=api_base, api_key="sk-bench", max_tokens=16, num_retries=0,
                                      max_retries=0)
            latencies.append((time.perf_counter() - t) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - started
    await room._close_litellm_clients()
    return wall, latencies


#: Per goatclaw.llm.complete call at concurrency 1, by way (without and with a budget): its whole time minus the
#: time inside litellm.acompletion.
OWN_MS: dict[str, list[float]] = {}
#: The same in this thread's CPU time: what a busy machine's waits for a core do not inflate.
OWN_CPU_MS: dict[str, list[float]] = {}
#: The budget of the way that has one: never reached, so every call is estimated and admitted.
BUDGET_USD = 1e6


async def room_calls(api_base: str, n: int, concurrency: int, budget: float | None = None) -> tuple[float, list[float]]:
    """``n`` goatclaw.llm.complete calls, ``concurrency`` at a time (in a session with ``budget`` when given).

    At concurrency 1, ``litellm.acompletion`` is wrapped with a clock for the run, so each
    call's own goatclaw time (the whole call minus litellm's part) lands in :data:`OWN_MS`:
    a measure the noise of litellm's own CPU (milliseconds a call, varying by a millisecond
    from round to round) does not drown. :data:`OWN_CPU_MS` has the same split in the
    thread's CPU time (the wall figure also counts the moments the process waited for a core).
    """
    from goatclaw import llm as room

    litellm = room._litellm()
    inner = litellm.acompletion
    spent: list[tuple[float, float]] = []

    async def clocked(*args: Any, **kwargs: Any) -> Any:
        t, c = time.perf_counter(), time.thread_time()
        try:
            return await inner(*args, **kwargs)
        finally:
            spent.append(((time.perf_counter() - t) * 1000, (time.thread_time() - c) * 1000))

    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    way = "without a budget" if budget is None else "with a budget"

    async def one(i: int) -> None:
        async with gate:
            request = room.Request(models=(MODEL,), messages=({"role": "user", "content": f"hello {i}"},),
                                   max_tokens=16, api_base=api_base, api_key="sk-bench")
            t, c = time.perf_counter(), time.thread_time()
            response = await room.complete(request)
            if concurrency == 1 and spent:
                wall, cpu = spent.pop()
                OWN_MS.setdefault(way, []).append((time.perf_counter() - t) * 1000 - wall)
                OWN_CPU_MS.setdefault(way, []).append((time.thread_time() - c) * 1000 - cpu)
            latencies.append(response.latency_ms)

    if concurrency == 1:
        litellm.acompletion = clocked
    started = time.perf_counter()
    try:
        async with room.using(room.Session(budget_usd=budget)):
            await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        litellm.acompletion = inner
    return time.perf_counter() - started, latencies


def pipeline_run(api_base: str, n: int, concurrency: int, folder: Path) -> tuple[float, list[float]]:
    """A pipeline of ``n`` llm tasks through goatclaw.run: wall seconds and each call's latency_ms."""
    import goatclaw

    # the local server is on 127.0.0.1: a pipeline's llm tasks reach only the hosts it grants
    lines = ["version: 1", "name: llm-bench", f"concurrency: {concurrency}", "permissions: {network: [127.0.0.1]}",
             "tasks:"]
    for i in range(n):
        lines.append(f"  t{i}: {{uses: llm, retry: {{attempts: 1}}, with: {{model: {MODEL}, prompt: hello {i}, "
                     f"max_tokens: 16, api_base: '{api_base}', api_key: sk-bench}}}}")
    path = folder / "bench.yaml"
    path.write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    result = goatclaw.run(path, store=folder / "bench.db")
    wall = time.perf_counter() - started
    failed = [t for t in result.tasks.values() if t.error]
    if failed:
        raise SystemExit(f"{len(failed)} tasks failed, e.g. {failed[0].error}")
    return wall, [t.output["latency_ms"] for t in result.tasks.values()]


TOOLS = [{"type": "function", "function": {"name": "echo", "description": "echo",
                                           "parameters": {"type": "object", "properties": {"value": {}}}}}]


def echo_tool(arguments: str) -> str:
    """The bare loops' tool: what the ``echo`` task returns, as JSON text."""
    return json.dumps(json.loads(arguments).get("value"))


async def bare_loops(api_base: str, n: int, concurrency: int) -> tuple[float, list[float]]:
    """``n`` tool loops on litellm alone: ask, run the calls, ask again with their results."""
    from goatclaw import llm as room

    litellm = room._litellm()
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(i: int) -> None:
        async with gate:
            t = time.perf_counter()
            messages: list[dict[str, Any]] = [{"role": "user", "content": f"hello {i}"}]
            kwargs = {"model": MODEL, "api_base": api_base, "api_key": "sk-bench", "max_tokens": 16,
                      "num_retries": 0, "max_retries": 0, "tools": TOOLS}
            first = (await litellm.acompletion(messages=messages, **kwargs)).choices[0].message
            messages.append({"role": "assistant", "content": first.content, "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": c.function.name,
                                                              "arguments": c.function.arguments}}
                for c in first.tool_calls]})
            messages += [{"role": "tool", "tool_call_id": c.id, "content": echo_tool(c.function.arguments)}
                         for c in first.tool_calls]
            await litellm.acompletion(messages=messages, **kwargs)
            latencies.append((time.perf_counter() - t) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - started
    await room._close_litellm_clients()
    return wall, latencies


async def room_loops(api_base: str, n: int, concurrency: int) -> tuple[float, list[float]]:
    """``n`` tool loops through ``goatclaw.llm.converse``, the tool a plain function."""
    from goatclaw import llm as room

    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def call_tool(name: str, arguments: str) -> dict[str, Any]:
        return {"content": echo_tool(arguments), "error_class": None}

    async def one(i: int) -> None:
        async with gate:
            t = time.perf_counter()
            request = room.Request(models=(MODEL,), messages=({"role": "user", "content": f"hello {i}"},),
                                   max_tokens=16, api_base=api_base, api_key="sk-bench", tools=tuple(TOOLS))
            await room.converse(request, call_tool=call_tool)
            latencies.append((time.perf_counter() - t) * 1000)

    started = time.perf_counter()
    async with room.using(room.Session()):
        await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - started, latencies


def pipeline_loops(api_base: str, n: int, concurrency: int, folder: Path) -> tuple[float, list[float]]:
    """A pipeline of ``n`` llm tasks whose model calls the ``echo`` task as a tool."""
    import goatclaw

    lines = ["version: 1", "name: llm-tools-bench", f"concurrency: {concurrency}",
             "permissions: {network: [127.0.0.1]}", "tasks:"]
    for i in range(n):
        lines.append(f"  t{i}: {{uses: llm, retry: {{attempts: 1}}, with: {{model: {MODEL}, prompt: hello {i}, "
                     f"max_tokens: 16, api_base: '{api_base}', api_key: sk-bench, tools: [{{uses: echo}}]}}}}")
    path = folder / "bench-tools.yaml"
    path.write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    result = goatclaw.run(path, store=folder / "bench-tools.db")
    wall = time.perf_counter() - started
    failed = [t for t in result.tasks.values() if t.error]
    if failed:
        raise SystemExit(f"{len(failed)} tasks failed, e.g. {failed[0].error}")
    return wall, [sum(turn["latency_ms"] for turn in t.output["trajectory"]) for t in result.tasks.values()]


def tool_loops(n: int, concurrency: int, calls: int, repeat: int) -> None:
    """The ``--tools K`` table: the tool loop three ways, each the best of ``repeat`` interleaved runs."""
    proc, api_base = start_server("--tool-calls", str(calls))
    best: dict[str, tuple[float, list[float]]] = {}
    try:
        asyncio.run(bare_loops(api_base, 10, 5))  # warm up
        for _ in range(repeat):  # interleaved, so that a busy moment of the machine does not favour one way
            runs = [("bare litellm tool loop", asyncio.run(bare_loops(api_base, n, concurrency))),
                    ("goatclaw.llm.converse", asyncio.run(room_loops(api_base, n, concurrency)))]
            with tempfile.TemporaryDirectory() as tmp:
                runs.append((f"goatclaw.run, {n} llm tasks with tools",
                             pipeline_loops(api_base, n, concurrency, Path(tmp))))
            for name, run in runs:
                if name not in best or run[0] < best[name][0]:
                    best[name] = run
    finally:
        proc.terminate()
        proc.wait(5)
    rows = [(name, *run) for name, run in best.items()]
    base = rows[0][1]
    print(f"{n} tool loops of 2 model calls and {calls} tool calls, concurrency {concurrency}, best of {repeat}, "
          f"against the local server (Python {sys.version.split()[0]})")
    print("| way | wall s | loops/s | wall ms/loop | median loop ms | overhead ms/tool call vs bare |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, wall, lat in rows:
        over = "-" if wall is base else f"{(wall - base) * 1000 / (n * calls):+.3f}"
        print(f"| {name} | {wall:.2f} | {n / wall:.0f} | {wall * 1000 / n:.2f} | {statistics.median(lat):.1f} | "
              f"{over} |")


PLAN = {"version": 1, "permissions": {"files": {"write": ["out/"]}}, "tasks": {
    "greet": {"uses": "echo", "with": {"value": "hello"}},
    "save": {"uses": "file.write", "needs": ["greet"],
             "with": {"path": "out/hello.txt", "content": "${{ tasks.greet.output }}"}}}}


def planning(n: int) -> None:
    """The planning table: ``n`` plans of a goal, and ``n`` bare calls with the same messages."""
    from goatclaw import api, planner
    from goatclaw import llm as room

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "reply.json").write_text(json.dumps(PLAN))
        (root / "goatclaw.yaml").write_text("version: 1\nmodel: openai/gpt-4o-mini\n")
        (root / "pipelines").mkdir()
        os.chdir(root)
        proc, api_base = start_server("--reply", str(root / "reply.json"))
        os.environ.update(OPENAI_BASE_URL=api_base, OPENAI_API_KEY="sk-bench")
        try:
            project = api.load_project_for(None)
            registry = api.registry_for(project)
            schema, digest = planner._schema_digest()
            messages = planner.prompt("Write a greeting", planner.catalogue(registry), planner.ceiling(project), [],
                                      digest)
            litellm = room._litellm()
            response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema,
                                                                      "strict": False}}

            async def bare() -> float:
                started = time.perf_counter()
                for _ in range(n):
                    await litellm.acompletion(model=MODEL, messages=messages, temperature=0,
                                              response_format=response_format, num_retries=0, max_retries=0)
                    await room._close_litellm_clients()  # as a plan's session does: a fresh connection per call
                return time.perf_counter() - started

            async def plans() -> tuple[float, float]:
                """Wall seconds, and seconds inside the model calls (their latency_ms: litellm and the server)."""
                started = time.perf_counter()
                in_calls = 0.0
                for i in range(n):
                    done = await planner.aplan_goal(f"Write a greeting {i}", project=project, registry=registry)
                    assert done.ok, [str(p) for d in done.drafts for p in d.errors]
                    in_calls += sum(float(c[3]["latency_ms"]) for c in done.calls) / 1000
                return time.perf_counter() - started, in_calls

            asyncio.run(bare())  # warm up: litellm's import, its first client, the plugins
            asyncio.run(plans())
            base = asyncio.run(bare())
            wall, in_calls = asyncio.run(plans())
        finally:
            proc.terminate()
            proc.wait(5)
    print(f"{n} plans of a goal, one after another, against the local server (Python {sys.version.split()[0]})")
    print("| way | wall s | ms/plan | ms/plan in the model call | goatclaw's own ms/plan (wall - call) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    per = base * 1000 / n
    print(f"| litellm.acompletion, the same messages | {base:.2f} | {per:.1f} | {per:.1f} | - |")
    print(f"| goatclaw.planner.aplan_goal (prompt, call, draft, check) | {wall:.2f} | {wall * 1000 / n:.1f} | "
          f"{in_calls * 1000 / n:.1f} | {(wall - in_calls) * 1000 / n:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--concurrency", default="1,50,100",
                        help="calls in flight; a comma-separated list runs the table once for each (default 1,50,100)")
    parser.add_argument("--tools", type=int, default=0, help="time the tool loop: K tool calls per loop")
    parser.add_argument("--repeat", type=int, default=3, help="with --tools: the best of this many runs per way")
    parser.add_argument("--plan", action="store_true", help="time planning a goal (goatclaw run \"GOAL\")")
    parser.add_argument("--smoke", action="store_true",
                        help="a few calls, a few tool loops, a few plans, once: checks the benchmark runs (CI)")
    args = parser.parse_args()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    levels = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    if args.smoke:
        calls(20, [1, 5])
        tool_loops(5, 5, 2, 1)
        planning(3)
        return
    if args.plan:
        planning(min(args.n, 200))
        return
    if args.tools:
        tool_loops(args.n, levels[-1], args.tools, args.repeat)
        return
    calls(args.n, levels)


def calls(n: int, levels: list[int]) -> None:
    """The calls table for each concurrency in ``levels``: ``n`` calls four ways, in the same run.

    The ways: litellm direct, the LLM room (without and with a budget), ``goatclaw.run``. The server answers at once, so
    the wall time at concurrency 1 is mostly the client's own work; at 50 and 100 the server
    (another process) paces them. The CPU column is this process's CPU time (the server's is
    not in it), so ``CPU overhead`` is goatclaw's own work per call, whatever the pacing.
    """
    proc, api_base = start_server()
    rounds = 5 if n >= 100 else 1
    per = max(1, n // rounds)
    tables = []
    try:
        asyncio.run(direct(api_base, 20, 5))  # warm up: litellm's import and first client
        for concurrency in levels:
            ways: dict[str, list[tuple[float, list[float], float]]] = {}
            for _ in range(rounds):  # interleaved: the machine's drift falls on every way alike
                for name, fn in _ways(api_base, per, concurrency):
                    (wall, lat), cpu = _timed(fn)
                    ways.setdefault(name, []).append((wall, lat, cpu))
            tables.append((concurrency, ways))
    finally:
        proc.terminate()
        proc.wait(5)
    print(f"{per * rounds} calls against the local server per way and concurrency, in {rounds} interleaved rounds; "
          f"medians of the rounds (Python {sys.version.split()[0]}; load average {os.getloadavg()[0]:.2f})")
    print("| concurrency | way | calls/s | median call ms | CPU ms/call | CPU overhead ms/call vs direct "
          "| wall overhead ms/call |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for concurrency, ways in tables:
        base_wall = statistics.median(w for w, _, _ in ways["litellm.acompletion direct"]) / per
        base_cpu = statistics.median(c for _, _, c in ways["litellm.acompletion direct"]) / per
        for name, runs in ways.items():
            wall = statistics.median(w for w, _, _ in runs) / per
            cpu = statistics.median(c for _, _, c in runs) / per
            lat = statistics.median(x for _, ls, _ in runs for x in ls)
            first = name == "litellm.acompletion direct"
            print(f"| {concurrency} | {name} | {1 / wall:.0f} | {lat:.1f} | {cpu * 1000:.3f} | "
                  f"{'-' if first else f'{(cpu - base_cpu) * 1000:+.3f}'} | "
                  f"{'-' if first else f'{(wall - base_wall) * 1000:+.2f}'} |")
    print("\ngoatclaw.llm.complete's own time per call at concurrency 1 (the call minus litellm.acompletion in it); "
          "target (issue 24): under 0.2 ms")
    for way, wall_ms in OWN_MS.items():
        cpu_ms = OWN_CPU_MS[way]
        print(f"- {way} ({len(wall_ms)} calls): {statistics.median(wall_ms):.3f} ms median, {_p95(wall_ms):.3f} ms p95 "
              f"(wall); {statistics.median(cpu_ms):.3f} ms median, {_p95(cpu_ms):.3f} ms p95 (CPU)")


def _p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.95) - 1)]


def _ways(api_base: str, n: int, concurrency: int) -> list[tuple[str, Any]]:
    """The four ways to make ``n`` calls, each a function returning ``(wall, latencies)``."""

    def run_pipeline() -> tuple[float, list[float]]:
        with tempfile.TemporaryDirectory() as tmp:
            return pipeline_run(api_base, n, concurrency, Path(tmp))

    return [("litellm.acompletion direct", lambda: asyncio.run(direct(api_base, n, concurrency))),
            ("goatclaw.llm.complete", lambda: asyncio.run(room_calls(api_base, n, concurrency))),
            ("goatclaw.llm.complete, with a budget",
             lambda: asyncio.run(room_calls(api_base, n, concurrency, budget=BUDGET_USD))),
            ("goatclaw.run of llm tasks", run_pipeline)]


def _timed(fn: Any) -> tuple[tuple[float, list[float]], float]:
    """``fn()``'s ``(wall, latencies)`` and the CPU seconds this process spent in it."""
    cpu = time.process_time()
    out = fn()
    return out, time.process_time() - cpu


if __name__ == "__main__":
    main()
