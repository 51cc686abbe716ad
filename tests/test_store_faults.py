"""A failed store commit is never silent (issue #16, item 1): one regression test per cause.

Lone surrogates (from an HTTP JSON body, a file.read of such JSON, a plugin's strings) are
stored escaped, and the run succeeds with every row kept. A full disk (SQLite's own
``max_page_count`` on the run's connections), a store truncated during the run and a store
written by a newer goatclaw fail the run loudly: a StoreError naming the store and the
cause, never ``succeeded``, and what the store keeps says so (``audit verify`` and
``health`` are not ok). A commit that failed keeps its batch: when a later try works,
every row is there.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from local_http import serving

import goatclaw
from goatclaw import history
from goatclaw.store import MIGRATIONS, Store

SURROGATE = "\ud800"
LOST_ACTION = "store.lost"  # the audit row that records rows lost when the store failed (docs/runs.md)


def _rows(store_path: Path, run_id: str) -> dict[str, Any]:
    """What the store holds of a run (read through a fresh connection)."""
    with Store.open(store_path) as db:
        run = db.run(run_id)
        return {"run": run, "tasks": {t.task_id: t for t in db.tasks(run_id)}, "events": db.events(run_id),
                "audit": [r[4] for r in db.audit_rows(run_id=run_id)], "dead": db.dead_letters(run_id=run_id)}


def _assert_complete(rows: dict[str, Any], tasks: set[str]) -> None:
    """Every task row is stored and the event log has no gap from 1 to the run's end."""
    assert set(rows["tasks"]) == tasks
    seqs = [e["seq"] for e in rows["events"]]
    assert seqs == list(range(1, len(seqs) + 1))
    assert rows["events"][-1]["topic"].startswith("run.")


# -- lone surrogates: escaped, never a commit failure ----------------------------------------------


class _SurrogateJson(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"word": "a\\ud800b", "ok": true}'  # valid JSON: the escape decodes to a lone surrogate
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def surrogate_server() -> Iterator[str]:
    with serving(_SurrogateJson) as url:
        yield url


def test_a_lone_surrogate_in_an_http_json_body_is_stored_escaped(write_pipeline, store_path, surrogate_server) -> None:
    path = write_pipeline(f"""
        version: 1
        tasks:
          fetch: {{uses: http, with: {{url: "{surrogate_server}/x"}}}}
          after:
            uses: echo
            needs: [fetch]
            with: {{message: "${{{{ tasks.fetch.output.body.word }}}}"}}
        """)
    result = goatclaw.run(path)
    assert result.ok, result.error
    rows = _rows(store_path, result.run_id)
    _assert_complete(rows, {"fetch", "after"})
    assert rows["run"].status == "succeeded"
    assert rows["tasks"]["fetch"].output["body"] == {"word": f"a{SURROGATE}b", "ok": True}  # the same value
    assert rows["tasks"]["after"].output == {"message": f"a{SURROGATE}b"}
    assert "request.sent" in rows["audit"]
    with sqlite3.connect(store_path) as raw:  # stored as the JSON escape, which any reader decodes
        text = raw.execute("SELECT output FROM tasks WHERE run_id = ? AND task_id = 'fetch'",
                           (result.run_id,)).fetchone()[0]
    assert '"a\\ud800b"' in text
    assert goatclaw.verify_audit(store_path).ok


def test_a_lone_surrogate_read_from_a_json_file_is_stored_escaped(write_pipeline, project, store_path) -> None:
    (project / "data.json").write_text('{"name": "x\\udc80y"}')
    path = write_pipeline("""
        version: 1
        tasks:
          read: {uses: file.read, with: {path: data.json, format: json}}
        """)
    result = goatclaw.run(path)
    assert result.ok, result.error
    rows = _rows(store_path, result.run_id)
    _assert_complete(rows, {"read"})
    assert rows["tasks"]["read"].output == {"name": "x\udc80y"}


def test_a_plugins_lone_surrogates_are_stored_escaped(write_pipeline, store_path) -> None:
    """In an output, an event it emits, an audit row, and the error (and dead letter) of a task that fails."""

    async def odd(ctx: goatclaw.TaskContext, word: str) -> dict[str, Any]:
        ctx.emit("odd.seen", word=word + SURROGATE)
        ctx.audit("odd.touched", what=SURROGATE)
        return {"word": word + SURROGATE}

    async def broken(ctx: goatclaw.TaskContext) -> None:
        goatclaw.fail(f"cannot read {SURROGATE}", error_class="invalid_input")

    registry = goatclaw.Registry()
    registry.register_task("odd", odd)
    registry.register_task("broken", broken)
    path = write_pipeline("""
        version: 1
        tasks:
          a: {uses: odd, with: {word: hi}}
          b: {uses: broken, continue_on_error: true, retry: {attempts: 1}}
        """)
    result = goatclaw.run(path, registry=registry)
    assert result.ok, result.error
    rows = _rows(store_path, result.run_id)
    _assert_complete(rows, {"a", "b"})
    assert rows["tasks"]["a"].output == {"word": "hi" + SURROGATE}
    assert rows["tasks"]["b"].error == "cannot read \\ud800"  # plain text: shown escaped
    assert [e["data"]["word"] for e in rows["events"] if e["topic"] == "odd.seen"] == ["hi" + SURROGATE]
    assert "odd.touched" in rows["audit"]
    assert [d.error for d in rows["dead"]] == ["cannot read \\ud800"]
    assert goatclaw.verify_audit(store_path).ok


def test_a_lone_surrogate_in_an_output_is_shown_escaped_by_the_cli(project, write_pipeline, store_path) -> None:
    import subprocess
    import sys

    (project / "data.json").write_text('{"name": "x\\ud800y"}')
    write_pipeline("""
        version: 1
        tasks:
          read: {uses: file.read, with: {path: data.json, format: json}}
        """)
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("GOATCLAW_STORE", None)
    for args in (["apply", "p.yaml", "--output", "json"], ["runs", "show", "last"]):
        done = subprocess.run([sys.executable, "-m", "goatclaw", *args], cwd=project, env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        assert "x\\ud800y" in done.stdout


# -- a full disk: SQLite's max_page_count on the run's connections ---------------------------------


def _limit_pages(monkeypatch: pytest.MonkeyPatch, store_path: Path, extra_pages: int) -> list[Any]:
    """Every connection opened to the store from now on may grow the file by ``extra_pages`` pages only.

    Returns the list of those connections (a test may lift the limit on them: the disk was freed).
    """
    import goatclaw.store as store_module

    with Store.open(store_path) as db:
        limit = int(db.db.execute("PRAGMA page_count").fetchone()[0]) + extra_pages
    original = store_module._set_wal
    opened: list[Any] = []

    def set_wal_and_limit(db: Any) -> None:
        original(db)
        db.execute(f"PRAGMA max_page_count = {limit}")
        opened.append(db)

    monkeypatch.setattr(store_module, "_set_wal", set_wal_and_limit)
    return opened


_FILLING = """
    version: 1
    concurrency: 1
    tasks:
      w0: {uses: file.write, with: {path: out/0.txt, content: "0"}}
      big:
        uses: echo
        needs: [w0]
        with: {message: "${{ 'x' * 300000 }}"}
      w1: {uses: file.write, needs: [big], with: {path: out/1.txt, content: "1"}}
      w2: {uses: file.write, needs: [w1], with: {path: out/2.txt, content: "2"}}
    """


def test_a_disk_that_fills_mid_run_fails_the_run_loudly_and_keeps_the_audit_rows(
        write_pipeline, project, store_path, monkeypatch) -> None:
    path = write_pipeline(_FILLING)
    goatclaw.run(write_pipeline("version: 1\ntasks:\n  t: {uses: echo, with: {message: hi}}\n", "warm.yaml"))
    _limit_pages(monkeypatch, store_path, extra_pages=20)  # 80 KB: the 300 KB output cannot fit
    with pytest.raises(goatclaw.StoreError) as caught:
        goatclaw.run(path, cache=False)
    message = str(caught.value)
    assert str(store_path) in message and "database or disk is full" in message
    assert "lost:" in message and "tried 5 times" in message
    monkeypatch.undo()
    # w1 was released in the event-loop turn whose commit failed; after it nothing starts: w2 never ran
    written = sorted(f.name for f in (project / "out").iterdir())
    assert written in (["0.txt"], ["0.txt", "1.txt"])
    with Store.open(store_path) as db:
        run = db.runs(limit=1)[0]
        audit = [(r[3], r[4]) for r in db.audit_rows(run_id=run.id)]
    assert run.status == "failed" and "database or disk is full" in (run.error or "")
    # every side effect that happened is in the chain, and then the record of the loss
    assert [a for a in audit if a[1] == "file.written"] == [(f"w{f[0]}", "file.written") for f in written]
    assert audit[-1][1] == LOST_ACTION
    verdict = goatclaw.verify_audit(store_path)
    assert not verdict.ok and "incomplete" in str(verdict) and run.id in str(verdict)
    health = history.health(store_path)
    assert not health["ok"] and run.id in health["lost_rows"]


def test_a_commit_that_failed_keeps_its_batch_for_a_later_try(write_pipeline, store_path, monkeypatch) -> None:
    """The disk is freed while another task still runs: the last commit stores everything, and the run fails."""
    failed = threading.Event()

    def slow(ctx: goatclaw.TaskContext) -> str:  # a thread: it goes on while the engine retries the commit
        assert failed.wait(30), "the commit never failed"
        time.sleep(0.2)
        for db in opened:
            db.execute("PRAGMA max_page_count = 1000000")  # the disk has room again
        return "done"

    registry = goatclaw.Registry()
    registry.register_task("slow", slow)
    path = write_pipeline("""
        version: 1
        concurrency: 2
        tasks:
          slow: {uses: slow}
          big: {uses: echo, with: {message: "${{ 'x' * 300000 }}"}}
          later: {uses: echo, needs: [big, slow], with: {message: never}}
        """)
    goatclaw.run(write_pipeline("version: 1\ntasks:\n  t: {uses: echo, with: {message: hi}}\n", "warm.yaml"))
    opened = _limit_pages(monkeypatch, store_path, extra_pages=20)
    bus = goatclaw.Bus()
    bus.subscribe("store.failed", lambda event: failed.set())
    with pytest.raises(goatclaw.StoreError, match="everything was stored on a later try"):
        goatclaw.run(path, registry=registry, bus=bus, cache=False)
    monkeypatch.undo()
    with Store.open(store_path) as db:
        run_id = db.runs(limit=1)[0].id
    rows = _rows(store_path, run_id)
    assert rows["run"].status == "failed"
    assert {tid: t.status for tid, t in rows["tasks"].items()} == {"slow": "succeeded", "big": "succeeded"}
    assert len(rows["tasks"]["big"].output["message"]) == 300000
    seqs = [e["seq"] for e in rows["events"]]
    assert seqs == list(range(1, len(seqs) + 1))  # no event of the failed batch is missing
    assert "store.failed" in [e["topic"] for e in rows["events"]]
    assert goatclaw.verify_audit(store_path).ok  # nothing was lost in the end


def test_a_start_the_store_refuses_stops_the_run_before_anything_runs_or_is_heard(
        write_pipeline, project, store_path) -> None:
    """The run's row and its ``run.started`` event are one commit: refused, neither is kept nor published."""
    goatclaw.run(write_pipeline("version: 1\ntasks:\n  t: {uses: echo, with: {message: hi}}\n", "warm.yaml"))
    db = sqlite3.connect(store_path)  # (the stdlib's sqlite3 is enough to add a trigger)
    db.execute("CREATE TRIGGER no_new_runs BEFORE INSERT ON runs BEGIN SELECT RAISE(ABORT, 'no new runs'); END")
    db.commit()
    db.close()
    path = write_pipeline("version: 1\ntasks:\n  w: {uses: file.write, with: {path: out/w.txt, content: w}}\n")
    bus = goatclaw.Bus()
    heard: list[str] = []
    bus.subscribe("*", lambda event: heard.append(event.topic))
    with pytest.raises(goatclaw.StoreError) as caught:
        goatclaw.run(path, bus=bus, cache=False)
    message = str(caught.value)
    assert "'s start to the store" in message and str(store_path) in message and "no new runs" in message
    assert heard == [] and not (project / "out").exists()
    with Store.open(store_path) as store:
        runs = store.runs(limit=10)
        assert [r.pipeline for r in runs] == ["warm"]  # the refused run left no row
        assert store.db.execute("SELECT COUNT(*) FROM events WHERE run_id NOT IN (SELECT id FROM runs)"
                                ).fetchone()[0] == 0
        store.db.execute("DROP TRIGGER no_new_runs")
    assert goatclaw.run(path, bus=bus, cache=False).ok  # the same run where the store takes it: heard and stored
    assert heard[0] == "run.started" and heard[-1] == "run.succeeded"
    assert (project / "out" / "w.txt").read_text() == "w"


# -- a store truncated during the run --------------------------------------------------------------


def test_a_store_truncated_during_the_run_fails_it_loudly(write_pipeline, project, store_path) -> None:
    with Store.open(store_path) as db:  # a store with history: pages past the cut hold rows of the tables
        filler = '"' + "x" * 300 + '"'
        for run in ("20200101-000000-000000", "20991231-000000-000000"):  # rows before and after the run's own
            db.write_batch(events=[(run, i, 1.0, "filler", None, filler) for i in range(3000)],
                           tasks=[(run, f"t{i}", "succeeded", 1, 1.0, 2.0, filler, None, None, "echo", None, None)
                                  for i in range(3000)])
        db.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def cut(ctx: goatclaw.TaskContext) -> str:
        os.truncate(store_path, store_path.stat().st_size // 2)
        return "cut"

    registry = goatclaw.Registry()
    registry.register_task("cut", cut)
    path = write_pipeline("""
        version: 1
        tasks:
          a: {uses: echo, with: {message: a}}
          cut: {uses: cut, needs: [a]}
          b: {uses: echo, needs: [cut], with: {message: b}}
        """)
    with pytest.raises(goatclaw.StoreError) as caught:
        goatclaw.run(path, registry=registry, cache=False)
    assert str(store_path) in str(caught.value) and "malformed" in str(caught.value)


# -- a store from a newer goatclaw -----------------------------------------------------------------


def test_a_store_from_a_newer_goatclaw_is_refused_before_anything_runs(write_pipeline, project, store_path) -> None:
    with Store.open(store_path) as db:
        db.db.execute("INSERT INTO migrations (name, applied_at) VALUES ('099_from_the_future', 0)")
    path = write_pipeline("""
        version: 1
        tasks:
          w: {uses: file.write, with: {path: out.txt, content: "x"}}
        """)
    with pytest.raises(goatclaw.StoreError) as caught:
        goatclaw.run(path)
    message = str(caught.value)
    assert str(store_path) in message and "newer goatclaw" in message
    assert "099_from_the_future" in message and MIGRATIONS[-1][0] in message and goatclaw.__version__ in message
    assert not (project / "out.txt").exists()
    with sqlite3.connect(store_path) as raw:
        assert raw.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
        assert [r[0] for r in raw.execute("SELECT name FROM migrations ORDER BY name")][-1] == "099_from_the_future"


def test_the_cli_refuses_a_newer_store_with_both_versions_and_exit_1(project, write_pipeline, store_path) -> None:
    from typer.testing import CliRunner

    from goatclaw.cli.app import app

    with Store.open(store_path) as db:
        db.db.execute("INSERT INTO migrations (name, applied_at) VALUES ('099_from_the_future', 0)")
    write_pipeline("version: 1\ntasks:\n  t: {uses: echo, with: {message: hi}}\n")
    for args in (["apply", "p.yaml"], ["audit", "verify"], ["health"]):
        out = CliRunner().invoke(app, args)
        assert out.exit_code == 1, (args, out.output)
        assert "099_from_the_future" in out.output and MIGRATIONS[-1][0] in out.output, out.output
        assert "Traceback" not in out.output


def test_the_store_lost_row_names_run_and_counts(write_pipeline, store_path, monkeypatch) -> None:
    """What ``audit verify --json`` and ``health --json`` give a machine: the run and what was lost."""
    path = write_pipeline(_FILLING)
    goatclaw.run(write_pipeline("version: 1\ntasks:\n  t: {uses: echo, with: {message: hi}}\n", "warm.yaml"))
    _limit_pages(monkeypatch, store_path, extra_pages=20)
    with pytest.raises(goatclaw.StoreError):
        goatclaw.run(path, cache=False)
    monkeypatch.undo()
    lost = [r for r in goatclaw.audit_log(store_path) if r.action == LOST_ACTION]
    assert len(lost) == 1 and lost[0].data["lost"]["tasks"] >= 1 and "audit" not in lost[0].data["lost"]
    verdict = goatclaw.verify_audit(store_path).to_dict()
    assert verdict["ok"] is False and verdict["incomplete"][0]["run"] == lost[0].run_id
    assert json.loads(json.dumps(history.health(store_path)))["lost_rows"]


def test_doctor_says_a_store_is_from_a_newer_goatclaw(project, store_path) -> None:
    from typer.testing import CliRunner

    from goatclaw.cli.app import app

    with Store.open(store_path) as db:
        db.db.execute("INSERT INTO migrations (name, applied_at) VALUES ('099_from_the_future', 0)")
    as_json = CliRunner().invoke(app, ["doctor", "--json"])
    report = json.loads(as_json.output)
    assert report["store"]["ok"] is False and as_json.exit_code == 1  # --json exits like the text form
    assert "newer goatclaw" in report["store"]["message"] and "099_from_the_future" in report["store"]["message"]
    out = CliRunner().invoke(app, ["doctor"])
    assert out.exit_code == 1 and "newer goatclaw" in out.output
