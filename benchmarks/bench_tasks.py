"""The specialist tasks' own cost, each beside what it wraps, measured in the same run.

    python benchmarks/bench_tasks.py [--rows 1000000] [--pages 20] [--repeat 3]
    python benchmarks/bench_tasks.py --smoke      # 10,000 rows, 2 pages (tests/test_benchmarks.py)

Row one: the ``data`` task running a GROUP BY over a CSV of ``--rows`` rows, called through
the plugin contract (a real TaskContext and grant: the lockdown, the grant checks, the input
hashing for taint, the row conversion), beside the same query in DuckDB alone.

Row two: ``research`` reading ``--pages`` pages of a local site (copies of
pipelines/research/site/wal.html), per page: fetch through the ``http`` task's path,
trafilatura, chunking, wordllama ranking, one model call (tests/openai_server.py, answering
at once, so the model's own time is ~0) and the citation check; beside an ``http`` task per
page doing the fetching alone (fan-out, concurrency 4). Both are ``goatclaw.run`` of a
pipeline without a store; litellm's import and the embedder's load are paid before timing.

Each time is the best of ``--repeat``; the machine's load is printed with the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "pipelines"))

from local_http import serving  # noqa: E402
from openai_server import FakeOpenAI  # noqa: E402
from record_research_digest import respond  # noqa: E402

QUERY = "SELECT k, count(*) AS n, sum(v) AS total FROM sales GROUP BY k ORDER BY k"
PAGE = (REPO / "pipelines" / "research" / "site" / "wal.html").read_bytes()


# -- the data task beside DuckDB alone ---------------------------------------------------------


def make_csv(path: Path, rows: int) -> None:
    """``rows`` rows of ``k,v``: 100 keys, values under 1,000."""
    rnd = random.Random(7)
    with open(path, "w") as fh:
        fh.write("k,v\n")
        fh.writelines(f"k{rnd.randrange(100)},{rnd.randrange(1000)}\n" for _ in range(rows))


def duckdb_alone(path: Path) -> tuple[float, list[Any]]:
    """The query in DuckDB itself: seconds, and its rows."""
    import duckdb

    start = time.perf_counter()
    con = duckdb.connect(":memory:")
    con.execute(f"CREATE VIEW sales AS SELECT * FROM read_csv('{path}')")
    rows = con.execute(QUERY).fetchall()
    con.close()
    return time.perf_counter() - start, rows


def data_task(ws: Path) -> tuple[float, list[Any]]:
    """The same query through the ``data`` task: seconds, and its rows."""
    from goatclaw.plugin import TaskContext
    from goatclaw.security.permissions import Grant
    from goatclaw.tasks.data import data

    ctx = TaskContext(run_id="b", task_id="d", workspace=ws, permissions=Grant.everything(ws))
    start = time.perf_counter()
    out = asyncio.run(data(ctx, files={"sales": "sales.csv"}, query=QUERY))
    return time.perf_counter() - start, [tuple(r.values()) for r in out["rows"]]


def data_row(rows: int, repeat: int) -> tuple[str, str, float, float]:
    """(what, baseline, baseline seconds, task seconds), the two answers checked equal."""
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        make_csv(ws / "sales.csv", rows)
        alone = [duckdb_alone(ws / "sales.csv") for _ in range(repeat)]
        task = [data_task(ws) for _ in range(repeat)]
    if [list(r) for r in alone[0][1]] != [list(r) for r in task[0][1]]:
        raise SystemExit("the data task and DuckDB disagree")
    return (f"data: GROUP BY over a {rows:,}-row CSV", "DuckDB alone",
            min(t for t, _ in alone), min(t for t, _ in task))


# -- research per page beside fetching alone ---------------------------------------------------


class Site(BaseHTTPRequestHandler):
    """Every path is the WAL page."""

    def log_message(self, *args: Any) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        """The page."""
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)


def timed_run(path: Path, workspace: Path) -> float:
    """Seconds for ``goatclaw.run`` of ``path`` (without a store); a failed run stops the benchmark."""
    import goatclaw

    started = time.perf_counter()
    result = goatclaw.run(path, workspace=workspace, store=False)
    elapsed = time.perf_counter() - started
    if not result.ok:
        raise SystemExit(f"{path.name}: {[(t, r.error) for t, r in result.tasks.items() if r.error]}")
    return elapsed


def research_row(pages: int, repeat: int) -> tuple[str, str, float, float]:
    """(what, baseline, baseline seconds per page, research seconds per page)."""
    from goatclaw import llm as room
    from goatclaw.memory.embedders import embedder_for

    room._litellm()
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):  # a line per call would bury the table
        logging.getLogger(name).setLevel(logging.WARNING)
    embedder_for(None).embed(["warm"])
    with tempfile.TemporaryDirectory() as tmp, serving(Site) as site, FakeOpenAI(respond) as srv:
        work = Path(tmp)
        (work / "goatclaw.yaml").write_text("version: 1\n")
        urls = [f"{site}/p{i}.html" for i in range(pages)]
        grant = 'permissions: {network: ["127.0.0.1"]}\n'
        (work / "fetch.yaml").write_text(f"version: 1\n{grant}concurrency: 4\ntasks:\n  get:\n    uses: http\n"
                                         f"    foreach: {json.dumps(urls)}\n    with: {{url: '${{{{ item }}}}', "
                                         "response: text}\n")
        (work / "research.yaml").write_text(
            f"version: 1\n{grant}tasks:\n  r:\n    uses: research\n    with:\n      question: What is WAL?\n"
            f"      urls: {json.dumps(urls)}\n      max_pages: {pages}\n      model: openai/gpt-4o-mini\n"
            f"      api_base: {srv.api_base}\n      api_key: sk-bench\n")
        fetch = min(timed_run(work / "fetch.yaml", work) for _ in range(repeat))
        research = min(timed_run(work / "research.yaml", work) for _ in range(repeat))
    return (f"research: per page, {pages} pages (fetch, extract, rank, answer, check)",
            "an http task per page (fetch alone)", fetch / pages, research / pages)


def main() -> None:
    """Measure both rows and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="10,000 rows, 2 pages, once: for the tests")
    args = parser.parse_args()
    rows, pages, repeat = (10_000, 2, 1) if args.smoke else (args.rows, args.pages, args.repeat)
    load = os.getloadavg()
    measured = [data_row(rows, repeat), research_row(pages, repeat)]
    after = os.getloadavg()
    print(f"best of {repeat}; load average {load[0]:.2f} before, {after[0]:.2f} after, on {os.cpu_count()} cores\n")
    print("| what | baseline | baseline ms | task ms | task / baseline |")
    print("|---|---|---:|---:|---:|")
    for what, baseline, base_s, task_s in measured:
        print(f"| {what} | {baseline} | {base_s * 1000:,.1f} | {task_s * 1000:,.1f} | {task_s / base_s:.2f}x |")


if __name__ == "__main__":
    main()
