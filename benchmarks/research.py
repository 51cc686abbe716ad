"""research's cost per page beside fetching the same pages alone, in the same run.

    python benchmarks/research.py [--pages 20] [--smoke]

A local site (tests/local_http.py) serves copies of pipelines/research/site/wal.html; the
model is tests/openai_server.py (answering at once, so the model's own time is ~0). Row one:
an ``http`` task per page (fan-out, concurrency 4). Row two: one ``research`` task reading the
same pages (fetch, trafilatura, chunking, wordllama ranking, one model call, citation check).
The embedder's load is paid before the timing starts.
"""

from __future__ import annotations

import argparse
import json
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

PAGE = (REPO / "pipelines" / "research" / "site" / "wal.html").read_bytes()


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


def timed(path: Path, workspace: Path) -> float:
    import goatclaw

    started = time.perf_counter()
    result = goatclaw.run(path, workspace=workspace, store=False)
    elapsed = time.perf_counter() - started
    if not result.ok:
        raise SystemExit(f"{path.name}: {[(t, r.error) for t, r in result.tasks.items() if r.error]}")
    return elapsed


def main() -> None:
    """Time both pipelines and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="2 pages, for the tests")
    args = parser.parse_args()
    pages = 2 if args.smoke else args.pages
    from goatclaw import llm as room
    from goatclaw.memory.embedders import embedder_for

    room._litellm()
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
        fetch = timed(work / "fetch.yaml", work)
        research = timed(work / "research.yaml", work)
    print(f"| what ({pages} pages) | total ms | ms per page |")
    print("|---|---:|---:|")
    print(f"| http task per page (fetch alone) | {fetch * 1000:.1f} | {fetch * 1000 / pages:.2f} |")
    print(f"| research (fetch, extract, rank, answer, check) | {research * 1000:.1f} | "
          f"{research * 1000 / pages:.2f} |")
    print(f"\nresearch / fetch alone: {research / fetch:.2f}x")


if __name__ == "__main__":
    main()
