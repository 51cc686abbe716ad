"""Memory patterns, scheduled consolidation, model and file entities, and 'seen before' under a failed run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

import goatclaw
from goatclaw.cli.app import app
from goatclaw.memory.store import MemoryStore, open_memory
from goatclaw.plugin import TaskContext, fail
from goatclaw.registry import Registry
from goatclaw.store import Store

DAY = 86400.0


@pytest.fixture
def mem(tmp_path: Path):
    with open_memory(tmp_path / "store.db") as m:
        yield m


def test_patterns_group_failures_by_meaning(mem: MemoryStore) -> None:
    connection = ["connection refused to api.example.com", "could not connect: connection refused by api.example.com",
                  "connection to api.example.com was refused"]
    disk = ["disk full while writing out/report.md", "no space left on device writing out/report.md"]
    for i, text in enumerate(connection):
        mem.add(text, "failure", {"pipeline": "p", "task": f"fetch{i}", "error_class": "connection"},
                at=1000.0 + i * DAY)
    for i, text in enumerate(disk):
        mem.add(text, "failure", {"pipeline": "p", "task": "save", "error_class": "OSError"}, at=5000.0 + i)
    mem.add("the summary was in French", "note", {})
    found = mem.patterns(kind="failure", threshold=0.6)
    assert [p.memories for p in found] == [3, 2], [p.to_dict() for p in found]
    first, second = found
    assert set(first.tasks) == {"p.fetch0", "p.fetch1", "p.fetch2"} and first.error_classes == ["connection"]
    assert first.first_seen == 1000.0 and first.last_seen == 1000.0 + 2 * DAY
    assert second.tasks == ["p.save"] and second.count == 2
    # a strict threshold keeps every wording apart
    assert len(mem.patterns(kind="failure", threshold=0.999)) == 5


def test_patterns_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "s.db"
    with open_memory(store) as m:
        for text in ["HTTP 503 from the search API", "the search API answered 503 Service Unavailable"]:
            m.add(text, "failure", {"pipeline": "crawl", "task": "search"})
    shown = CliRunner().invoke(app, ["memory", "patterns", "--store", str(store), "--threshold", "0.6"],
                               env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert shown.output.startswith("×2") and "2 memories" in shown.output and "tasks crawl.search" in shown.output
    empty = CliRunner().invoke(app, ["memory", "patterns", "--store", str(store), "--kind", "fix"])
    assert "no fix memories yet" in empty.output


PIPELINE = """
version: 1
name: writer
vars:
  error: ""
tasks:
  save:
    uses: file.write
    with: {path: out/report.md, content: hello}
  load:
    uses: file.read
    needs: [save]
    with: {path: out/report.md}
  fetch:
    uses: flaky
    needs: [load]
    with:
      error: ${{ vars.error }}
"""


def flaky(ctx: TaskContext, *, error: str = "") -> dict:
    """Fail with ``error`` when it is set."""
    if error:
        fail(error, error_class="connection")
    return {"ok": True}


@pytest.fixture
def run_writer(write_pipeline: Callable[..., Path]) -> Callable[[str], goatclaw.RunResult]:
    path = write_pipeline(PIPELINE)
    reg = Registry()
    reg.register_task("flaky", flaky)
    return lambda error: goatclaw.run(path, registry=reg, vars={"error": error})


def test_memory_consolidates_on_a_schedule(project: Path, run_writer, store_path: Path) -> None:
    with (project / "goatclaw.yaml").open("a") as f:
        f.write("memory: {consolidate_every: 2}\n")

    def since() -> str:
        with Store.open(store_path) as s:
            return s.db.execute("SELECT value FROM memory_meta WHERE key = 'runs_since_consolidation'").fetchone()[0]

    run_writer("connection refused to api.example.com")
    assert since() == "1"
    run_writer("connection refused to api.example.com!")
    assert since() == "0"  # the second remembering run consolidated


def test_knowledge_graph_has_files(run_writer) -> None:
    import networkx as nx

    run_writer("connection refused to api.example.com")
    graphml = CliRunner().invoke(app, ["memory", "graph", "--format", "graphml"]).output
    graph = nx.parse_graphml(graphml, force_multigraph=True)
    edges = {(a, b, d["relation"]) for a, b, d in graph.edges(data=True)}
    assert ("task:writer.save", "file:out/report.md", "produced") in edges
    assert ("task:writer.load", "file:out/report.md", "read") in edges


def test_runs_show_and_apply_say_what_was_seen_before(run_writer, project: Path) -> None:
    run_writer("connection refused to api.example.com")
    run_writer("")  # the fix: a later run where it passed
    failed = run_writer("ECONNREFUSED: could not connect to api.example.com")
    shown = CliRunner().invoke(app, ["runs", "show", failed.run_id], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "seen before" in shown.output and "connection refused to api.example.com" in shown.output
    assert "what fixed it: vars changed (error)" in shown.output
    clean = CliRunner().invoke(app, ["runs", "show", run_writer("").run_id], env={"COLUMNS": "200"})
    assert "seen before" not in clean.output
