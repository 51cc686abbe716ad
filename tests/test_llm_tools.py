"""Tools on the ``llm`` task, against the real local OpenAI server (tests/openai_server.py) through litellm.

The server speaks tool calls (``tools`` in the request, ``tool_calls`` in the reply, streamed
too); nothing of litellm is mocked, and every tool call runs as an attempt of the task.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from local_http import serving
from openai_server import FakeOpenAI, Reply, final, tool_call
from openai_server import scripted as agent
from openai_server import tool_messages as _tool_messages
from typer.testing import CliRunner

import goatclaw
from goatclaw import llm as room
from goatclaw.cli.app import app
from goatclaw.errors import TaskError
from goatclaw.plugin import TaskContext, task
from goatclaw.registry import Registry, default_registry
from goatclaw.store import Store
from goatclaw.tools import Toolbox, parameters_of, plugin_tool

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent

SLUGIFY = {"type": "function", "function": {"name": "slugify", "description": "a slug of a text", "parameters": {
    "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}}


@pytest.fixture(scope="module", autouse=True)
def litellm_imported() -> None:
    """Pay litellm's import (seconds) once, outside the tests' task timeouts."""
    room._litellm()


# -- the server speaks tool calls ------------------------------------------------------------


def _ask_with_tools(srv: FakeOpenAI, *, stream: bool) -> Any:
    litellm = room._litellm()

    async def ask() -> Any:
        kwargs = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "slug these"}],
                  "tools": [SLUGIFY], "api_base": srv.api_base, "api_key": "sk-test"}
        try:
            if not stream:
                return await litellm.acompletion(**kwargs)
            chunks = [c async for c in await litellm.acompletion(**kwargs, stream=True)]
            return litellm.stream_chunk_builder(chunks, messages=kwargs["messages"])
        finally:
            await room._close_litellm_clients()

    return asyncio.run(ask())


@pytest.mark.parametrize("stream", [False, True])
def test_the_server_answers_with_tool_calls_that_litellm_reads(srv: FakeOpenAI, stream: bool) -> None:
    srv.respond = lambda body: Reply(None, tool_calls=[tool_call("slugify", {"text": "Hello World"}, id="c1"),
                                                       tool_call("slugify", {"text": "Ünïcode ok"}, id="c2")],
                                     chunk_chars=3)
    raw = _ask_with_tools(srv, stream=stream)
    choice = raw.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = [(c.id, c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls]
    assert calls == [("c1", "slugify", {"text": "Hello World"}), ("c2", "slugify", {"text": "Ünïcode ok"})]
    assert srv.requests[0]["tools"] == [SLUGIFY]  # the request carried the tools


def test_a_reply_without_tool_calls_still_stops(srv: FakeOpenAI) -> None:
    srv.respond = lambda body: Reply("plain")
    raw = _ask_with_tools(srv, stream=False)
    assert raw.choices[0].finish_reason == "stop" and raw.choices[0].message.content == "plain"
    assert not raw.choices[0].message.tool_calls


# -- tools on the llm task ---------------------------------------------------------------------




def _offered(body: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in body.get("tools", [])]






def tools_pipeline(write: Callable[..., Path], srv: FakeOpenAI, tools: list[dict[str, Any]], *, extra: str = "",
                   with_: str = "", tasks: str = "") -> Path:
    """An ``llm`` task ``ask`` with ``tools`` (written as JSON, which is YAML too)."""
    return write(f"""
        version: 1
        name: tools-test
        {extra}
        tasks:
          ask:
            uses: llm
            retry: {{attempts: 1}}
            with:
              model: openai/gpt-4o-mini
              api_base: {srv.api_base}
              api_key: sk-test
              prompt: slug it
              {with_}
              tools: {json.dumps(tools)}
        {tasks}
        """)


def test_a_model_calls_a_plugin_tool_and_answers_with_its_result(write_pipeline, srv, store_path) -> None:
    srv.respond = agent(Reply(None, tool_calls=[tool_call("slug", {"text": "Hello World"})]), final)
    path = tools_pipeline(write_pipeline, srv, [{"uses": "slugify", "name": "slug", "description": "Make a URL slug",
                                                 "with": {"separator": "_"}}])
    result = goatclaw.run(path)
    assert result.ok, result.tasks["ask"].error
    out = result.tasks["ask"].output
    assert out["text"] == 'results: "hello_world"'  # the fixed separator was used
    first = srv.requests[0]
    assert first["tools"] == [{"type": "function", "function": {
        "name": "slug", "description": "Make a URL slug", "parameters": {
            "type": "object", "additionalProperties": False, "required": ["text"],
            "properties": {"text": {"type": "string"}, "max_length": {"type": "integer", "default": 60}}}}}]
    turns = out["trajectory"]
    assert [t["turn"] for t in turns] == [1, 2]
    call = turns[0]["calls"][0]
    assert (call["name"], call["arguments"], call["result"], call["error_class"]) == (
        "slug", {"text": "Hello World"}, '"hello_world"', None)
    assert call["duration_ms"] >= 0 and turns[1]["calls"] == [] and turns[1]["text"] == out["text"]
    assert out["usage"]["total_tokens"] == 2 * 18  # both turns counted
    assert out["tools"] == {"offered": ["slug"], "refused": {}}


class _Site(BaseHTTPRequestHandler):
    """A small web site for the http tool: ``/slow`` answers after 0.6 s, ``/boom`` with a 500."""

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/slow"):
            time.sleep(0.6)
        status = 500 if self.path.startswith("/boom") else 200
        data = json.dumps({"path": self.path}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def site() -> Iterator[str]:
    with serving(_Site) as url:
        yield url


def test_a_tool_the_task_is_not_granted_is_never_offered(write_pipeline, srv, store_path) -> None:
    """No files.read for the task: file.read is not in the request the model received; a call to it is refused."""
    srv.respond = agent(Reply(None, tool_calls=[tool_call("file_read", {"path": "secret.txt"})]), final)
    (store_path.parent.parent / "secret.txt").write_text("top secret")
    path = tools_pipeline(write_pipeline, srv, [{"uses": "file.read"}, {"uses": "slugify"}],
                          extra="permissions: {network: [127.0.0.1], files: {read: []}}")
    result = goatclaw.run(path)
    assert result.ok, result.tasks["ask"].error
    assert _offered(srv.requests[0]) == ["slugify"]
    assert "file_read" not in json.dumps(srv.requests[0]["tools"])
    out = result.tasks["ask"].output
    assert list(out["tools"]["refused"]) == ["file_read"] and "files.read" in out["tools"]["refused"]["file_read"]
    (answer,) = _tool_messages(srv.requests[1])
    assert json.loads(answer["content"])["error_class"] == "permission_denied"
    assert "top secret" not in json.dumps(srv.requests[1])
    with Store.open(store_path) as db:
        topics = [e["topic"] for e in db.events(result.run_id) if e["topic"].startswith("tool.")]
        audit = [(row[3], row[4], json.loads(row[5])) for row in db.audit_rows(run_id=result.run_id)]
    assert topics == ["tool.refused", "tool.failed"]  # refused up front; the call is recorded, and nothing ran
    denied = [(t, d["rule"], d["tool"]) for t, a, d in audit if a == "permission.denied"]
    assert denied == [("ask", "tools", "file_read")]  # the call to a tool never offered is audited


def test_a_tool_call_the_guard_refuses_is_audited_and_goes_back_to_the_model(write_pipeline, srv, site,
                                                                             store_path) -> None:
    """http is granted 127.0.0.1 only: the model's call to another host is refused, audited, and answered."""
    srv.respond = agent(Reply(None, tool_calls=[tool_call("http", {"url": "http://example.invalid/x"})]), final)
    path = tools_pipeline(write_pipeline, srv, [{"uses": "http", "trust": ["url"]}],
                          extra="permissions: {network: [127.0.0.1]}")
    result = goatclaw.run(path)
    assert result.ok, result.tasks["ask"].error
    (answer,) = _tool_messages(srv.requests[1])
    assert json.loads(answer["content"])["error_class"] == "permission_denied"
    with Store.open(store_path) as db:
        audit = [(row[3], row[4], json.loads(row[5])) for row in db.audit_rows(run_id=result.run_id)]
        events = [e for e in db.events(result.run_id) if e["topic"].startswith("tool.")]
    denied = [d for t, a, d in audit if a == "permission.denied" and t == "ask"]
    assert denied and "example.invalid" in denied[0]["message"]
    assert [(t, a, d["status"]) for t, a, d in audit if a == "tool.called"] == [("ask", "tool.called", "failed")]
    assert [e["topic"] for e in events] == ["tool.started", "tool.failed"]
    assert events[1]["data"]["error_class"] == "permission_denied" and events[1]["task"] == "ask"


def test_tool_errors_go_back_with_their_class_and_parallel_calls_run_concurrently(write_pipeline, srv, site,
                                                                                 store_path) -> None:
    srv.respond = agent(Reply(None, tool_calls=[tool_call("http", {"url": f"{site}/slow/1"}),
                                                tool_call("http", {"url": f"{site}/slow/2"}),
                                                tool_call("http", {"url": f"{site}/boom"})]), final)
    path = tools_pipeline(write_pipeline, srv, [{"uses": "http", "trust": ["url"]}],
                          extra="permissions: {network: [127.0.0.1]}")
    result = goatclaw.run(path)
    assert result.ok, result.tasks["ask"].error
    calls = result.tasks["ask"].output["trajectory"][0]["calls"]
    assert [c["error_class"] for c in calls] == [None, None, "server_error"]
    assert json.loads(calls[0]["result"])["body"] == {"path": "/slow/1"}
    boom = json.loads(_tool_messages(srv.requests[1])[2]["content"])
    assert boom["error_class"] == "server_error" and "500" in boom["error"]
    with Store.open(store_path) as db:
        events = [e for e in db.events(result.run_id) if e["topic"].startswith("tool.")]
    started = [e["ts"] for e in events if e["topic"] == "tool.started"]
    finished = [e["ts"] for e in events if e["topic"] in ("tool.succeeded", "tool.failed")]
    # all three were under way together: run one after the other, /boom would start after both 0.6 s calls ended
    assert len(started) == 3 and max(started) < min(finished)
    assert all(e["data"]["untrusted"] for e in events if e["topic"] == "tool.succeeded")


def test_the_output_of_an_llm_task_with_tools_is_untrusted(write_pipeline, srv, site) -> None:
    srv.respond = agent(Reply(None, tool_calls=[tool_call("http", {"url": f"{site}/page"})]), final)
    path = tools_pipeline(write_pipeline, srv, [{"uses": "http", "trust": ["url"]}], tasks="""
          run_it:
            uses: shell
            needs: [ask]
            with: {run: "echo ${{ tasks.ask.output.text }}"}
        """)
    result = goatclaw.run(path)
    assert result.tasks["ask"].status.value == "succeeded"
    assert result.tasks["run_it"].error_class == "permission_denied"  # no trust: the tool's page reaches no script


def test_secrets_are_masked_in_tool_results_before_the_model_reads_them(write_pipeline, srv, store_path,
                                                                        monkeypatch) -> None:
    monkeypatch.setenv("NOTES_TOKEN", "tok-very-secret-123")
    (store_path.parent.parent / "notes.txt").write_text("the token is tok-very-secret-123, keep it")
    srv.respond = agent(Reply(None, tool_calls=[tool_call("read", {"path": "notes.txt"})]), final)
    path = tools_pipeline(write_pipeline, srv, [{"uses": "file.read", "name": "read", "trust": ["path"]}],
                          extra="secrets: [NOTES_TOKEN]")
    result = goatclaw.run(path)
    assert result.ok, result.tasks["ask"].error
    sent = json.dumps(srv.requests[1])
    assert "tok-very-secret-123" not in sent and "the token is ***" in sent
    assert "tok-very-secret-123" not in json.dumps(result.tasks["ask"].output)


def test_max_turns_bounds_a_model_that_never_stops_calling_tools(write_pipeline, srv) -> None:
    srv.respond = lambda body: Reply(None, tool_calls=[tool_call("slugify", {"text": "again"})])
    path = tools_pipeline(write_pipeline, srv, [{"uses": "slugify"}], with_="max_turns: 3")
    result = goatclaw.run(path)
    ask = result.tasks["ask"]
    assert ask.status.value == "failed" and ask.error_class == "invalid_output"
    assert "max_turns=3" in (ask.error or "")
    assert len(srv.requests) == 3


def test_max_tool_calls_refuses_the_calls_past_it(write_pipeline, srv) -> None:
    srv.respond = agent(Reply(None, tool_calls=[tool_call("slugify", {"text": t}) for t in ("a b", "c d", "e f")]),
                        final)
    path = tools_pipeline(write_pipeline, srv, [{"uses": "slugify"}], with_="max_tool_calls: 2")
    result = goatclaw.run(path)
    assert result.ok, result.tasks["ask"].error
    calls = result.tasks["ask"].output["trajectory"][0]["calls"]
    assert [c["error_class"] for c in calls] == [None, None, "tool_limit"]
    assert [c["result"] for c in calls[:2]] == ['"a-b"', '"c-d"']


def test_bad_arguments_from_the_model_are_an_invalid_input_result(write_pipeline, srv) -> None:
    srv.respond = agent(Reply(None, tool_calls=[tool_call("slug", {"txt": "x"}), tool_call("slug", "{not json"),
                                                tool_call("slug", {"text": "x", "separator": "+"})]), final)
    path = tools_pipeline(write_pipeline, srv, [{"uses": "slugify", "name": "slug", "with": {"separator": "_"}}])
    result = goatclaw.run(path)
    assert result.ok, result.tasks["ask"].error
    results = [json.loads(m["content"]) for m in _tool_messages(srv.requests[1])]
    assert [r["error_class"] for r in results] == ["invalid_input"] * 3
    assert "needs argument 'text'" in results[0]["error"] and "not JSON" in results[1]["error"]
    assert "separator is fixed" in results[2]["error"]


def test_a_streamed_answer_with_tool_calls_works_the_same(write_pipeline, srv) -> None:
    srv.respond = agent(Reply(None, tool_calls=[tool_call("slugify", {"text": "Streamed Call"})], chunk_chars=2),
                        lambda body: Reply("done: " + _tool_messages(body)[0]["content"], chunk_chars=2))
    path = tools_pipeline(write_pipeline, srv, [{"uses": "slugify"}], with_="stream: true")
    result = goatclaw.run(path)
    assert result.ok, result.tasks["ask"].error
    assert result.tasks["ask"].output["text"] == 'done: "streamed-call"'
    assert all(r.get("stream") for r in srv.requests)


def test_an_agent_run_replays_from_its_cassette_with_the_server_down(write_pipeline, project) -> None:
    with FakeOpenAI(agent(Reply(None, tool_calls=[tool_call("slugify", {"text": "Taped Run"})]), final)) as live:
        path = tools_pipeline(write_pipeline, live, [{"uses": "slugify"}])
        recorded = goatclaw.run(path, llm="record")
        assert recorded.ok, recorded.tasks["ask"].error
    replayed = goatclaw.run(path, llm="replay")  # the server is gone
    assert replayed.ok, replayed.tasks["ask"].error
    out = replayed.tasks["ask"].output
    assert out["text"] == recorded.tasks["ask"].output["text"] == 'results: "taped-run"'
    assert [t["source"] for t in out["trajectory"]] == ["cassette", "cassette"] and out["cost_usd"] == 0


# -- where a tool's schema comes from, and what validate says ---------------------------------------


def test_a_tools_parameters_come_from_the_plugins_signature_without_the_fixed_arguments() -> None:
    http = default_registry().task("http")
    schema = parameters_of(http, {"method": "GET", "headers": {"x": "1"}})
    assert schema["required"] == ["url"] and schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"url", "params", "json", "body", "expect", "timeout", "response",
                                         "follow_redirects", "paginate", "auth", "select", "max_wait"}
    # method and headers are fixed: the model never sees them
    assert schema["properties"]["response"] == {"enum": ["auto", "json", "text"], "default": "auto"}
    assert schema["properties"]["expect"] == {"anyOf": [{"type": "array", "items": {"type": "integer"}},
                                                        {"type": "integer"}, {"type": "null"}]}
    assert schema["properties"]["timeout"] == {"type": "number", "default": 30}


def test_a_declared_schema_is_the_tools_parameters(project) -> None:
    declared = {"type": "object", "required": ["city", "unit"], "additionalProperties": False,
                "properties": {"city": {"type": "string", "minLength": 1}, "unit": {"enum": ["C", "F"]}}}

    @task(schema=declared)
    def weather(ctx: TaskContext, **kwargs: Any) -> dict[str, Any]:
        """The weather in a city."""
        return {"city": kwargs["city"], "unit": kwargs["unit"], "degrees": 21}

    registry = Registry(entry_points=False)
    registry.register_task("weather", weather)
    tool = plugin_tool(0, {"uses": "weather", "with": {"unit": "C"}}, registry.task)
    assert tool.name == "weather" and tool.description == "The weather in a city."
    assert tool.parameters == {"type": "object", "required": ["city"], "additionalProperties": False,
                               "properties": {"city": {"type": "string", "minLength": 1}}}
    assert declared["required"] == ["city", "unit"]  # the plugin's own schema is left alone

    async def run(tool: Any, kwargs: dict[str, Any]) -> str:
        return json.dumps(tool.plugin.fn(None, **kwargs))

    box = Toolbox([tool], run)
    assert asyncio.run(box.call("weather", '{"city": "Oslo"}'))["content"] == json.dumps(
        {"city": "Oslo", "unit": "C", "degrees": 21})
    refused = asyncio.run(box.call("weather", '{"city": ""}'))  # the declared schema checks what the model sent
    assert refused["error_class"] == "invalid_input" and "city" in refused["content"]


def test_validate_checks_the_tools_entries_at_their_lines(write_pipeline, srv) -> None:
    path = tools_pipeline(write_pipeline, srv, [{"uses": "slugify", "with": {"separatr": "_"}},
                                                {"uses": "no.such.plugin"}, {"uses": "file.read"},
                                                {"uses": "echo", "nmae": "x"}],
                          extra="permissions: {network: [127.0.0.1], files: {read: []}}", with_="max_turns: 0")
    _, problems = goatclaw.check(path)
    shown = {(p.path, p.severity): p.message for p in problems}
    assert "takes no argument 'separatr'" in shown[("tasks.ask.with.tools[0].with.separatr", "error")]
    assert "unknown task 'no.such.plugin'" in shown[("tasks.ask.with.tools[1].uses", "error")]
    assert "never offered" in shown[("tasks.ask.with.tools[2].uses", "warn")]
    assert "unknown field 'nmae'" in shown[("tasks.ask.with.tools[3].nmae", "error")]
    assert "less than the minimum of 1" in shown[("tasks.ask.with.max_turns", "error")]
    assert all(p.location is not None and p.location.line > 1 for p in problems)


def test_the_shipped_tools_example_replays_offline_from_its_cassette(tmp_path) -> None:
    """pipelines/llm-tools.yaml (docs/llm.md, Tools): three turns, five tool calls, at $0 with no server."""
    done = subprocess.run([sys.executable, "-m", "goatclaw", "apply", "pipelines/llm-tools.yaml", "--llm", "replay",
                           "--output", "json", "--store", str(tmp_path / "db")],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OPENAI_API_KEY": "sk-none"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    with Store.open(tmp_path / "db") as db:
        (run,) = db.runs()
        (pages,) = [t for t in db.tasks(run.id) if t.task_id == "pages"]
        topics = [e["topic"] for e in db.events(run.id) if e["topic"].startswith("tool.")]
    out = pages.output
    assert [len(t["calls"]) for t in out["trajectory"]] == [1, 4, 0] and out["cost_usd"] == 0
    assert {p["language"] for p in out["data"]["pages"]} == {"python", "rust", "go", "haskell"}
    assert topics.count("tool.succeeded") == 5 and "tool.failed" not in topics
    assert "(3 model turns, 5 tool calls)" in (REPO / "out" / "llm-tools.md").read_text()


def test_runs_show_prints_the_trajectory_and_its_json_carries_it_whole(write_pipeline, srv, store_path) -> None:
    srv.respond = agent(Reply(None, tool_calls=[tool_call("slugify", {"text": "Shown Here"}),
                                                tool_call("slugify", {"txt": "bad"})]),
                        lambda body: Reply("all \x1b[31mdone\x1b[0m [bold]x[/bold]"))
    path = tools_pipeline(write_pipeline, srv, [{"uses": "slugify"}])
    assert goatclaw.run(path).ok
    shown = CliRunner().invoke(app, ["runs", "show", "last", "--store", str(store_path)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("trajectory of ask: 2 turns, 2 tool calls"))
    assert lines[head + 1].strip().startswith("turn 1  openai/gpt-4o-mini  live  18 tokens")
    assert '→ slugify({"text": "Shown Here"})' in lines[head + 2] and '"shown-here"' in lines[head + 2]
    assert '✗ slugify({"txt": "bad"})' in lines[head + 3] and "invalid_input" in lines[head + 3]
    assert lines[head + 5].strip() == "answer: all \\u001b[31mdone\\u001b[0m [bold]x[/bold]"  # escaped, not run
    as_json = CliRunner().invoke(app, ["runs", "show", "last", "--store", str(store_path), "--json"])
    (ask,) = [t for t in json.loads(as_json.output)["tasks"] if t["task_id"] == "ask"]
    assert [len(t["calls"]) for t in ask["output"]["trajectory"]] == [2, 0]


def test_converse_refuses_bounds_that_allow_no_turn() -> None:
    async def never(name: str, arguments: str) -> dict[str, Any]:
        raise AssertionError("no call")

    request = room.Request(models=("openai/gpt-4o-mini",), messages=({"role": "user", "content": "hi"},))
    with pytest.raises(TaskError, match="max_turns must be at least 1") as caught:
        asyncio.run(room.converse(request, call_tool=never, max_turns=0))
    assert caught.value.error_class == "invalid_input"


def test_the_plain_live_view_shows_each_tool_call_under_its_task(write_pipeline, srv, store_path) -> None:
    srv.respond = agent(Reply(None, tool_calls=[tool_call("slugify", {"text": "Seen Live"}),
                                                tool_call("slugify", {"txt": "bad"}),
                                                tool_call("file_read", {"path": "x"})]), final)
    path = tools_pipeline(write_pipeline, srv, [{"uses": "slugify"}, {"uses": "file.read"}],
                          extra="permissions: {network: [127.0.0.1], files: {read: []}}")
    done = CliRunner().invoke(app, ["apply", str(path), "--output", "plain"])
    assert done.exit_code == 0, done.output
    lines = [line.strip() for line in done.output.splitlines()]
    refused = "⚒ ask: file_read not offered: 'file.read' needs permissions.files.read, which task ask is not granted"
    assert refused in lines
    assert any(line.startswith("⚒ ask → slugify succeeded in ") for line in lines)
    assert any(line.startswith("⚒ ask → slugify failed in ") and "invalid_input" in line for line in lines)
    assert lines.index("▶ ask started") < lines.index(next(x for x in lines if x.startswith("⚒ ask → slugify")))
