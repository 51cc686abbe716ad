"""The ``research`` task through the front door: real HTML pages from a local site, trafilatura,
the offline embedder, and the model over HTTP through litellm (tests/openai_server.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import trafilatura
from local_http import serving
from openai_server import FakeOpenAI, Reply, scripted, tool_call, tool_messages

import goatclaw
from goatclaw import llm as room
from goatclaw.store import Store

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
SITE = REPO / "pipelines" / "research" / "site"
sys.path.insert(0, str(REPO / "pipelines"))
from record_research_digest import passages, respond  # noqa: E402

sys.path.remove(str(REPO / "pipelines"))


@pytest.fixture(scope="module", autouse=True)
def litellm_imported() -> None:
    """Pay litellm's import once, outside the tests' task timeouts."""
    room._litellm()


class Site(BaseHTTPRequestHandler):
    """The fixture pages, a SearXNG-shaped /search, and a page on a path nobody links."""

    def log_message(self, *args: Any) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        """``/NAME.html`` and ``/search?q=``."""
        path = self.path.split("?", 1)[0]
        if path == "/search":
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            body = json.dumps({"results": [{"url": f"{base}/wal.html", "title": "WAL", "content": "x"},
                                           {"url": f"{base}/missing.html", "title": "gone", "content": ""},
                                           {"url": "ftp://example.org/x", "title": "not http"}]}).encode()
            kind = "application/json"
        elif (SITE / path.lstrip("/")).is_file():
            body, kind = (SITE / path.lstrip("/")).read_bytes(), "text/html; charset=utf-8"
        else:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        """``/tavily``: Tavily's shape, a JSON body with the query and a bearer key in, ``results`` out."""
        asked = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ok = (self.path == "/tavily" and self.headers.get("Authorization") == "Bearer tvly-test"
              and "WAL" in asked["query"])
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        body = json.dumps({"query": asked.get("query"), "results": [
            {"url": f"{base}/limits.html", "title": "Limits", "content": "x", "score": 0.9}] if ok else []}).encode()
        self.send_response(200 if ok else 400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def site() -> Iterator[str]:
    with serving(Site) as base:
        yield base


@pytest.fixture
def model() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(respond) as srv:
        yield srv


def research_pipeline(write: Any, srv: FakeOpenAI, extra: str, *, permissions: str = "") -> Path:
    return write(f"""
        version: 1
        name: r
        {permissions}
        tasks:
          r:
            uses: research
            retry: {{attempts: 1}}
            with:
              model: openai/gpt-4o-mini
              api_base: {srv.api_base}
              api_key: sk-test
              question: What does WAL change, and what are its limits?
              {extra}
        """)


def page_text(url: str) -> str:
    """The page's readable text, fetched and extracted here, apart from the task."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        return trafilatura.extract(resp.read().decode("utf-8")) or ""


def squash(text: str) -> str:
    return " ".join(text.split()).casefold()


def test_every_citation_has_a_source_whose_quote_is_in_the_fetched_text(write_pipeline, site, model,
                                                                         store_path) -> None:
    path = research_pipeline(write_pipeline, model, f'urls: ["{site}/wal.html", "{site}/limits.html"]\n'
                                                    "              max_passages: 3")
    result = goatclaw.run(path)
    assert result.ok, {t: r.error for t, r in result.tasks.items() if r.error}
    out = result.tasks["r"].output
    cited = sorted({int(n) for n in re.findall(r"\[(\d+)\]", out["answer"])})
    assert cited == [1, 2] and [s["n"] for s in out["sources"]] == [1, 2]
    for n in cited:
        source = out["sources"][n - 1]
        assert squash(source["quote"]) in squash(page_text(source["url"])), source
    assert out["fixes"] == 1  # the first answer misquoted passage 2 and was sent back
    assert [p["from"] for p in out["pages"]] == ["url", "url"]
    # what the model saw: 3 passages ranked from 4 chunks, the page's boilerplate gone, the rejection's reason
    first, second = model.requests
    assert len(passages(first)) == 3
    assert "newsletter" not in json.dumps(first) and "Popular posts" not in json.dumps(first)
    assert "is not in passage 2's page" in second["messages"][-1]["content"]
    with Store.open(store_path) as db:
        events = db.events(result.run_id)
    sent = [r.data["url"] for r in goatclaw.audit_log(store_path, run=result.run_id, action="request.sent")]
    assert sorted(sent) == [f"{site}/limits.html", f"{site}/wal.html"]  # through the http task's path, audited
    assert [e["data"]["problems"][0][:22] for e in events if e["topic"] == "research.rejected"] == [
        "the quote for [2] ('WA"]


def test_a_quote_that_is_never_right_fails_the_task_after_its_fix_attempts(write_pipeline, site) -> None:
    wrong = Reply(json.dumps({"answer": "WAL is fast [1].", "citations": [{"n": 1, "quote": "made up words"}]}))
    with FakeOpenAI(scripted(wrong)) as srv:
        result = goatclaw.run(research_pipeline(write_pipeline, srv, f'urls: ["{site}/wal.html"]\n'
                                                                     "              fix_attempts: 1"))
        asked = len(srv.requests)
    task = result.tasks["r"]
    assert not result.ok and task.error_class == "invalid_output" and asked == 2
    assert "still wrong after 1 fix attempts" in task.error and "made up words" in task.error


def test_a_searxng_search_finds_the_pages_and_skips_what_does_not_load(write_pipeline, site, model) -> None:
    result = goatclaw.run(research_pipeline(write_pipeline, model,
                                            f'search: {{provider: searxng, url: "{site}"}}\n'
                                            f'              urls: ["{site}/limits.html"]'))
    assert result.ok, {t: r.error for t, r in result.tasks.items() if r.error}
    pages = result.tasks["r"].output["pages"]
    assert [(p["url"], p["from"]) for p in pages] == [(f"{site}/limits.html", "url"), (f"{site}/wal.html", "search")]


class SlowSite(BaseHTTPRequestHandler):
    """Every page takes a while; the class counts how many requests are in flight at once."""

    lock = __import__("threading").Lock()
    in_flight = 0
    most = 0
    served = 0

    def log_message(self, *args: Any) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        """``/page-N.html``: a short article, after 0.2 s."""
        import time

        cls = type(self)
        with cls.lock:
            cls.in_flight += 1
            cls.most = max(cls.most, cls.in_flight)
        try:
            time.sleep(0.2)
            body = (SITE / "wal.html").read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        finally:
            with cls.lock:
                cls.in_flight -= 1
                cls.served += 1


def test_pages_are_fetched_a_few_at_a_time_however_many_are_asked(write_pipeline, model) -> None:
    from goatclaw.tasks.research import FETCH_CONCURRENCY

    with serving(SlowSite) as base:
        urls = ", ".join(f'"{base}/page-{i}.html"' for i in range(15))
        goatclaw.run(research_pipeline(write_pipeline, model, f"max_pages: 15\n              urls: [{urls}]"))
    assert SlowSite.served == 15
    assert 1 < SlowSite.most <= FETCH_CONCURRENCY  # concurrent, and bounded


PROVIDER = """
from goatclaw.tasks.search import SearchHit


class SiteIndex:
    \"\"\"A search provider of a package: the site's pages whose name holds a word of the query.\"\"\"

    def __init__(self, config):
        self.base, self.pages = config["base"], config["pages"]

    async def search(self, ctx, query, limit):
        words = query.lower().split()
        return [SearchHit(f"{self.base}/{p}", p) for p in self.pages if any(w in p for w in words)][:limit]


def factory(config):
    return SiteIndex(config)
"""


def test_a_search_provider_from_an_installed_package(write_pipeline, site, model, tmp_path, monkeypatch) -> None:
    """A package's entry point in ``goatclaw.search`` is a provider like the shipped ones."""
    packages = tmp_path / "site-packages"
    (packages / "site_index_search-1.0.dist-info").mkdir(parents=True)
    (packages / "site_index_search-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: site-index-search\nVersion: 1.0\n")
    (packages / "site_index_search-1.0.dist-info" / "entry_points.txt").write_text(
        "[goatclaw.search]\nsite-index = site_index_search:factory\n")
    (packages / "site_index_search.py").write_text(PROVIDER)
    monkeypatch.syspath_prepend(str(packages))
    result = goatclaw.run(research_pipeline(write_pipeline, model, f'search: {{provider: site-index, base: "{site}", '
                                                                   'pages: [wal.html, limits.html, about.html]}'))
    assert result.ok, {t: r.error for t, r in result.tasks.items() if r.error}
    # the question's words "wal" and "its" name two of the three pages
    assert [(p["url"], p["from"]) for p in result.tasks["r"].output["pages"]] == [
        (f"{site}/wal.html", "search"), (f"{site}/limits.html", "search")]
    unknown = goatclaw.run(research_pipeline(write_pipeline, model, "search: {provider: nosuch}"))
    assert unknown.tasks["r"].error_class == "invalid_input"
    assert "unknown provider 'nosuch'" in unknown.tasks["r"].error and "site-index" in unknown.tasks["r"].error


def test_the_tavily_preset_posts_the_query_as_json(write_pipeline, site, model) -> None:
    result = goatclaw.run(research_pipeline(write_pipeline, model, f'search: {{provider: tavily, url: "{site}/tavily", '
                                                                   'headers: {Authorization: Bearer tvly-test}}\n'
                                                                   f'              urls: ["{site}/wal.html"]'))
    assert result.ok, {t: r.error for t, r in result.tasks.items() if r.error}
    assert [(p["url"], p["from"]) for p in result.tasks["r"].output["pages"]] == [
        (f"{site}/wal.html", "url"), (f"{site}/limits.html", "search")]


def test_a_page_on_a_host_the_task_is_not_granted_is_never_fetched(write_pipeline, site, model) -> None:
    path = research_pipeline(write_pipeline, model, f'urls: ["{site}/wal.html"]',
                             permissions="permissions: {network: [api.openai.com]}")
    result = goatclaw.run(path)
    assert not result.ok and result.tasks["r"].error_class == "permission_denied"
    assert "127.0.0.1" in result.tasks["r"].error and model.requests == []


def test_research_is_a_tool_of_the_agent(write_pipeline, site) -> None:
    def agent_or_research(body: dict[str, Any]) -> Reply:
        if "numbered passages" in body["messages"][0]["content"]:
            return respond(body)  # the research tool's own model call
        if not tool_messages(body):
            return Reply(None, tool_calls=[tool_call("research", {"question": "What is a WAL checkpoint?"})])
        found = json.loads(tool_messages(body)[0]["content"])
        return Reply(f"{found['answer']} ({len(found['sources'])} sources)")

    with FakeOpenAI(agent_or_research) as srv:
        path = write_pipeline(f"""
            version: 1
            tasks:
              a:
                uses: agent
                with:
                  model: openai/gpt-4o-mini
                  api_base: {srv.api_base}
                  api_key: sk-test
                  goal: Find out what a WAL checkpoint is.
                  memory: false
                  tools:
                    - uses: research
                      with: {{urls: ["{site}/wal.html"], model: openai/gpt-4o-mini, api_base: "{srv.api_base}",
                              api_key: sk-test}}
            """)
        result = goatclaw.run(path)
        offered = srv.requests[0]["tools"][0]["function"]
    assert result.ok, {t: r.error for t, r in result.tasks.items() if r.error}
    assert offered["name"] == "research" and "question" in offered["parameters"]["required"]
    assert "urls" not in offered["parameters"]["properties"]  # fixed by the pipeline
    assert result.tasks["a"].output["text"].endswith("(2 sources)")


def test_goatclaw_schema_completes_the_keys_of_research(tmp_path) -> None:
    """The schema `goatclaw schema` prints, as yaml-language-server reads it, for a `uses: research` task."""
    done = subprocess.run([sys.executable, "-m", "goatclaw", "schema"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    schema = json.loads(done.stdout)
    branch = next(b for b in schema["$defs"]["task"]["allOf"] if b["if"]["properties"]["uses"] == {"const": "research"})
    keys = branch["then"]["properties"]["with"]["properties"]
    assert {"question", "urls", "search", "memory", "max_pages", "fix_attempts"} <= set(keys)
    assert branch["then"]["properties"]["with"]["required"] == ["question"]
    validator = jsonschema.Draft202012Validator(schema)

    def problems(with_: dict[str, Any]) -> list[str]:
        doc = {"version": 1, "tasks": {"r": {"uses": "research", "with": with_}}}
        return [e.message for e in validator.iter_errors(doc)]

    assert problems({"question": "q", "urls": ["https://example.org"], "max_pages": "${{ vars.n }}"}) == []
    assert problems({"question": "q", "max_pagez": 3})  # a misspelt key is flagged where the editor shows it
    assert problems({"urls": ["https://example.org"]})  # question is required
    assert problems({"question": "q", "max_pages": "three"})
    code = next(b for b in schema["$defs"]["task"]["allOf"] if b["if"]["properties"]["uses"] == {"const": "code"})
    assert {"goal", "folder", "mode", "checks", "max_rounds"} <= set(code["then"]["properties"]["with"]["properties"])


def test_the_shipped_research_digest_replays_offline_from_its_cassette(tmp_path) -> None:
    done = subprocess.run([sys.executable, "-m", "goatclaw", "test", "pipelines/research-digest.test.yaml"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "OPENAI_API_KEY": "sk-none",
                               "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "✓ pipelines/research-digest.test.yaml::answers-with-quoted-sources" in done.stdout
