"""``goatclaw serve`` under load: many concurrent clients against one server on localhost.

Run: ``python benchmarks/serve.py [--clients 100] [--seconds 30] [--smoke]``

Two servers run as subprocesses on 127.0.0.1, each under uvicorn with the same settings:

* **bare**: a Starlette app with one ``POST /runs`` endpoint that parses the JSON body and
  answers 202 with an id (no auth, no store, no run): the floor of the web stack itself;
* **goatclaw**: ``goatclaw serve`` over a scratch project, every request with an API token
  (the gate: address lists, threat score, two rate windows, the token looked up in SQLite),
  each ``POST /api/projects/bench/runs`` loading (cached), checking, auditing and queueing a
  real run of a two-task pipeline that the server then runs into its store.

In each phase ``--clients`` clients (asyncio, one connection each) send requests back to
back for ``--seconds``: against bare, ``POST /runs``; against goatclaw, first ``GET
/api/projects`` alone (the gate and routing, no run going), then a trigger, a ``GET`` of the
run and a ``GET /api/projects`` in turn. After the
goatclaw phase the benchmark waits for the queue to empty and checks every run it was
answered 202 for: stored, succeeded, its events numbered 1..n with no gap, ``run.started``
first and ``run.succeeded`` last, and for a sample the event stream (SSE) gives exactly the
stored events. "Overhead per run" is the server's CPU time (user + system, from
/proc) over the runs it took, next to the bare server's CPU per request. The machine's load
is printed with the table: the client and both servers share its cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent

BARE_APP = """
import itertools, sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

ids = itertools.count(1)

async def runs(request):
    body = await request.json()
    return JSONResponse({"run_id": str(next(ids)), "pipeline": body.get("pipeline")}, status_code=202)

async def health(request):
    return JSONResponse({"status": "ok"})

app = Starlette(routes=[Route("/runs", runs, methods=["POST"]), Route("/health", health)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", proxy_headers=False,
            server_header=False)
"""

PIPELINE = """
version: 1
name: bench
vars: {who: world}
tasks:
  greet:
    uses: echo
    with: {value: "hello ${{ vars.who }}"}
  shout:
    uses: echo
    needs: greet
    with: {value: "${{ tasks.greet.output | upper }}"}
"""

PROJECT = """
version: 1
store: {path: .goatclaw/goatclaw.db}
server:
  runs: {max_running: 8, max_queued: 100000}
  rate_limits: {per_ip_per_minute: null, per_token_per_minute: null}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(argv: list[str], url: str, cwd: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server {argv} exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"server {argv} did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Tally:
    """Latencies (seconds) and statuses per kind of request."""

    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = {}
        self.statuses: dict[str, dict[int, int]] = {}
        self.errors = 0

    def add(self, kind: str, status: int, took: float) -> None:
        self.latency.setdefault(kind, []).append(took)
        counts = self.statuses.setdefault(kind, {})
        counts[status] = counts.get(status, 0) + 1


class Connection:
    """One keep-alive HTTP/1.1 connection on asyncio streams: a client light enough not to be the bottleneck.

    (httpx costs the client about as much CPU per request as the bare server spends answering it;
    with 100 clients on 2 shared cores the client would be what is measured.)
    """

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        self.fixed = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"{host}:{port}", **headers}.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        data = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {path} HTTP/1.1\r\n{self.fixed}Content-Length: {len(data)}\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        self.writer.write(head.encode() + b"\r\n" + data)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next((int(line.split(":", 1)[1]) for line in lines[1:]
                       if line.lower().startswith("content-length:")), 0)
        payload = await self.reader.readexactly(length) if length else b""
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


async def hammer(port: int, headers: dict[str, str], clients: int, seconds: float, steps: Any) -> tuple[Tally, float]:
    """``clients`` clients (a connection each) running ``steps(connection, tally)`` in a loop for ``seconds``."""
    tally = Tally()
    stop_at = time.monotonic() + seconds

    async def one() -> None:
        connection = Connection("127.0.0.1", port, headers)
        try:
            while time.monotonic() < stop_at:
                try:
                    await steps(connection, tally)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    tally.errors += 1
                    await connection.close()
                    connection = Connection("127.0.0.1", port, headers)
        finally:
            await connection.close()

    began = time.monotonic()
    await asyncio.gather(*(one() for _ in range(clients)))
    return tally, time.monotonic() - began


async def timed(connection: Connection, tally: Tally, kind: str, method: str, path: str,
                body: Any = None) -> tuple[int, bytes]:
    began = time.perf_counter()
    status, payload = await connection.request(method, path, body)
    tally.add(kind, status, time.perf_counter() - began)
    return status, payload


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


def bare_phase(folder: Path, clients: int, seconds: float) -> dict[str, Any]:
    port = free_port()
    script = folder / "bare.py"
    script.write_text(textwrap.dedent(BARE_APP))
    url = f"http://127.0.0.1:{port}"
    proc = start([sys.executable, str(script), str(port)], url, folder)
    try:
        async def steps(connection: Connection, tally: Tally) -> None:
            await timed(connection, tally, "bare POST /runs", "POST", "/runs", {"pipeline": "pipelines/bench.yaml"})

        cpu0 = cpu_seconds(proc.pid)
        tally, took = asyncio.run(hammer(port, {}, clients, seconds, steps))
        cpu = cpu_seconds(proc.pid) - cpu0
    finally:
        stop(proc)
    return {"tally": tally, "took": took, "cpu": cpu}


def goatclaw_phase(folder: Path, clients: int, seconds: float, sample: int) -> dict[str, Any]:
    from goatclaw.server import accounts

    project = folder / "bench"
    (project / "pipelines").mkdir(parents=True)
    (project / "goatclaw.yaml").write_text(textwrap.dedent(PROJECT).lstrip())
    (project / "pipelines" / "bench.yaml").write_text(textwrap.dedent(PIPELINE).lstrip())
    store = project / ".goatclaw" / "goatclaw.db"
    key, _ = accounts.create_token(store, "bench", ["run"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start([sys.executable, "-m", "goatclaw", "serve", "--project", str(project), "--port", str(port),
                  "--log-level", "warning"], url, project)
    accepted: list[str] = []
    headers = {"Authorization": f"Bearer {key}"}
    try:
        async def steps(connection: Connection, tally: Tally) -> None:
            status, payload = await timed(connection, tally, "goatclaw POST runs (trigger)", "POST",
                                          "/api/projects/bench/runs",
                                          {"pipeline": "pipelines/bench.yaml", "vars": {"who": "bench"}})
            if status == 202:
                run_id = json.loads(payload)["run_id"]
                accepted.append(run_id)
                await timed(connection, tally, "goatclaw GET run", "GET", f"/api/projects/bench/runs/{run_id}")
            await timed(connection, tally, "goatclaw GET /api/projects", "GET", "/api/projects")

        async def gate_only(connection: Connection, tally: Tally) -> None:
            await timed(connection, tally, "goatclaw GET /api/projects, no runs going", "GET", "/api/projects")

        cpu0 = cpu_seconds(proc.pid)
        gate, gate_took = asyncio.run(hammer(port, headers, clients, seconds, gate_only))
        gate_cpu = cpu_seconds(proc.pid) - cpu0
        cpu0 = cpu_seconds(proc.pid)
        tally, took = asyncio.run(hammer(port, headers, clients, seconds, steps))
        drained_at = time.monotonic()
        while True:
            runs = httpx.get(url + "/health", timeout=30).json()["runs"]
            if runs["running"] == 0 and runs["queued"] == 0:
                break
            time.sleep(0.05)
        drain = time.monotonic() - drained_at
        cpu = cpu_seconds(proc.pid) - cpu0
        streamed = check_streams(url, headers, accepted[:: max(1, len(accepted) // sample)][:sample], store)
    finally:
        stop(proc)
    return {"tally": tally, "took": took, "cpu": cpu, "drain": drain, "accepted": accepted,
            "gate": {"tally": gate, "took": gate_took, "cpu": gate_cpu},
            "check": check_store(store, accepted), "streamed": streamed}


def check_store(store: Path, run_ids: list[str]) -> dict[str, int]:
    """Every accepted run stored and succeeded, its events 1..n, started first and succeeded last."""
    from goatclaw.store import Store

    lost_runs = failed = bad_events = events = 0
    with Store.open(store) as db:
        for run_id in run_ids:
            row = db.run(run_id)
            if row is None:
                lost_runs += 1
                continue
            if row.status != "succeeded":
                failed += 1
            evs = db.events(run_id)
            events += len(evs)
            seqs = [e["seq"] for e in evs]
            if (seqs != list(range(1, len(seqs) + 1)) or not evs or evs[0]["topic"] != "run.started"
                    or evs[-1]["topic"] != "run.succeeded"):
                bad_events += 1
    return {"lost_runs": lost_runs, "failed": failed, "bad_event_logs": bad_events, "events": events}


def check_streams(url: str, headers: dict[str, str], run_ids: list[str], store: Path) -> dict[str, int]:
    """For each run: the SSE stream's event ids are exactly the stored sequence numbers."""
    from goatclaw.store import Store

    mismatched = 0
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client, Store.open(store) as db:
        for run_id in run_ids:
            text = client.get(f"/api/projects/bench/runs/{run_id}/events").text
            ids = [int(line[4:]) for line in text.splitlines() if line.startswith("id: ")]
            if ids != [e["seq"] for e in db.events(run_id)] or "event: end" not in text:
                mismatched += 1
    return {"checked": len(run_ids), "mismatched": mismatched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--sample", type=int, default=50, help="runs whose event stream is checked against the store")
    parser.add_argument("--smoke", action="store_true", help="a few clients for about 2 s: checks the benchmark runs")
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.seconds, args.sample = 4, 2.0, 5
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="goatclaw-bench-serve-") as tmp:
        bare = bare_phase(Path(tmp), args.clients, args.seconds)
        ours = goatclaw_phase(Path(tmp), args.clients, args.seconds, args.sample)
    load_after = os.getloadavg()
    report(args, bare, ours, load_before, load_after)
    check = ours["check"]
    if check["lost_runs"] or check["failed"] or check["bad_event_logs"] or ours["streamed"]["mismatched"]:
        raise SystemExit(f"lost or broken runs: {check}, streams: {ours['streamed']}")


def report(args: Any, bare: dict[str, Any], ours: dict[str, Any], before: tuple[float, ...],
           after: tuple[float, ...]) -> None:
    cores = os.cpu_count()
    print(f"\n{args.clients} clients for {args.seconds:g} s per server on 127.0.0.1 ({cores} cores; load average "
          f"{before[0]:.2f} before, {after[0]:.2f} after; the clients and the server share the cores)\n")
    print("| requests | count | req/s | p50 ms | p99 ms | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|")
    for phase in (bare, ours["gate"], ours):
        tally = phase["tally"]
        for kind, values in tally.latency.items():
            bad = sum(n for s, n in tally.statuses[kind].items() if not 200 <= s < 300)
            print(f"| {kind} | {len(values):,} | {len(values) / phase['took']:,.0f} | {pct(values, 0.5):.1f} | "
                  f"{pct(values, 0.99):.1f} | {bad} |")
    runs = len(ours["accepted"])
    bare_requests = sum(len(v) for v in bare["tally"].latency.values())
    bare_cpu_ms = bare["cpu"] / max(1, bare_requests) * 1000
    run_cpu_ms = ours["cpu"] / max(1, runs) * 1000
    trigger = ours["tally"].latency.get("goatclaw POST runs (trigger)", [])
    bare_post = bare["tally"].latency.get("bare POST /runs", [])
    check, streamed = ours["check"], ours["streamed"]
    gate = ours["gate"]
    gate_requests = sum(len(v) for v in gate["tally"].latency.values())
    gate_cpu_ms = gate["cpu"] / max(1, gate_requests) * 1000
    print("\n| per triggered run | goatclaw | bare Starlette POST | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| server CPU ms (goatclaw: the trigger, its GETs and the run itself) | {run_cpu_ms:.2f} | "
          f"{bare_cpu_ms:.2f} | {run_cpu_ms / bare_cpu_ms if bare_cpu_ms else float('nan'):.1f} |")
    print(f"| server CPU ms per request through the gate alone (GET /api/projects, no runs) | {gate_cpu_ms:.2f} | "
          f"{bare_cpu_ms:.2f} | {gate_cpu_ms / bare_cpu_ms if bare_cpu_ms else float('nan'):.1f} |")
    print(f"| trigger answer p50 ms | {pct(trigger, 0.5):.1f} | {pct(bare_post, 0.5):.1f} | "
          f"{pct(trigger, 0.5) / pct(bare_post, 0.5) if bare_post else float('nan'):.1f} |")
    print(f"\nruns accepted {runs:,} ({runs / ours['took']:,.0f}/s); all done {ours['drain']:.1f} s after the load "
          f"ended; lost runs {check['lost_runs']}, failed {check['failed']}, broken event logs "
          f"{check['bad_event_logs']} ({check['events']:,} events); event streams checked {streamed['checked']}, "
          f"differing from the store {streamed['mismatched']}; "
          f"client errors {ours['tally'].errors + bare['tally'].errors}")


if __name__ == "__main__":
    main()
