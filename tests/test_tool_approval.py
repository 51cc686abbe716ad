"""Approval per tool (``approve:`` on ``llm`` and ``agent``), against the real local OpenAI server.

A call of a tool ``approve:`` names asks the run's approver first; without one (no terminal,
a script) it is refused with ``approval_required``, the model reads the error and can still
answer, and ``tool.approval`` in the audit chain says who decided what.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from openai_server import FakeOpenAI, Reply, final, scripted, tool_call
from openai_server import tool_messages as _tool_messages

import goatclaw
from goatclaw import llm as room
from goatclaw.engine.toolcalls import Approval
from goatclaw.store import Store

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def litellm_imported() -> None:
    """Pay litellm's import (seconds) once, outside the tests' task timeouts."""
    room._litellm()








def calls_slug(srv: FakeOpenAI, *names: str) -> None:
    """The model calls each of ``names`` with a text, then answers with what came back."""
    srv.respond = scripted(Reply(None, tool_calls=[tool_call(n, {"text": f"Hello {n}"}, id=f"c{i}")
                                                   for i, n in enumerate(names)]), final)


def pipeline(write: Callable[..., Path], srv: FakeOpenAI, approve: Any, *, uses: str = "llm") -> Path:
    tools = [{"uses": "slugify", "name": "slug"}, {"uses": "slugify", "name": "other"}]
    goal = "goal: slug it" if uses == "agent" else "prompt: slug it"
    return write(f"""
        version: 1
        name: approve-test
        tasks:
          ask:
            uses: {uses}
            retry: {{attempts: 1}}
            with:
              model: openai/gpt-4o-mini
              api_base: {srv.api_base}
              api_key: sk-test
              {goal}
              tools: {json.dumps(tools)}
              approve: {json.dumps(approve)}
        """)


def _audit(store_path: Path, run_id: str, action: str) -> list[dict[str, Any]]:
    with Store.open(store_path) as db:
        return [json.loads(r[5]) for r in db.audit_rows(run_id=run_id) if r[4] == action]


def _events(store_path: Path, run_id: str, topic: str) -> list[dict[str, Any]]:
    with Store.open(store_path) as db:
        return [e["data"] for e in db.events(run_id) if e["topic"] == topic]


def test_without_a_terminal_the_call_is_refused_audited_and_the_model_still_answers(write_pipeline, srv,
                                                                                   store_path) -> None:
    calls_slug(srv, "slug")
    result = goatclaw.run(pipeline(write_pipeline, srv, ["slug"]))
    assert result.ok, result.tasks["ask"].error
    sent = json.loads(_tool_messages(srv.requests[1])[0]["content"])
    assert sent == {"error": "tool slug needs approval; run on a terminal to be asked",
                    "error_class": "approval_required"}
    call = result.tasks["ask"].output["trajectory"][0]["calls"][0]
    assert call["error_class"] == "approval_required"
    assert result.tasks["ask"].output["text"].startswith("results: {")
    failed = _events(store_path, result.run_id, "tool.failed")
    assert [(e["tool"], e["error_class"]) for e in failed] == [("slug", "approval_required")]
    assert _events(store_path, result.run_id, "tool.succeeded") == []  # it never ran
    rows = _audit(store_path, result.run_id, "tool.approval")
    assert [(r["tool"], r["who"], r["decision"]) for r in rows] == [("slug", "nobody", "refused: no terminal")]
    assert rows[0]["arguments"] == 'text="Hello slug"'
    assert [r["status"] for r in _audit(store_path, result.run_id, "tool.called")] == ["failed"]


def test_an_approver_that_says_yes_runs_the_call_and_no_is_approval_denied(write_pipeline, srv, store_path) -> None:
    asked: list[Approval] = []

    def yes(a: Approval) -> bool:
        asked.append(a)
        return True

    calls_slug(srv, "slug")
    path = pipeline(write_pipeline, srv, ["slug"])
    result = goatclaw.run(path, approver=yes)
    assert result.ok, result.tasks["ask"].error
    assert result.tasks["ask"].output["text"] == 'results: "hello-slug"'
    assert [(a.task, a.tool, a.uses, dict(a.arguments)) for a in asked] == [
        ("ask", "slug", "slugify", {"text": "Hello slug"})]
    assert asked[0].question == 'task ask wants to call slug(text="Hello slug") — allow? [y/N] '
    rows = _audit(store_path, result.run_id, "tool.approval")
    assert [(r["who"], r["decision"]) for r in rows] == [("caller", "approved")]

    calls_slug(srv, "slug")
    srv.requests.clear()

    async def no(a: Approval) -> bool:
        return False

    result = goatclaw.run(path, approver=no)
    assert result.ok, result.tasks["ask"].error
    sent = json.loads(_tool_messages(srv.requests[1])[0]["content"])
    assert sent["error_class"] == "approval_denied"
    rows = _audit(store_path, result.run_id, "tool.approval")
    assert [(r["who"], r["decision"]) for r in rows] == [("caller", "denied")]
    assert [e["error_class"] for e in _events(store_path, result.run_id, "tool.failed")] == ["approval_denied"]


def test_a_tool_not_listed_runs_without_asking_and_uses_or_true_match(write_pipeline, srv, store_path) -> None:
    asked: list[str] = []

    def no(a: Approval) -> bool:
        asked.append(a.tool)
        return False

    calls_slug(srv, "slug", "other")
    result = goatclaw.run(pipeline(write_pipeline, srv, ["other"]), approver=no)
    assert result.ok and asked == ["other"]
    assert result.tasks["ask"].output["text"].startswith('results: "hello-slug" | {')

    for approve in (["slugify"], True):  # the plugin's uses names both entries; true names every tool
        asked.clear()
        calls_slug(srv, "slug", "other")
        result = goatclaw.run(pipeline(write_pipeline, srv, approve), approver=no)
        assert result.ok and sorted(asked) == ["other", "slug"], approve


def test_the_agent_task_asks_too(write_pipeline, srv, store_path) -> None:
    calls_slug(srv, "slug")
    result = goatclaw.run(pipeline(write_pipeline, srv, ["slug"], uses="agent"))
    assert result.ok, result.tasks["ask"].error
    assert json.loads(_tool_messages(srv.requests[1])[0]["content"])["error_class"] == "approval_required"
    rows = _audit(store_path, result.run_id, "tool.approval")
    assert [(r["who"], r["decision"]) for r in rows] == [("nobody", "refused: no terminal")]


def test_a_bad_approve_value_is_a_located_problem(write_pipeline, srv) -> None:
    path = pipeline(write_pipeline, srv, 3)
    _, problems = goatclaw.check(path)
    located = [(p.location.line if p.location else None, p.message) for p in problems if p.path.endswith("approve")]
    assert located and all(line == 13 for line, _ in located), problems
    assert goatclaw.check(pipeline(write_pipeline, srv, ["mcp:time", "file.write"]))[1] == []


def test_the_question_escapes_and_bounds_the_arguments() -> None:
    a = Approval("t", "save", "file.write", {"path": "a\x1b[2Jb.txt", "content": "x" * 500, "n": 3})
    q = a.question
    assert "\x1b" not in q and "\\u001b[2J" in q
    assert len(q) < 400 and "…" in q
    assert q.startswith('task t wants to call save(path="a\\u001b[2Jb.txt", content="xxx')


@pytest.mark.parametrize("view", ["plain", "rich"])
def test_apply_on_a_terminal_asks_and_y_runs_the_call(write_pipeline, srv, store_path, project, view: str) -> None:
    """A real pty: ``goatclaw apply`` asks on it (the rich live table stopped meanwhile), ``y`` runs the call."""
    calls_slug(srv, "slug")
    path = pipeline(write_pipeline, srv, ["slug"])
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdin, stdout and stderr are the pty, and it is the controlling terminal
        env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"}
        env.pop("CI", None)
        os.chdir(project)
        os.execve(sys.executable, [sys.executable, "-m", "goatclaw", "apply", str(path), "-o", view], env)
    seen = b""
    answered = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the pty
            break
        if not chunk:
            break
        seen += chunk
        if not answered and b"allow? [y/N]" in seen:
            os.write(fd, b"y\n")
            answered = True
    _, status = os.waitpid(pid, 0)
    text = seen.decode("utf-8", "replace")
    assert answered, text
    assert 'task ask wants to call slug(text="Hello slug")' in text
    assert os.waitstatus_to_exitcode(status) == 0, text
    with Store.open(store_path) as db:
        run_id = db.runs(limit=1)[0].id
    rows = _audit(store_path, run_id, "tool.approval")
    assert [(r["who"], r["decision"]) for r in rows] == [("terminal", "approved")]
    assert _events(store_path, run_id, "tool.succeeded")


def test_apply_through_a_pipe_refuses(write_pipeline, srv, store_path, project) -> None:
    calls_slug(srv, "slug")
    path = pipeline(write_pipeline, srv, ["slug"])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "goatclaw", "apply", str(path)], cwd=project, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "allow?" not in done.stdout + done.stderr
    with Store.open(store_path) as db:
        run_id = db.runs(limit=1)[0].id
    assert [r["decision"] for r in _audit(store_path, run_id, "tool.approval")] == ["refused: no terminal"]


def _has_time_server() -> bool:
    try:
        import mcp_server_time  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_time_server(), reason="mcp-server-time is not installed (it is in the dev extra)")
def test_mcp_server_and_mcp_server_tool_names_match_a_servers_tools(tmp_path, monkeypatch, srv) -> None:
    servers = {"time": {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}}
    (tmp_path / "goatclaw.yaml").write_text(f"version: 1\nstore: {{path: .goatclaw/goatclaw.db}}\n"
                                            f"mcp_servers: {json.dumps(servers)}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GOATCLAW_STORE", raising=False)

    def write(approve: Any) -> Path:
        path = tmp_path / "p.yaml"
        path.write_text(f"""version: 1
name: approve-mcp
permissions: {{network: [127.0.0.1], mcp: [time]}}
tasks:
  ask:
    uses: llm
    retry: {{attempts: 1}}
    with:
      model: openai/gpt-4o-mini
      api_base: {srv.api_base}
      api_key: sk-test
      prompt: use the tools
      tools: [{{mcp: time}}]
      approve: {json.dumps(approve)}
""")
        return path

    def model() -> None:
        srv.respond = scripted(Reply(None, tool_calls=[
            tool_call("time_get_current_time", {"timezone": "UTC"}, id="a"),
            tool_call("time_convert_time", {"source_timezone": "UTC", "time": "12:00",
                                            "target_timezone": "Europe/Paris"}, id="b")]), final)

    asked: list[tuple[str, str]] = []

    def yes(a: Approval) -> bool:
        asked.append((a.tool, a.uses))
        return True

    model()
    result = goatclaw.run(write(["mcp:time:get_current_time"]), approver=yes)
    assert result.ok, result.tasks["ask"].error
    assert asked == [("time_get_current_time", "mcp:time")]  # convert_time was not named: not asked
    calls = result.tasks["ask"].output["trajectory"][0]["calls"]
    assert [c["error_class"] for c in calls] == [None, None]

    model()
    result = goatclaw.run(write(["mcp:time"]))  # no approver: both refused, neither reaches the server
    assert result.ok, result.tasks["ask"].error
    calls = result.tasks["ask"].output["trajectory"][0]["calls"]
    assert [c["error_class"] for c in calls] == ["approval_required", "approval_required"]
    assert _audit(tmp_path / ".goatclaw" / "goatclaw.db", result.run_id, "mcp.called") == []
