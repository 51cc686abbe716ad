"""A model's tool arguments never become a URL, a path or a command without ``trust:`` (issue #18).

A tool whose plugin declares an argument a sink (``http``'s ``url``, ``file.write``'s ``path``,
``shell``'s ``run``) is offered only when the entry fixes that argument in ``with:`` or lets
the model fill it with ``trust:``; a pipeline tool likewise for the vars that reach a sink of
its tasks, directly or through another task. And a tool call goes through a circuit breaker
like a task's attempt: an entry's ``breaker:`` (else the task's) guards each call.
Against the real local OpenAI server through litellm, and a real local HTTP service.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import pytest
from local_http import serving
from openai_server import FakeOpenAI, Reply, final, tool_call, tool_messages
from openai_server import scripted as agent
from typer.testing import CliRunner

import goatclaw
from goatclaw import llm as room
from goatclaw.cli.app import app
from goatclaw.store import Store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def litellm_imported() -> None:
    """Pay litellm's import (seconds) once, outside the tests' task timeouts."""
    room._litellm()


class _Flaky(BaseHTTPRequestHandler):
    """``/down`` always answers 500; ``/ok`` answers 200. Counts the requests it saw."""

    hits: ClassVar[dict[str, int]] = {}
    lock = threading.Lock()

    def do_GET(self) -> None:
        with self.lock:
            self.hits[self.path] = self.hits.get(self.path, 0) + 1
        status = 500 if self.path.startswith("/down") else 200
        body = json.dumps({"path": self.path}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def service() -> Iterator[str]:
    _Flaky.hits = {}
    with serving(_Flaky) as url:
        yield url


def _pipeline(write: Callable[..., Path], srv: FakeOpenAI, tools: list[dict[str, Any]], *,
              permissions: str = "{network: [127.0.0.1], files: {write: [out/]}}", extra: str = "") -> Path:
    return write(f"""
        version: 1
        name: sinks
        permissions: {permissions}
        {extra}
        tasks:
          ask:
            uses: llm
            retry: {{attempts: 1}}
            with:
              model: openai/gpt-4o-mini
              api_base: {srv.api_base}
              api_key: sk-test
              prompt: do it
              tools: {json.dumps(tools)}
        """)


def _offered(body: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in body.get("tools", [])]


def test_a_sink_the_model_would_fill_is_never_offered_and_a_call_to_it_writes_nothing(write_pipeline, srv,
                                                                                      project) -> None:
    srv.respond = agent(Reply(None, tool_calls=[tool_call("file_write", {"path": "out/x.txt", "content": "hi"})]),
                        final)
    result = goatclaw.run(_pipeline(write_pipeline, srv, [{"uses": "file.write"}, {"uses": "slugify"}]))
    assert result.ok, result.tasks["ask"].error
    assert _offered(srv.requests[0]) == ["slugify"]
    refused = result.tasks["ask"].output["tools"]["refused"]
    assert "trust: [path]" in refused["file_write"] and "with:" in refused["file_write"]
    answer = json.loads(tool_messages(srv.requests[1])[0]["content"])
    assert answer["error_class"] == "permission_denied" and "trust" in answer["error"]
    assert not (project / "out" / "x.txt").exists()


def test_a_sink_fixed_in_with_is_offered_without_it(write_pipeline, srv, project) -> None:
    srv.respond = agent(Reply(None, tool_calls=[tool_call("save", {"content": "hello"})]), final)
    tools = [{"uses": "file.write", "name": "save", "with": {"path": "out/fixed.txt"}}]
    result = goatclaw.run(_pipeline(write_pipeline, srv, tools))
    assert result.ok, result.tasks["ask"].error
    assert _offered(srv.requests[0]) == ["save"]
    params = srv.requests[0]["tools"][0]["function"]["parameters"]["properties"]
    assert "path" not in params and "content" in params
    assert (project / "out" / "fixed.txt").read_text() == "hello"


def test_trust_lets_the_model_fill_the_sinks_it_names(write_pipeline, srv, project) -> None:
    srv.respond = agent(Reply(None, tool_calls=[tool_call("file_write", {"path": "out/chosen.txt",
                                                                         "content": "picked"})]), final)
    result = goatclaw.run(_pipeline(write_pipeline, srv, [{"uses": "file.write", "trust": ["path"]}]))
    assert result.ok, result.tasks["ask"].error
    assert _offered(srv.requests[0]) == ["file_write"]
    assert (project / "out" / "chosen.txt").read_text() == "picked"


def test_trust_of_another_argument_does_not_cover_the_sink(write_pipeline, srv) -> None:
    srv.respond = agent(final)
    result = goatclaw.run(_pipeline(write_pipeline, srv, [{"uses": "file.write", "trust": ["content"]}]))
    assert result.ok, result.tasks["ask"].error
    assert _offered(srv.requests[0]) == []
    assert "trust: [path]" in result.tasks["ask"].output["tools"]["refused"]["file_write"]


def test_a_pipeline_tool_whose_var_reaches_a_sink_through_another_task_needs_trust(write_pipeline, srv,
                                                                                   service) -> None:
    """``vars.where`` → ``echo`` → ``http``'s url: the model's value would reach the URL one task later."""
    write_pipeline("""
        version: 1
        name: relay
        vars: {where: null, note: ""}
        permissions: {network: [127.0.0.1]}
        tasks:
          build: {uses: echo, with: {message: "${{ vars.where }}"}}
          get: {uses: http, needs: build, with: {url: "${{ tasks.build.output.message }}"}}
        outputs: {status: "${{ tasks.get.output.status }}"}
        """, name="relay.yaml")
    srv.respond = agent(Reply(None, tool_calls=[tool_call("relay", {"where": f"{service}/ok"})]), final)
    result = goatclaw.run(_pipeline(write_pipeline, srv, [{"pipeline": "relay.yaml"}]))
    assert result.ok, result.tasks["ask"].error
    assert _offered(srv.requests[0]) == []
    assert "trust: [where]" in result.tasks["ask"].output["tools"]["refused"]["relay"]
    assert _Flaky.hits == {}

    srv.requests.clear()
    srv.respond = agent(Reply(None, tool_calls=[tool_call("relay", {"where": f"{service}/ok"})]), final)
    result = goatclaw.run(_pipeline(write_pipeline, srv, [{"pipeline": "relay.yaml", "trust": ["where"]}]))
    assert result.ok, result.tasks["ask"].error
    assert _offered(srv.requests[0]) == ["relay"]
    assert json.loads(tool_messages(srv.requests[1])[0]["content"]) == {"status": 200}
    assert _Flaky.hits == {"/ok": 1}


def test_validate_warns_at_the_entry_naming_both_ways_out(write_pipeline, srv) -> None:
    write_pipeline("""
        version: 1
        name: relay
        vars: {where: null}
        permissions: {network: [127.0.0.1]}
        tasks:
          get: {uses: http, with: {url: "${{ vars.where }}"}}
        """, name="relay.yaml")
    path = _pipeline(write_pipeline, srv, [{"uses": "file.write"}, {"pipeline": "relay.yaml"},
                                           {"uses": "file.write", "name": "ok", "with": {"path": "out/a"}}])
    out = CliRunner().invoke(app, ["validate", str(path)])
    assert out.exit_code == 0, out.output  # warnings: the run refuses the tools, it does not fail
    lines = [line for line in out.output.splitlines() if "trust" in line]
    assert len(lines) == 2, out.output
    assert "tools[0].uses" in lines[0] and "add trust: [path]" in lines[0] and ":14:" in lines[0]
    assert "tools[1].pipeline" in lines[1] and "where reaches get.with.url" in lines[1]


def test_an_entrys_breaker_opens_after_failing_calls_and_the_next_call_never_reaches_the_service(
        write_pipeline, srv, service, store_path) -> None:
    calls = [tool_call("http", {"url": f"{service}/down/{i}"}, id=f"c{i}") for i in range(3)]
    srv.respond = agent(Reply(None, tool_calls=calls[:1]), Reply(None, tool_calls=calls[1:2]),
                        Reply(None, tool_calls=calls[2:]), final)
    tools = [{"uses": "http", "trust": ["url"], "breaker": {"failures": 2, "reset": "1h"}}]
    result = goatclaw.run(_pipeline(write_pipeline, srv, tools))
    assert result.ok, result.tasks["ask"].error
    classes = [c["error_class"] for turn in result.tasks["ask"].output["trajectory"] for c in turn["calls"]]
    assert classes == ["server_error", "server_error", "breaker_open"]
    assert sum(_Flaky.hits.values()) == 2  # the third call was refused by the open breaker
    with Store.open(store_path) as db:
        topics = [e["topic"] for e in db.events(result.run_id)]
    assert "breaker.opened" in topics


def test_the_tasks_breaker_guards_its_tool_calls_and_is_shared_with_the_next_run(write_pipeline, srv,
                                                                               service) -> None:
    """No ``breaker:`` on the entry: the task's applies to each call, kept in the store across runs."""
    tools = [{"uses": "http", "trust": ["url"]}]
    path = _pipeline(write_pipeline, srv, tools)
    path.write_text(path.read_text().replace("retry: {attempts: 1}",
                                             "retry: {attempts: 1}\n    breaker: {failures: 1, reset: 1h}"))
    srv.respond = agent(Reply(None, tool_calls=[tool_call("http", {"url": f"{service}/down/a"})]), final)
    first = goatclaw.run(path)
    assert first.ok, first.tasks["ask"].error
    srv.respond = agent(Reply(None, tool_calls=[tool_call("http", {"url": f"{service}/down/b"})]), final)
    second = goatclaw.run(path)
    assert second.ok, second.tasks["ask"].error
    (call,) = second.tasks["ask"].output["trajectory"][0]["calls"]
    assert call["error_class"] == "breaker_open"
    assert _Flaky.hits == {"/down/a": 1}
