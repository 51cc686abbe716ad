"""The audit chain: real runs record every side effect; verification finds any altered or missing row."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from local_http import serving
from typer.testing import CliRunner

import goatclaw
from goatclaw.cli.app import app
from goatclaw.engine import recorder
from goatclaw.plugin import TaskContext, task
from goatclaw.security.audit import GENESIS, AuditRow, row_hash, seal, verify
from goatclaw.security.auditkey import forget_audit_key
from goatclaw.store import Store

SECRET = "tok-3f9a1c77e2b8d4"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/json")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def web() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 with a redirect (/redirect -> /json)."""
    with serving(_Handler) as url:
        yield url


@task(cacheable=False)
async def peek(ctx: TaskContext) -> dict[str, Any]:
    """Reads a secret through the plugin API (its value must never reach the audit)."""
    return {"length": len(ctx.secret("TOKEN"))}


@task(cacheable=False)
async def note(ctx: TaskContext, *, n: int = 0) -> int:
    """A plugin recording a side effect of its own."""
    ctx.audit("custom.note", n=n)
    return n


def _registry() -> goatclaw.Registry:
    reg = goatclaw.Registry()
    reg.register_task("peek", peek)
    reg.register_task("note", note)
    return reg


def _effects_pipeline(write_pipeline: Any, web: str, api_base: str) -> Path:
    return write_pipeline(f"""
        version: 1
        name: effects
        secrets: [TOKEN]
        defaults:
          retry: {{attempts: 1}}
        tasks:
          cmd: {{uses: shell, with: {{run: [echo, hello]}}}}
          save: {{uses: file.write, with: {{path: out/a.txt, content: hello}}}}
          fetch: {{uses: http, with: {{url: "{web}/redirect"}}}}
          ask:
            uses: llm
            with: {{api_base: "{api_base}", api_key: sk-test, model: openai/gpt-4o-mini, prompt: say hi}}
          templ: {{uses: echo, with: {{value: "${{{{ secrets.TOKEN | length }}}}"}}}}
          peek: {{uses: peek}}
          escape:
            uses: file.write
            continue_on_error: true
            with: {{path: ../escape.txt, content: x}}
        """)


def _run(path: Path, **options: Any) -> goatclaw.RunResult:
    reg = _registry()
    return goatclaw.run(goatclaw.load(path, registry=reg), registry=reg, secrets={"TOKEN": SECRET}, **options)


def test_a_real_run_audits_every_kind_of_side_effect(write_pipeline, store_path, web, srv) -> None:
    result = _run(_effects_pipeline(write_pipeline, web, srv.api_base))
    assert result.tasks["escape"].error_class == "permission_denied"
    assert all(result.tasks[t].status.value == "succeeded" for t in ("cmd", "save", "fetch", "ask", "templ", "peek"))
    rows = goatclaw.audit_log(store_path, run=result.run_id)
    by = {(r.task_id, r.action): r.data for r in rows}

    started = by[("cmd", "process.started")]
    assert started["program"] == "echo" and started["argv"] == ["echo", "hello"] and started["pid"] > 0
    written = by[("save", "file.written")]
    assert written == {"item": None, "path": "out/a.txt", "bytes": 5, "mode": "overwrite",
                       "sha256": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}
    hops = [r.data for r in rows if r.action == "request.sent"]
    assert [(h["method"], h["host"], h["status"]) for h in hops] == [("GET", "127.0.0.1", 302),
                                                                     ("GET", "127.0.0.1", 200)]
    called = by[("ask", "llm.called")]
    assert called["model"] == "openai/gpt-4o-mini" and called["tokens"]["total_tokens"] == 18
    assert called["source"] == "live" and "cost_usd" in called
    assert by[("templ", "secret.read")] == {"item": None, "name": "TOKEN", "via": "template"}
    assert by[("peek", "secret.read")] == {"item": None, "name": "TOKEN"}
    assert "permission.denied" in {r.action for r in rows if r.task_id == "escape"}
    assert not any(SECRET in r.detail for r in rows)  # names only, never the value
    verdict = goatclaw.verify_audit(store_path)
    assert verdict.ok and verdict.rows == len(rows), verdict


def test_a_run_without_side_effects_adds_no_audit_rows(write_pipeline, store_path) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          a: {uses: echo, with: {value: 1}}
          b: {uses: echo, needs: [a], with: {value: "${{ tasks.a.output + 1 }}"}}
        """)
    result = goatclaw.run(path)
    assert result.ok
    assert goatclaw.audit_log(store_path) == []
    assert goatclaw.verify_audit(store_path).ok


def test_the_chain_spans_runs_and_survives_the_writer_process_and_concurrent_runs(project, store_path,
                                                                                 monkeypatch) -> None:
    # the recorder hands its rows to the writer process (GOATCLAW_WRITER=process)
    monkeypatch.setenv(recorder.WRITER_ENV, "process")
    tasks = {f"t{i}": {"uses": "note", "with": {"n": i}} for i in range(600)}
    (project / "big.yaml").write_text(json.dumps({"version": 1, "name": "big", "concurrency": 16, "tasks": tasks}))
    (project / "small.yaml").write_text(json.dumps({"version": 1, "name": "small", "concurrency": 4, "tasks": {
        f"s{i}": {"uses": "note", "with": {"n": i}} for i in range(40)}}))
    reg = _registry()
    results: list[goatclaw.RunResult] = []

    def run(name: str) -> None:
        results.append(goatclaw.run(goatclaw.load(project / name, registry=reg), registry=reg))

    threads = [threading.Thread(target=run, args=(n,)) for n in ("big.yaml", "small.yaml", "small.yaml")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 3 and all(r.ok for r in results)
    verdict = goatclaw.verify_audit(store_path)
    assert verdict.ok and verdict.rows == 680, verdict
    for r in results:
        notes = goatclaw.audit_log(store_path, run=r.run_id, action="custom.note")
        assert sorted(row.data["n"] for row in notes) == list(range(600 if r.pipeline == "big" else 40))


# -- tampering, through the CLI ------------------------------------------------------------


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    env.pop("GOATCLAW_STORE", None)
    return subprocess.run([sys.executable, "-m", "goatclaw", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


def _tampered(store: Path, folder: Path, sql: str, *args: Any) -> Path:
    copy = folder / "copy.db"
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{copy}{suffix}").exists():
            Path(f"{copy}{suffix}").unlink()
    with sqlite3.connect(store) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy(store, copy)
    with sqlite3.connect(copy) as db:
        db.execute(sql, args)
    return copy


def test_audit_verify_passes_intact_and_names_the_first_altered_or_missing_row(write_pipeline, store_path, web,
                                                                               srv, project) -> None:
    _run(_effects_pipeline(write_pipeline, web, srv.api_base))
    rows = goatclaw.audit_log(store_path)
    n = len(rows)
    assert n >= 8

    ok = _cli("audit", "verify", cwd=project)
    assert ok.returncode == 0, ok.stderr
    assert f"audit chain intact: {n} rows" in ok.stdout

    altered = _tampered(store_path, project, "UPDATE audit SET detail = ? WHERE seq = 3",
                        json.dumps({"path": "innocent.txt"}))
    out = _cli("audit", "verify", "--store", str(altered), cwd=project)
    assert out.returncode == 1
    assert "audit chain broken at row 3: row 3 was altered (its fields do not match its hash)" in out.stderr
    assert "Traceback" not in out.stderr

    missing = _tampered(store_path, project, "DELETE FROM audit WHERE seq = 5")
    out = _cli("audit", "verify", "--store", str(missing), cwd=project)
    assert out.returncode == 1 and "audit chain broken at row 5: row 5 is missing" in out.stderr

    newest = _tampered(store_path, project, "DELETE FROM audit WHERE seq = ?", n)
    out = _cli("audit", "verify", "--store", str(newest), cwd=project)
    assert out.returncode == 1 and f"row {n} is missing (the chain head records {n} rows" in out.stderr

    relinked = _tampered(store_path, project, "UPDATE audit SET prev = ? WHERE seq = 4", GENESIS)
    out = _cli("audit", "verify", "--json", "--store", str(relinked), cwd=project)
    assert out.returncode == 1 and json.loads(out.stdout)["seq"] == 4


def test_audit_show_lists_a_runs_rows_as_text_and_json(write_pipeline, store_path, web, srv, project) -> None:
    result = _run(_effects_pipeline(write_pipeline, web, srv.api_base))
    text = _cli("audit", "show", "--run", result.run_id, cwd=project)
    assert text.returncode == 0, text.stderr
    assert "process.started" in text.stdout and "file.written" in text.stdout and SECRET not in text.stdout
    data = json.loads(_cli("audit", "show", "--run", "last", "--json", "--action", "request", cwd=project).stdout)
    assert [r["detail"]["status"] for r in data] == [302, 200]
    unknown = _cli("audit", "show", "--run", "nope", cwd=project)
    assert unknown.returncode == 1 and "no run 'nope'" in unknown.stderr and "Traceback" not in unknown.stderr


# -- the property: any single-row change or deletion is found, at the right row --------------

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_pending = st.tuples(
    st.floats(min_value=0, max_value=4e9, allow_nan=False),
    st.one_of(st.none(), _text),
    st.one_of(st.none(), _text),
    st.sampled_from(["process.started", "file.written", "request.sent", "llm.called", "secret.read"]),
    st.dictionaries(st.sampled_from(["path", "n", "host", "name"]), st.one_of(_text, st.integers()), max_size=3).map(
        json.dumps),
)
_FIELDS = ("seq", "ts", "run_id", "task_id", "action", "detail", "prev", "hash")


def _chain(pending: list[tuple[Any, ...]]) -> list[AuditRow]:
    return [AuditRow(*r) for r in seal(0, None, pending)]


@given(st.lists(_pending, min_size=1, max_size=12), st.data())
@settings(max_examples=300, deadline=None)
def test_any_single_row_change_or_deletion_is_detected_at_that_row(pending, data) -> None:
    rows = _chain(pending)
    head = (rows[-1].seq, rows[-1].hash)
    assert verify(rows, head).ok
    k = data.draw(st.integers(0, len(rows) - 1), label="row")
    if data.draw(st.booleans(), label="delete"):
        changed = rows[:k] + rows[k + 1:]
    else:
        field = data.draw(st.sampled_from(_FIELDS), label="field")
        old = getattr(rows[k], field)
        if field == "seq":  # the table's primary key: another row's number cannot be taken
            new: Any = data.draw(st.integers(len(rows) + 1, 10**6))
        elif field == "ts":
            new = data.draw(st.floats(min_value=0, max_value=4e9, allow_nan=False))
        elif field in ("run_id", "task_id"):
            new = data.draw(st.one_of(st.none(), _text))
        else:
            new = data.draw(_text | st.sampled_from([GENESIS, rows[k - 1].hash, rows[k].hash]))
        assume(new != old)
        values = {f: getattr(rows[k], f) for f in _FIELDS} | {field: new}
        changed = sorted([*rows[:k], AuditRow(**values), *rows[k + 1:]], key=lambda r: r.seq)
    verdict = verify(changed, head)
    assert not verdict.ok
    assert verdict.seq == k + 1, verdict


@given(st.lists(_pending, min_size=2, max_size=6), st.data())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_store_detects_an_sql_update_or_delete_of_any_row(pending, data) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "s.db"
        with Store.open(path) as db:
            db.append_audit(pending[: len(pending) // 2], seal)  # two batches: the head carries over
            db.append_audit(pending[len(pending) // 2:], seal)
        assert goatclaw.verify_audit(path).ok
        k = data.draw(st.integers(1, len(pending)), label="seq")
        column = data.draw(st.sampled_from(["ts", "run_id", "task_id", "action", "detail", "prev", "hash", None]))
        if column in ("ts", "run_id", "task_id", "action", "detail"):
            assume(pending[k - 1][("ts", "run_id", "task_id", "action", "detail").index(column)] not in (123.5,
                                                                                                        "tampered"))
        with sqlite3.connect(path) as raw:
            if column is None:
                raw.execute("DELETE FROM audit WHERE seq = ?", (k,))
            else:
                raw.execute(f"UPDATE audit SET {column} = ? WHERE seq = ?",
                            (123.5 if column == "ts" else "tampered", k))
        verdict = goatclaw.verify_audit(path)
        assert not verdict.ok and verdict.seq == k, verdict


def test_row_hash_is_stable_canonical_json() -> None:
    # a fixed vector: changing the canonical form would silently break every stored chain
    digest = row_hash(1, 1.5, "r", None, "file.written", '{"path": "a"}', GENESIS)
    assert digest == row_hash(1, 1.5, "r", None, "file.written", '{"path": "a"}', GENESIS)
    assert len(digest) == 64 and digest != row_hash(1, 1.5, "r", None, "file.written", '{"path":"a"}', GENESIS)


def test_a_request_that_gets_no_answer_is_audited_too(write_pipeline, store_path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = write_pipeline(f"""
        version: 1
        tasks:
          fetch: {{uses: http, retry: {{attempts: 1}}, with: {{url: "http://127.0.0.1:{port}/x", timeout: 2}}}}
        """)
    result = goatclaw.run(path)
    assert result.tasks["fetch"].error_class == "connection"
    failed = [r for r in goatclaw.audit_log(store_path, run=result.run_id) if r.action == "request.failed"]
    assert [(r.data["method"], r.data["url"], r.data["error_class"]) for r in failed] == [
        ("GET", f"http://127.0.0.1:{port}/x", "connection")]
    assert goatclaw.verify_audit(store_path).ok


# -- a keyed chain (GOATCLAW_AUDIT_KEY): nobody without the key can rebuild it --------------------

KEY = b"correct horse battery staple"


def _keyed_chain(pending: list[tuple[Any, ...]], plain_first: int = 0) -> list[AuditRow]:
    """``plain_first`` rows written before the key was set, the rest keyed."""
    rows = seal(0, None, pending[:plain_first])
    head = (rows[-1][0], rows[-1][-1]) if rows else (0, None)
    return [AuditRow(*r) for r in [*rows, *seal(head[0], head[1], pending[plain_first:], key=KEY)]]


@given(st.lists(_pending, min_size=1, max_size=10), st.data())
@settings(max_examples=200, deadline=None)
def test_a_keyed_chain_finds_any_change_even_when_the_rest_is_rebuilt(pending, data) -> None:
    plain = data.draw(st.integers(0, len(pending) - 1), label="rows before the key")
    rows = _keyed_chain(pending, plain)
    head = (rows[-1].seq, rows[-1].hash)
    verdict = verify(rows, head, key=KEY)
    assert verdict.ok and verdict.keyed_from == plain + 1, verdict
    k = data.draw(st.integers(plain, len(rows) - 1), label="altered keyed row")
    # the attacker changes row k and re-links it and every later row, without the key
    forged = [(r.ts, r.run_id, r.task_id, r.action, r.detail) for r in rows[k:]]
    forged[0] = (forged[0][0], forged[0][1], forged[0][2], forged[0][3], '{"tampered": true}')
    assume(forged[0][4] != rows[k].detail)
    how = data.draw(st.sampled_from(["plain", "other key"]), label="rebuilt with")
    rebuilt = seal(rows[k - 1].seq if k else 0, rows[k - 1].hash if k else None, forged,
                   key=None if how == "plain" else b"a guess")
    changed = [*rows[:k], *(AuditRow(*r) for r in rebuilt)]
    new_head = (changed[-1].seq, changed[-1].hash)
    verdict = verify(changed, new_head, key=KEY, keyed_from=plain + 1)
    assert not verdict.ok and verdict.seq == k + 1, verdict


def test_keyed_rows_need_the_key_and_a_pinned_keyed_from_refuses_a_plain_rebuild() -> None:
    pending = [(1.0, "r", None, "file.written", '{"path": "a"}'), (2.0, "r", None, "file.written", '{"path": "b"}')]
    keyed = _keyed_chain(pending)
    head = (keyed[-1].seq, keyed[-1].hash)
    assert keyed[0].hash.startswith("hmac:")
    missing = verify(keyed, head)
    assert not missing.ok and missing.seq == 1 and "set GOATCLAW_AUDIT_KEY to verify it" in str(missing)
    # the whole chain rebuilt without the key passes a verifier that expects nothing ...
    plain = _chain(pending)
    assert verify(plain, (plain[-1].seq, plain[-1].hash), key=KEY).ok
    # ... but not one that pinned where the keyed rows start
    pinned = verify(plain, (plain[-1].seq, plain[-1].hash), key=KEY, keyed_from=1)
    assert not pinned.ok and pinned.seq == 1 and "every row from 1 on must be" in str(pinned)


def test_a_run_with_the_audit_key_writes_a_keyed_chain_and_never_shows_the_key(
        project, write_pipeline, store_path, monkeypatch) -> None:
    monkeypatch.setenv("GOATCLAW_AUDIT_KEY", KEY.decode())
    monkeypatch.setenv(recorder.WRITER_ENV, "process")  # the writer process seals with the key too
    tasks = {f"n{i}": {"uses": "note", "with": {"n": i}} for i in range(60)}
    tasks["leak"] = {"uses": "echo", "with": {"value": "${{ env.GOATCLAW_AUDIT_KEY }}"}}
    tasks["say"] = {"uses": "shell", "with": {"script": 'echo "key=$GOATCLAW_AUDIT_KEY"'}}
    (project / "big.yaml").write_text(json.dumps({"version": 1, "name": "keyed", "tasks": tasks}))
    reg = _registry()
    result = goatclaw.run(goatclaw.load(project / "big.yaml", registry=reg), registry=reg)
    assert result.tasks["leak"].status.value == "failed"  # env.GOATCLAW_AUDIT_KEY is nobody's to read
    assert result.tasks["say"].output["stdout"].strip() == "key="  # nor a command's
    rows = goatclaw.audit_log(store_path)
    assert rows and all(r.hash.startswith("hmac:") for r in rows)
    assert goatclaw.verify_audit(store_path).ok
    assert KEY not in b"".join(p.read_bytes() for p in store_path.parent.glob("goatclaw.db*"))
    assert "GOATCLAW_AUDIT_KEY" not in os.environ  # taken by the run, held by the process
    forget_audit_key()
    assert not goatclaw.verify_audit(store_path).ok
    out = CliRunner().invoke(app, ["audit", "verify"])
    assert out.exit_code == 1 and "set GOATCLAW_AUDIT_KEY to verify it" in out.output
    ok = CliRunner().invoke(app, ["audit", "verify", "--keyed-from", "1"], env={"GOATCLAW_AUDIT_KEY": KEY.decode()})
    assert ok.exit_code == 0 and "keyed from row 1" in ok.output
