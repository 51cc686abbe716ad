"""A webhook delivery's cost next to a bare Starlette endpoint, and the timetable's.

Run: ``python benchmarks/webhooks.py [--requests 3000] [--smoke]``

Both endpoints are served in process (httpx's ASGI transport, so the network is not what is
measured) and read the same 1 KB JSON body. The bare one reads it and answers 202; goatclaw's
``POST /hooks/{pipeline}`` bounds the body, checks the HMAC-SHA256 signature, parses the
JSON, validates it against the pipeline's schema, picks the vars and calls the trigger (one
that returns a run id without running anything: the run's own cost is the engine's
benchmark). The difference per request is what a webhook adds. The timetable rows time
``next_after`` and ``missed`` after a year of downtime (``catch_up: latest`` and ``all``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import goatclaw
from goatclaw.schedule import Timetable
from goatclaw.server.webhooks import SIGNATURE_HEADER, sign, webhook_routes
from goatclaw.spec.model import Schedule

SECRET = "bench-secret"
PIPELINE = """\
version: 1
name: hook
vars: {ref: none, sha: none}
on:
  webhook:
    secret: BENCH_HOOK_SECRET
    schema:
      type: object
      required: [ref, head_commit]
      properties:
        ref: {type: string, pattern: "^refs/heads/"}
        head_commit: {type: object, required: [id], properties: {id: {type: string}}}
    vars: {ref: ref, sha: head_commit.id}
tasks:
  t: {uses: echo}
"""


async def bare(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"received": len(body)}, status_code=202)


async def rate(app: Any, path: str, body: bytes, headers: dict[str, str], n: int) -> float:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for _ in range(min(50, n)):  # warm up
            await client.post(path, content=body, headers=headers)
        began = time.perf_counter()
        for _ in range(n):
            response = await client.post(path, content=body, headers=headers)
        elapsed = time.perf_counter() - began
    assert response.status_code == 202, response.text
    return n / elapsed


def timetable_costs(n: int) -> list[tuple[str, float]]:
    now = time.time()
    rows = []
    table = Timetable.of(Schedule(cron="0 7 * * 1-5", timezone="Europe/Berlin"))
    began = time.perf_counter()
    for i in range(n):
        table.next_after(now + i * 3600)
    rows.append(("next_after, '0 7 * * 1-5' Europe/Berlin", (time.perf_counter() - began) / n))
    for catch_up in ("latest", "all"):
        minutely = Timetable.of(Schedule(cron="* * * * *", catch_up=catch_up))
        began = time.perf_counter()
        for _ in range(max(1, n // 100)):
            minutely.missed(now - 366 * 86400, now)
        rows.append((f"missed after a year down, every minute, catch_up: {catch_up}",
                     (time.perf_counter() - began) / max(1, n // 100)))
    return rows


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "hook.yaml").write_text(textwrap.dedent(PIPELINE))
        os.environ["BENCH_HOOK_SECRET"] = SECRET
        pipeline = goatclaw.load(root / "hook.yaml")
        started = 0

        async def trigger(path: str, vars: dict[str, Any], trigger: str = "webhook") -> str:
            nonlocal started
            started += 1
            return f"run-{started}"

        hooked = Starlette(routes=webhook_routes(trigger, project=root, pipelines=[pipeline]))
        plain = Starlette(routes=[Route("/bare", bare, methods=["POST"])])
        body = json.dumps({"ref": "refs/heads/main", "head_commit": {"id": "a" * 40},
                           "padding": "x" * 900}).encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(SECRET, body)}
        best_bare = best_hook = 0.0
        for _ in range(args.repeat):
            best_bare = max(best_bare, await rate(plain, "/bare", body, headers, args.requests))
            best_hook = max(best_hook, await rate(hooked, "/hooks/hook", body, headers, args.requests))
    load = os.getloadavg()[0]
    print(f"\n{args.requests:,} POSTs of a {len(body)} B body, in process, best of {args.repeat} "
          f"(Python {sys.version.split()[0]}, load average {load:.2f} on {os.cpu_count()} cores)\n")
    print("| endpoint | requests/s | µs/request | vs bare |")
    print("|----------|-----------:|-----------:|--------:|")
    print(f"| bare Starlette, reads the body | {best_bare:,.0f} | {1e6 / best_bare:,.0f} | 1.00 |")
    print(f"| POST /hooks/{{pipeline}}: bound, HMAC, JSON, schema, vars, trigger | {best_hook:,.0f} | "
          f"{1e6 / best_hook:,.0f} | {best_hook / best_bare:.2f} |")
    print(f"\nwhat a webhook adds: {1e6 / best_hook - 1e6 / best_bare:,.0f} µs a request\n")
    print("| timetable | µs/call |")
    print("|-----------|--------:|")
    for name, seconds in timetable_costs(args.calls):
        print(f"| {name} | {seconds * 1e6:,.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, once: checks the benchmark runs (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.requests, args.calls, args.repeat = 60, 100, 1
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
