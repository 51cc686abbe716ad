"""The SQLite store: created in WAL mode, migrated once, readable, and intact after kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import goatclaw
from goatclaw.store import MIGRATIONS, Store

PIPELINE = """
    version: 1
    name: stored
    vars: {greeting: hello}
    tasks:
      first: {uses: echo, with: {value: "${{ vars.greeting }}"}}
      second: {uses: echo, needs: first, with: {got: "${{ tasks.first.output }}"}}
    """


def run_into(path: Path, store: Path, run_id: str | None = None) -> goatclaw.RunResult:
    return goatclaw.run(goatclaw.load(path), store=store, run_id=run_id)


def test_open_creates_the_file_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "store.db"
    with Store.open(path) as db:
        assert db.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.integrity() == "ok"
    assert path.is_file()
    # WAL is a property of the file: a plain sqlite3 connection sees it too
    other = sqlite3.connect(path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in other.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        other.close()
    assert {"migrations", "runs", "tasks", "attempts", "events"} <= tables


def test_migrations_are_recorded_once(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    Store.open(path).close()
    with Store.open(path) as db:
        rows = db.db.execute("SELECT name, COUNT(*) FROM migrations GROUP BY name ORDER BY name").fetchall()
    assert [tuple(r) for r in rows] == [(name, 1) for name, _ in MIGRATIONS]
    Store.open(path).close()  # a third open is still fine


def test_concurrent_first_opens_of_a_new_store_all_succeed(tmp_path: Path) -> None:
    # SQLite refuses a second connection's switch to WAL at once ("database is locked"),
    # without waiting: concurrent first runs on a new project store used to fail now and then
    failures: list[BaseException] = []

    def open_close(path: Path) -> None:
        try:
            Store.open(path).close()
        except BaseException as exc:  # collected for the assertion
            failures.append(exc)

    for trial in range(25):
        path = tmp_path / f"s{trial}.db"
        threads = [threading.Thread(target=open_close, args=(path,)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == []


def test_a_store_that_is_not_sqlite_gives_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(goatclaw.StoreError, match="cannot open the store"):
        Store.open(path)


def test_a_run_is_readable_from_the_store(write_pipeline: Callable[..., Path], store_path: Path) -> None:
    result = run_into(write_pipeline(PIPELINE), store_path)
    assert result.ok
    with Store.open(store_path) as db:
        (run,) = db.runs()
        assert run == db.run(result.run_id) == db.run("last")
        tasks = db.tasks(result.run_id)
        events = db.events(result.run_id)
        tail = db.events(result.run_id, after=events[-3]["seq"])
        assert db.integrity() == "ok"
    assert (run.id, run.pipeline, run.status) == (result.run_id, "stored", "succeeded")
    assert run.vars == {"greeting": "hello"}
    assert run.summary["counts"] == {"succeeded": 2}
    assert [s["task"] for s in run.summary["critical_path"]] == ["first", "second"]
    assert run.duration is not None and run.duration >= 0
    assert [(t.task_id, t.status, t.attempts, t.output) for t in tasks] == [
        ("first", "succeeded", 1, "hello"), ("second", "succeeded", 1, {"got": "hello"})]
    assert all(t.started_at is not None and t.finished_at is not None and t.finished_at >= t.started_at
               for t in tasks)
    assert events[0]["topic"] == "run.started" and events[-1]["topic"] == "run.succeeded"
    assert [e["topic"] for e in events].count("task.succeeded") == 2
    assert tail == events[-2:]


def test_runs_are_found_by_id_prefix_and_last(write_pipeline: Callable[..., Path], store_path: Path) -> None:
    path = write_pipeline(PIPELINE)
    for run_id in ("alpha-1", "alpha-2", "beta-1"):
        run_into(path, store_path, run_id)
    with Store.open(store_path) as db:
        assert [r.id for r in db.runs()] == ["beta-1", "alpha-2", "alpha-1"]
        assert [r.id for r in db.runs(limit=2)] == ["beta-1", "alpha-2"]
        assert db.run("alpha-1").id == "alpha-1"  # type: ignore[union-attr]
        assert db.run("bet").id == "beta-1"  # type: ignore[union-attr]
        assert db.run("last").id == "beta-1"  # type: ignore[union-attr]
        assert db.run("gamma") is None
        with pytest.raises(goatclaw.StoreError, match="ambiguous"):
            db.run("alpha")
        assert db.runs(pipeline="nope") == []


def test_run_prefix_with_an_underscore(write_pipeline: Callable[..., Path], store_path: Path) -> None:
    path = write_pipeline(PIPELINE)
    run_into(path, store_path, "nightly_build_7")
    run_into(path, store_path, "nightlyXbuild_8")
    with Store.open(store_path) as db:
        found = db.run("nightly_b")
    assert found is not None and found.id == "nightly_build_7"


def test_an_empty_store_has_no_last_run(tmp_path: Path) -> None:
    with Store.open(tmp_path / "store.db") as db:
        assert db.run("last") is None
        assert db.runs() == []


# -- kill -9 ---------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (read from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in parents.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


@pytest.mark.slow
def test_kill_9_mid_run_keeps_finished_tasks_and_an_intact_store(project: Path,
                                                                write_pipeline: Callable[..., Path],
                                                                store_path: Path) -> None:
    write_pipeline("""
        version: 1
        name: killed
        tasks:
          first: {uses: echo, with: {value: done}}
          sleeper:
            uses: shell
            needs: first
            with: {script: "test -f slept || { touch slept; sleep 30; }"}
        """)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "GOATCLAW_STORE")}
    resume = [sys.executable, "-m", "goatclaw", "apply", "p.yaml", "--resume", "--output", "plain"]
    proc = subprocess.Popen([sys.executable, "-m", "goatclaw", "apply", "p.yaml", "--output", "plain"],
                            cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    grandchildren: list[int] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        for line in proc.stdout:
            lines.append(line)
            if "sleeper started" in line or time.monotonic() > deadline:
                break
        assert any("sleeper started" in line for line in lines), "".join(lines)
        time.sleep(0.5)  # the finished task is committed "a moment after it finishes"
        assert proc.poll() is None, "the run ended by itself"
        # a live run is never resumed from another process
        refused = subprocess.run(resume, cwd=project, env=env, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert f"is still running (process {proc.pid} on this machine)" in refused.stdout + refused.stderr
        assert "Traceback" not in refused.stdout + refused.stderr
        grandchildren = _children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in grandchildren:  # the `sleep 30` lives in its own process group
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    with Store.open(store_path) as db:
        assert db.integrity() == "ok"
        run = db.run("last")
        assert run is not None and run.pipeline == "killed"
        assert run.status == "running"  # nobody could record its end
        tasks = {t.task_id: t for t in db.tasks(run.id)}
        topics = [e["topic"] for e in db.events(run.id)]
    assert tasks["first"].status == "succeeded"
    assert tasks["first"].output == "done"
    assert "sleeper" not in tasks or tasks["sleeper"].status == "running"
    assert topics[0] == "run.started" and "task.succeeded" in topics

    # the store stays readable by the CLI
    again = subprocess.run([sys.executable, "-m", "goatclaw", "runs", "show", "last"], cwd=project, env=env,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert run.id in again.stdout
    assert "interrupted" in again.stdout  # stored as running, its process gone

    # and now it resumes: the finished task is kept, the interrupted one runs again
    finished = subprocess.run(resume, cwd=project, env=env, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    with Store.open(store_path) as db:
        row = db.run(run.id)
        assert row is not None and row.status == "succeeded" and not row.interrupted
