"""Semantic memory on real wordllama embeddings and real SQLite files (sqlite-vec)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

import goatclaw
from goatclaw.errors import GoatclawError, StoreError
from goatclaw.memory.embedders import WordLlamaEmbedder, embedder_for, normalise
from goatclaw.memory.learn import MemorySettings, explain, remember_run
from goatclaw.memory.store import MemoryStore, open_memory
from goatclaw.plugin import TaskContext, fail
from goatclaw.registry import Registry
from goatclaw.store import Store

FAILURES = [
    "connection refused to api.example.com",
    "HTTP 503 from api.example.com",
    "invalid JSON in the answer",
    "disk full writing out/report.md",
]


class Truncated:
    """A real second embedder: wordllama's first 64 dimensions (another model, as far as the store knows)."""

    name = "wordllama/64"
    dim = 64

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return normalise(WordLlamaEmbedder().embed(texts)[:, :64])


@pytest.fixture
def mem(tmp_path: Path):
    with open_memory(tmp_path / "store.db") as m:
        yield m


def test_embedder_gives_unit_float32_rows() -> None:
    vectors = WordLlamaEmbedder().embed(["hello world", "goodbye"])
    assert vectors.shape == (2, 256) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_unknown_embedder_is_a_clear_error() -> None:
    with pytest.raises(GoatclawError, match="unknown memory embedder 'bert'"):
        embedder_for("bert")


def test_close_failures_rank_before_unrelated_ones(mem: MemoryStore) -> None:
    for text in FAILURES:
        mem.add(text, "failure", {"pipeline": "p", "task": "fetch"})
    hits = mem.search("could not connect: connection refused by api.example.com", k=4)
    assert [h.text for h in hits][:2] == FAILURES[:2]
    assert hits[0].score > hits[2].score and hits[1].score > hits[3].score
    disk = mem.search("no space left on device while writing the report", k=1)
    assert disk[0].text == FAILURES[3]


def test_search_matches_brute_force_numpy(mem: MemoryStore) -> None:
    texts = [f"task {i} failed: {w}" for i, w in enumerate(["timeout", "rate limit", "bad gateway", "parse error",
                                                            "permission denied", "file not found"] * 5)]
    mem.add_many([(t, "note", {}) for t in texts], merge_threshold=None)
    query = mem.embed(["the request timed out"])[0]
    ids, matrix = mem.vectors()
    expected = ids[np.argsort(-(matrix @ query))[:5]]
    hits = mem.search_vector(query, k=5)
    assert [h.id for h in hits] == [int(i) for i in expected]
    assert hits[0].score == pytest.approx(float(np.max(matrix @ query)), abs=1e-4)


def test_kind_filters_and_min_score(mem: MemoryStore) -> None:
    mem.add("connection refused to api.example.com", "failure", {"pipeline": "a", "task": "t"})
    mem.add("connection refused to api.example.com", "note", {"pipeline": "b"})
    mem.add("connection refused to api.example.com again", "failure", {"pipeline": "b", "task": "t"},
            merge_threshold=None)
    assert {h.kind for h in mem.search("connection refused", kind="failure")} == {"failure"}
    only_b = mem.search("connection refused", filters={"pipeline": "b"})
    assert {h.metadata["pipeline"] for h in only_b} == {"b"} and len(only_b) == 2
    assert mem.search("disk full", min_score=0.9) == []


def test_near_duplicates_merge_with_a_count(mem: MemoryStore) -> None:
    first = mem.add("HTTP 503 from api.example.com", "failure", {"pipeline": "p", "task": "t", "run": "r1"})
    again = mem.add("HTTP 503 from api.example.com", "failure", {"pipeline": "p", "task": "t", "run": "r2"})
    other_task = mem.add("HTTP 503 from api.example.com", "failure", {"pipeline": "p", "task": "u", "run": "r3"})
    assert again.id == first.id and again.count == 2 and again.metadata["runs"] == ["r1", "r2"]
    assert other_task.id != first.id
    assert mem.count() == 2


def test_consolidate_merges_near_duplicates_and_caps(mem: MemoryStore) -> None:
    rows = [("HTTP 503 from api.example.com", "failure", {"task": "t"}),
            ("HTTP 503 from api.example.com.", "failure", {"task": "t"}),
            ("HTTP 503 from the api.example.com", "failure", {"task": "t"}),
            ("HTTP 503 from api.example.com", "failure", {"task": "other"}),  # another task: kept apart
            ("invalid JSON in the answer", "failure", {"task": "t"}),
            ("nightly crawl finished with 40 pages", "run", {}),
            ("weekly digest mailed to the team", "run", {})]
    mem.add_many(rows, merge_threshold=None)
    assert mem.consolidate(threshold=0.95) == {"merged": 2, "dropped": 0, "kept": 5}
    merged = mem.search("HTTP 503 from api.example.com", kind="failure", filters={"task": "t"}, k=1)[0]
    assert merged.count == 3 and merged.id == 1  # the oldest survives
    assert mem.consolidate(max_memories=3)["dropped"] == 2
    assert mem.count("run") == 0 and mem.count() == 3  # runs are worth least: they go first


def test_dimension_guard_refuses_another_embedder(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with open_memory(path) as m:
        m.add("connection refused", "failure")
    with open_memory(path, Truncated()) as m, pytest.raises(StoreError, match="embedded with 'wordllama'"):
        m.search("connection refused")
    with open_memory(path, Truncated()) as m:
        assert m.list()[0].text == "connection refused"  # reading needs no embedder
        assert m.reembed(Truncated()) == 1
        assert m.recorded() == ("wordllama/64", 64)
        assert m.search("connection refused")[0].score == pytest.approx(1.0, abs=1e-5)
    with open_memory(path, "wordllama") as m, pytest.raises(StoreError, match="goatclaw memory reembed"):
        m.add("again", "note")


def test_forget_by_id_and_kind(mem: MemoryStore) -> None:
    a = mem.add("one", "note")
    mem.add("completely different two", "failure")
    assert mem.forget(a.id) == 1 and mem.get(a.id) is None
    assert mem.forget(kind="failure") == 1 and mem.count() == 0
    with pytest.raises(GoatclawError, match="refusing to forget everything"):
        mem.forget()
    assert mem.search("one") == []


# -- learning from runs ------------------------------------------------------------------

PIPELINE = """
version: 1
name: fetcher
secrets: [API_TOKEN]
vars:
  error: ""
tasks:
  fetch:
    uses: flaky
    with:
      error: ${{ vars.error }}
  after:
    uses: echo
    needs: [fetch]
    with: {value: 1}
"""


def flaky(ctx: TaskContext, *, error: str = "") -> dict:
    """Fail with ``error`` when it is set."""
    if error:
        fail(error, error_class="connection")
    return {"ok": True}


@pytest.fixture
def registry() -> Registry:
    reg = Registry()
    reg.register_task("flaky", flaky)
    return reg


@pytest.fixture
def run_fetcher(write_pipeline: Callable[..., Path], registry: Registry) -> Callable[[str], goatclaw.RunResult]:
    path = write_pipeline(PIPELINE)

    def run(error: str) -> goatclaw.RunResult:
        return goatclaw.run(path, registry=registry, vars={"error": error}, secrets={"API_TOKEN": "tok-s3cr3t"})

    return run


def test_a_run_remembers_its_failure_then_the_fix(run_fetcher, store_path: Path) -> None:
    failed = run_fetcher("connection refused to api.example.com (token tok-s3cr3t)")
    assert not failed.ok
    fixed = run_fetcher("")
    assert fixed.ok
    with open_memory(store_path) as m:
        failure, = m.list(kind="failure")
        fix, = m.list(kind="fix")
        assert "tok-s3cr3t" not in failure.text and "***" in failure.text
        assert failure.metadata["fixed_by"] == fix.id and fix.metadata["failed_run"] == failed.run_id
        assert "vars changed (error)" in fix.text
        assert {r.metadata["status"] for r in m.list(kind="run")} == {"failed", "succeeded"}
        rows = m.db.execute("SELECT text || metadata FROM memories").fetchall()
        assert rows and not any("tok-s3cr3t" in r[0] for r in rows)


def test_a_clean_run_writes_no_memory(run_fetcher, store_path: Path) -> None:
    assert run_fetcher("").ok
    with Store.open(store_path) as store:
        assert store.db.execute("SELECT COUNT(*) FROM memories").fetchone()[0] == 0
        assert store.db.execute("SELECT value FROM memory_meta").fetchall() == []  # the embedder never loaded


def test_a_run_with_nothing_to_teach_is_judged_before_its_store_closes(run_fetcher, store_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """No failure, no retry, no earlier failure to mark fixed: memory does not open the store again."""
    from goatclaw.memory import learn

    called: list[str] = []
    real = learn.remember_run
    monkeypatch.setattr(learn, "remember_run", lambda path, run_id, **kw: called.append(run_id) or real(path, run_id,
                                                                                                        **kw))
    clean = run_fetcher("")
    assert clean.ok and called == []  # judged from its result and one query of the run's own store
    failed = run_fetcher("HTTP 503 from api.example.com")
    assert called == [failed.run_id]  # a failure: remembered
    fixed = run_fetcher("")
    assert called == [failed.run_id, fixed.run_id]  # nothing failed, but it fixes the failure before it
    with open_memory(store_path) as m:
        assert len(m.list(kind="fix")) == 1
    again = run_fetcher("")
    assert called == [failed.run_id, fixed.run_id]  # the failure is fixed: nothing to teach again

    def broken(store: Store, result: object) -> bool:
        raise RuntimeError("the look failed")

    monkeypatch.setattr(learn, "worth_a_look", broken)
    last = run_fetcher("")
    assert last.ok and called[-1] == last.run_id  # the look failed: remember_run looks for itself, as before
    assert again.ok


def test_memory_disabled_remembers_nothing(run_fetcher, store_path: Path) -> None:
    run = run_fetcher("HTTP 503 from api.example.com")
    assert remember_run(store_path, run.run_id, settings=MemorySettings(enabled=False)) == 0
    assert MemorySettings.from_data({"enabled": False, "remember": {"runs": True}}).runs is True


def test_why_shows_a_similar_past_failure_and_its_fix(run_fetcher, store_path: Path) -> None:
    run_fetcher("connection refused to api.example.com")
    run_fetcher("")
    run_fetcher("invalid JSON in the answer")
    now = run_fetcher("ECONNREFUSED: could not connect to api.example.com")
    run_id, found = explain(store_path, now.run_id)
    assert run_id == now.run_id
    fetch, = found
    top = fetch.similar[0]
    assert top["text"].startswith("connection refused to api.example.com")
    assert top["fixes"] and "vars changed" in top["fixes"][0]["metadata"]["how"]


# -- the memory task ---------------------------------------------------------------------

TASK_PIPELINE = """
version: 1
name: recall
tasks:
  remember:
    uses: memory
    with: {action: store, text: "HTTP 503 from the search API during the nightly crawl", kind: failure}
  remember_other:
    uses: memory
    needs: [remember]
    with: {action: store, text: "the summary was written in French instead of English", kind: note}
  recall:
    uses: memory
    needs: [remember_other]
    with: {action: search, query: "search API returned service unavailable", k: 2}
  use:
    uses: echo
    needs: [recall]
    with:
      best: ${{ tasks.recall.output.results[0].text }}
      how_many: ${{ tasks.recall.output.results | length }}
"""


def test_memory_task_stores_and_searches_in_a_pipeline(write_pipeline: Callable[..., Path]) -> None:
    result = goatclaw.run(write_pipeline(TASK_PIPELINE))
    assert result.ok, result.to_dict()
    assert result.outputs["use"] == {"best": "HTTP 503 from the search API during the nightly crawl", "how_many": 2}
    assert result.outputs["remember"]["kind"] == "failure"


def test_memory_task_refuses_a_search_without_query(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          recall:
            uses: memory
            with: {action: search}
        """)
    result = goatclaw.run(path)
    assert not result.ok and "search needs a query" in (result.tasks["recall"].error or "")


# -- the CLI -----------------------------------------------------------------------------


def test_cli_memory_search_list_stats_forget(store_path: Path) -> None:
    from typer.testing import CliRunner

    from goatclaw.cli.app import app

    with open_memory(store_path) as m:
        for text in FAILURES:
            m.add(text, "failure", {"pipeline": "p", "task": "fetch"})
    cli = CliRunner()
    found = cli.invoke(app, ["memory", "search", "the service answered 503 unavailable", "-k", "2", "--json"])
    assert found.exit_code == 0, found.output
    hits = __import__("json").loads(found.output)
    assert hits[0]["text"] == "HTTP 503 from api.example.com" and len(hits) == 2
    listed = cli.invoke(app, ["memory", "list", "--kind", "failure"])
    assert listed.exit_code == 0 and "disk full writing out/report.md" in listed.output
    stats = cli.invoke(app, ["memory", "stats"])
    assert "wordllama (256 dims)" in stats.output and "failure" in stats.output
    assert cli.invoke(app, ["memory", "forget", "1"]).output.strip() == "forgot 1 memory"
    bad = cli.invoke(app, ["memory", "search", "x", "--kind", "nonsense"])
    assert bad.exit_code == 2 and "'nonsense' is not one of run, output, failure, fix, note" in bad.output


def test_cli_why_shows_the_past_fix(run_fetcher) -> None:
    from typer.testing import CliRunner

    from goatclaw.cli.app import app

    run_fetcher("connection refused to api.example.com")
    run_fetcher("")
    failed = run_fetcher("ECONNREFUSED: could not connect to api.example.com")
    shown = CliRunner().invoke(app, ["why", failed.run_id], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "✗ fetch (connection): ECONNREFUSED" in shown.output
    assert "like: connection refused to api.example.com" in shown.output
    assert "fixed by: vars changed (error)" in shown.output


def test_importing_goatclaw_and_the_cli_loads_no_memory_library() -> None:
    import subprocess
    import sys

    code = ("import sys, goatclaw, goatclaw.cli.app; "
            "print(sorted(m for m in ('wordllama', 'sqlite_vec', 'goatclaw.memory.store') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_knowledge_graph_of_a_failure_and_its_fix(run_fetcher) -> None:
    import networkx as nx
    from typer.testing import CliRunner

    from goatclaw.cli.app import app

    run_fetcher("connection refused to api.example.com")
    run_fetcher("")
    cli = CliRunner()
    mermaid = cli.invoke(app, ["memory", "graph"])
    assert mermaid.exit_code == 0, mermaid.output
    assert mermaid.output.startswith("graph LR") and "failed_with ×1" in mermaid.output
    graphml = cli.invoke(app, ["memory", "graph", "--format", "graphml"]).output
    graph = nx.parse_graphml(graphml, force_multigraph=True)
    edges = {(a, b, d["relation"]) for a, b, d in graph.edges(data=True)}
    assert ("task:fetcher.fetch", "error:connection", "failed_with") in edges
    assert ("error:connection", "fix:later run", "fixed_by") in edges
    assert ("task:fetcher.fetch", "plugin:flaky", "uses") in edges
    assert ("pipeline:fetcher", "task:fetcher.after", "uses") in edges
