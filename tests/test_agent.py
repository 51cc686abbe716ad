"""Agents: pipeline tools, per-call retry and cache, and the ``agent`` task.

Real runs over HTTP through litellm against tests/openai_server.py (which speaks tool calls),
with a local web site (tests/local_http.py) for ``http`` tools; every tool call runs as an
attempt of its task.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import pytest
from local_http import serving
from openai_server import FakeOpenAI, Reply, final, scripted, tool_call
from openai_server import tool_messages as _tool_messages
from typer.testing import CliRunner

import goatclaw
from goatclaw import llm as room
from goatclaw.cli.app import app
from goatclaw.registry import default_registry
from goatclaw.store import Store

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def litellm_imported() -> None:
    """Pay litellm's import (seconds) once, outside the tests' task timeouts."""
    room._litellm()








def llm_with_tools(write: Callable[..., Path], srv: FakeOpenAI, tools: list[dict[str, Any]], *, extra: str = "",
                   task_extra: str = "") -> Path:
    return write(f"""
        version: 1
        name: caller
        {extra}
        tasks:
          ask:
            uses: llm
            retry: {{attempts: 1}}
            {task_extra}
            with:
              model: openai/gpt-4o-mini
              api_base: {srv.api_base}
              api_key: sk-test
              prompt: use the tools
              tools: {json.dumps(tools)}
        """)


def _events(store_path: Path, run_id: str, prefix: str = "tool.") -> list[dict[str, Any]]:
    with Store.open(store_path) as db:
        return [e for e in db.events(run_id) if e["topic"].startswith(prefix)]


LOOKUP = """
    version: 1
    name: lookup
    description: Make a slug of a word, a number of times.
    vars:
      word: null
      times: 2
      separator: "-"
    tasks:
      slug:
        uses: slugify
        with: {text: "${{ vars.word }} ${{ vars.times }}", separator: "${{ vars.separator }}"}
      again:
        uses: echo
        needs: [slug]
        with: {value: "${{ tasks.slug.output }}"}
    outputs:
      slug: ${{ tasks.again.output }}
      times: ${{ vars.times }}
    """


# -- pipeline tools ------------------------------------------------------------------------------


def test_a_pipeline_is_a_tool_its_vars_the_parameters_its_outputs_the_result(write_pipeline, srv, store_path) -> None:
    write_pipeline(LOOKUP, name="pipelines/lookup.yaml")
    srv.respond = scripted(Reply(None, tool_calls=[tool_call("lookup", {"word": "Hello World", "times": 3})]), final)
    path = llm_with_tools(write_pipeline, srv, [{"pipeline": "pipelines/lookup.yaml", "with": {"separator": "_"}}])
    result = goatclaw.run(path)
    assert result.ok, result.tasks["ask"].error
    (offered,) = srv.requests[0]["tools"]
    assert offered["function"] == {"name": "lookup", "description": "Make a slug of a word, a number of times.",
                                   "parameters": {"type": "object", "additionalProperties": False,
                                                  "required": ["word"],
                                                  "properties": {"word": {}, "times": {"type": "integer",
                                                                                       "default": 2}}}}
    (answer,) = _tool_messages(srv.requests[1])
    assert json.loads(answer["content"]) == {"slug": "hello_world_3", "times": 3}  # the declared outputs
    child_events = [e for e in _events(store_path, result.run_id) if e["topic"] == "tool.child"]
    assert [e["data"]["status"] for e in child_events] == ["succeeded"]
    child_id = child_events[0]["data"]["run_id"]
    with Store.open(store_path) as db:
        child = db.run(child_id)
        (parent,) = [e for e in db.events(child_id) if e["topic"] == "run.parent"]
        tasks = {t.task_id: t.status for t in db.tasks(child_id)}
    assert child.pipeline == "lookup" and tasks == {"slug": "succeeded", "again": "succeeded"}
    assert parent["data"] == {"run_id": result.run_id, "task": "ask", "pipeline": "caller", "depth": 1}


def test_a_pipeline_tool_without_outputs_gives_its_last_tasks_outputs_and_bad_vars_are_refused(
        write_pipeline, srv) -> None:
    write_pipeline("""
        version: 1
        name: plain
        vars: {word: x}
        tasks:
          say: {uses: echo, with: {value: "${{ vars.word }}!"}}
        """, name="plain.yaml")
    srv.respond = scripted(Reply(None, tool_calls=[tool_call("plain", {"word": "hi"}),
                                                   tool_call("plain", {"wrod": "hi"})]), final)
    result = goatclaw.run(llm_with_tools(write_pipeline, srv, [{"pipeline": "plain.yaml"}]))
    assert result.ok, result.tasks["ask"].error
    good, bad = (json.loads(m["content"]) for m in _tool_messages(srv.requests[1]))
    assert good == {"say": "hi!"}
    assert bad["error_class"] == "invalid_input" and "wrod" in bad["error"]


class _Site(BaseHTTPRequestHandler):
    """A web site: ``/flaky`` answers 500 the first time of each test, then 200; the rest 200 with the path."""

    hits: ClassVar[dict[str, int]] = {}
    lock = threading.Lock()

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        with self.lock:
            n = self.hits[self.path] = self.hits.get(self.path, 0) + 1
        status = 500 if self.path.startswith("/flaky") and n == 1 else 200
        data = json.dumps({"path": self.path, "hit": n}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def site() -> Iterator[str]:
    _Site.hits.clear()
    with serving(_Site) as url:
        yield url


FETCH = """
    version: 1
    name: fetch
    vars: {url: null}
    permissions: {network: true}
    tasks:
      get: {uses: http, with: {url: "${{ vars.url }}"}}
    outputs:
      body: ${{ tasks.get.output.body }}
    """


def test_a_child_run_is_granted_no_more_than_the_calling_task(write_pipeline, srv, site, store_path) -> None:
    """The child pipeline grants network: true; the caller only 127.0.0.1: the child cannot reach further."""
    write_pipeline(FETCH, name="fetch.yaml")
    srv.respond = scripted(Reply(None, tool_calls=[tool_call("fetch", {"url": f"{site}/here"}),
                                                   tool_call("fetch", {"url": "http://example.invalid/x"})]), final)
    path = llm_with_tools(write_pipeline, srv, [{"pipeline": "fetch.yaml", "trust": ["url"]}],
                          extra="permissions: {network: [127.0.0.1]}")
    result = goatclaw.run(path)
    assert result.ok, result.tasks["ask"].error
    here, there = (json.loads(m["content"]) for m in _tool_messages(srv.requests[1]))
    assert here == {"body": {"path": "/here", "hit": 1}}
    assert there["error_class"] == "permission_denied" and "example.invalid" in there["error"]
    succeeded = [e["data"] for e in _events(store_path, result.run_id) if e["topic"] == "tool.succeeded"]
    assert [d["untrusted"] for d in succeeded] == [True]  # http ran in it: the result is untrusted


def test_a_pipeline_tool_needing_what_the_task_is_not_granted_is_never_offered(write_pipeline, srv,
                                                                              store_path) -> None:
    write_pipeline("""
        version: 1
        name: save
        vars: {text: null}
        tasks:
          write: {uses: file.write, with: {path: out/saved.txt, content: "${{ vars.text }}"}}
        """, name="save.yaml")
    write_pipeline(LOOKUP, name="pipelines/lookup.yaml")
    srv.respond = scripted(Reply(None, tool_calls=[tool_call("save", {"text": "sneaky"})]), final)
    path = llm_with_tools(write_pipeline, srv, [{"pipeline": "save.yaml"}, {"pipeline": "pipelines/lookup.yaml"}],
                          extra="permissions: {network: [127.0.0.1], files: {read: [.], write: []}}")
    result = goatclaw.run(path)
    assert result.ok, result.tasks["ask"].error
    assert [t["function"]["name"] for t in srv.requests[0]["tools"]] == ["lookup"]  # save needs files.write
    assert "files.write" in result.tasks["ask"].output["tools"]["refused"]["save"]
    (answer,) = _tool_messages(srv.requests[1])
    assert json.loads(answer["content"])["error_class"] == "permission_denied"
    assert not (store_path.parent.parent / "out" / "saved.txt").exists()
    assert "tool.child" not in [e["topic"] for e in _events(store_path, result.run_id)]  # no child run started


def test_a_pipeline_tool_outside_the_project_is_refused_when_it_runs(write_pipeline, srv, tmp_path) -> None:
    """validate cannot see a templated tools: list; the run refuses the file all the same."""
    (tmp_path.parent / "outside.yaml").write_text("version: 1\nname: o\ntasks: {a: {uses: echo}}\n")
    srv.respond = scripted(Reply("fine"))
    path = write_pipeline(f"""
        version: 1
        name: caller
        vars: {{tools: [{{pipeline: ../outside.yaml}}]}}
        tasks:
          ask:
            uses: llm
            with: {{model: openai/gpt-4o-mini, api_base: "{srv.api_base}", api_key: sk-test, prompt: hi,
                   tools: "${{{{ vars.tools }}}}"}}
        """)
    result = goatclaw.run(path)
    assert result.tasks["ask"].error_class == "invalid_input"
    assert "inside the project folder" in (result.tasks["ask"].error or "")
    assert not srv.requests  # nothing was asked


def test_pipeline_tools_nest_at_most_three_deep(write_pipeline, srv, store_path) -> None:
    """A pipeline that offers itself as a tool: the run three deep cannot offer it again, and says so."""
    srv.respond = scripted(Reply(None, tool_calls=[tool_call("me", {})]), final)
    write_pipeline(f"""
        version: 1
        name: me
        tasks:
          ask:
            uses: llm
            with:
              model: openai/gpt-4o-mini
              api_base: {srv.api_base}
              api_key: sk-test
              prompt: call yourself
              tools: [{{pipeline: me.yaml}}]
        outputs: {{text: "${{{{ tasks.ask.output.text }}}}"}}
        """, name="me.yaml")
    result = goatclaw.run(store_path.parent.parent / "me.yaml")
    assert result.ok, result.tasks["ask"].error
    with Store.open(store_path) as db:
        runs = db.runs()
        depths = sorted(e["data"]["depth"] for r in runs for e in db.events(r.id) if e["topic"] == "run.parent")
        failed = [t.error for r in runs for t in db.tasks(r.id) if t.status == "failed"]
    assert len(runs) == 4 and depths == [1, 2, 3]
    assert failed and "nest at most 3 deep" in failed[0]


def test_validate_names_a_pipeline_tool_that_is_not_there(write_pipeline, srv) -> None:
    path = llm_with_tools(write_pipeline, srv, [{"pipeline": "pipelines/nope.yaml"}, {"pipeline": "../x.yaml"},
                                                {"pipeline": "p.yaml", "uses": "echo"}])
    _, problems = goatclaw.check(path)
    shown = {p.path: p.message for p in problems}
    assert "does not exist" in shown["tasks.ask.with.tools[0].pipeline"]
    assert "inside the project folder" in shown["tasks.ask.with.tools[1].pipeline"]
    assert any(p.path.startswith("tasks.ask.with.tools[2]") and p.severity == "error" for p in problems)
    assert all(p.location is not None for p in problems if p.path.startswith("tasks.ask.with.tools"))


# -- each call is an attempt: retry and the task cache --------------------------------------------


def test_a_tool_call_is_retried_by_the_entrys_policy(write_pipeline, srv, site, store_path) -> None:
    srv.respond = scripted(Reply(None, tool_calls=[tool_call("http", {"url": f"{site}/flaky"})]), final)
    path = llm_with_tools(write_pipeline, srv, [{"uses": "http", "retry": {"attempts": 2, "delay": 0},
                                                 "trust": ["url"]}],
                          extra="permissions: {network: [127.0.0.1]}")
    result = goatclaw.run(path)
    assert result.ok, result.tasks["ask"].error
    (answer,) = _tool_messages(srv.requests[1])
    assert json.loads(answer["content"])["body"] == {"path": "/flaky", "hit": 2}  # the second try answered
    topics = [(e["topic"], e["data"].get("error_class")) for e in _events(store_path, result.run_id)]
    assert topics == [("tool.started", None), ("tool.retrying", "server_error"), ("tool.succeeded", None)]


def test_a_tool_call_takes_the_tasks_retry_policy_when_the_entry_says_none(write_pipeline, srv, site) -> None:
    srv.respond = scripted(Reply(None, tool_calls=[tool_call("http", {"url": f"{site}/flaky"})]), final)
    path = llm_with_tools(write_pipeline, srv, [{"uses": "http", "trust": ["url"]}],
                          extra="permissions: {network: [127.0.0.1]}")
    once = goatclaw.run(path)  # the task's retry: {attempts: 1}: the 500 goes back to the model
    assert json.loads(_tool_messages(srv.requests[1])[0]["content"])["error_class"] == "server_error"
    assert once.ok
    _Site.hits.clear()
    srv.requests.clear()
    text = path.read_text().replace("retry: {attempts: 1}", "retry: {attempts: 3, delay: 0}")
    path.write_text(text)
    twice = goatclaw.run(path)
    assert twice.ok and json.loads(_tool_messages(srv.requests[1])[0]["content"])["body"]["hit"] == 2


def test_a_cacheable_tool_with_the_same_arguments_is_answered_from_the_cache(write_pipeline, srv,
                                                                             store_path) -> None:
    """slugify is cacheable: the same call in a later turn, and in a later run, is not run again."""
    srv.respond = scripted(Reply(None, tool_calls=[tool_call("slugify", {"text": "Same Thing"})]),
                           Reply(None, tool_calls=[tool_call("slugify", {"text": "Same Thing"}),
                                                   tool_call("slugify", {"text": "Other Thing"})]), final)
    path = llm_with_tools(write_pipeline, srv, [{"uses": "slugify"}])
    first = goatclaw.run(path)
    assert first.ok, first.tasks["ask"].error
    done = [e["data"] for e in _events(store_path, first.run_id) if e["topic"] == "tool.succeeded"]
    assert [d.get("cached", False) for d in done] == [False, True, False]
    second = goatclaw.run(path)
    assert second.ok
    done = [e["data"] for e in _events(store_path, second.run_id) if e["topic"] == "tool.succeeded"]
    assert [d.get("cached", False) for d in done] == [True, True, True]  # from the store now
    with Store.open(store_path) as db:
        audit = [json.loads(row[5])["status"] for row in db.audit_rows(run_id=second.run_id) if row[4] == "tool.called"]
    assert audit == ["cached"] * 3
    assert second.tasks["ask"].output["text"] == first.tasks["ask"].output["text"]


def test_no_cache_and_side_effect_tools_always_run(write_pipeline, srv, site, store_path) -> None:
    srv.respond = scripted(Reply(None, tool_calls=[tool_call("http", {"url": f"{site}/same"}),
                                                   tool_call("slugify", {"text": "Same"})]),
                           Reply(None, tool_calls=[tool_call("http", {"url": f"{site}/same"}),
                                                   tool_call("slugify", {"text": "Same"})]), final)
    path = llm_with_tools(write_pipeline, srv, [{"uses": "http", "trust": ["url"]},
                                                {"uses": "slugify", "cache": False}],
                          extra="permissions: {network: [127.0.0.1]}")
    result = goatclaw.run(path)
    assert result.ok, result.tasks["ask"].error
    done = [e["data"] for e in _events(store_path, result.run_id) if e["topic"] == "tool.succeeded"]
    assert len(done) == 4 and not any(d.get("cached") for d in done)
    assert _Site.hits["/same"] == 2


# -- the agent task ------------------------------------------------------------------------------


def agent_pipeline(write: Callable[..., Path], srv: FakeOpenAI, tools: list[dict[str, Any]], *, with_: str = "",
                   extra: str = "", tasks: str = "") -> Path:
    return write(f"""
        version: 1
        name: agent-test
        {extra}
        tasks:
          work:
            uses: agent
            retry: {{attempts: 1}}
            with:
              model: openai/gpt-4o-mini
              api_base: {srv.api_base}
              api_key: sk-test
              goal: Make a slug of "Hello Agent World"
              tools: {json.dumps(tools)}
              {with_}
        {tasks}
        """)


def test_an_agent_plans_with_tools_and_answers_in_the_output_schema(write_pipeline, srv, store_path) -> None:
    srv.respond = scripted(Reply(None, tool_calls=[tool_call("slugify", {"text": "Hello Agent World"})]),
                           lambda body: Reply(json.dumps({"slug": json.loads(_tool_messages(body)[0]["content"])})))
    path = agent_pipeline(write_pipeline, srv, [{"uses": "slugify"}],
                          with_='output: {type: object, required: [slug], properties: {slug: {type: string}}}\n'
                                '              done_when: "answer.slug.startswith(\'hello\')"')
    result = goatclaw.run(path)
    assert result.ok, result.tasks["work"].error
    out = result.tasks["work"].output
    assert out["data"] == {"slug": "hello-agent-world"} and out["answers"] == 1
    system = srv.requests[0]["messages"][0]
    assert system["role"] == "system" and "make a short plan" in system["content"]
    assert '"required": ["slug"]' in system["content"] and "answer.slug.startswith" in system["content"]
    assert srv.requests[0]["messages"][1] == {"role": "user", "content": 'Make a slug of "Hello Agent World"'}
    assert [t["function"]["name"] for t in srv.requests[0]["tools"]] == ["slugify"]
    assert [len(t["calls"]) for t in out["trajectory"]] == [1, 0] and out["usage"]["total_tokens"] == 36
    topics = [e["topic"] for e in _events(store_path, result.run_id)]
    assert topics == ["tool.started", "tool.succeeded"]  # the call ran as an attempt of the task


def test_an_answer_that_fails_the_schema_or_done_when_goes_back_to_the_model(write_pipeline, srv,
                                                                            store_path) -> None:
    srv.respond = scripted(Reply("the slug is hello"), Reply('{"slug": "nope"}'), Reply('{"slug": "hello-x"}'))
    path = agent_pipeline(write_pipeline, srv, [{"uses": "slugify"}],
                          with_='output: {type: object, required: [slug]}\n'
                                '              done_when: "answer.slug.startswith(\'hello\')"')
    result = goatclaw.run(path)
    assert result.ok, result.tasks["work"].error
    out = result.tasks["work"].output
    assert out["data"] == {"slug": "hello-x"} and out["answers"] == 3
    third = srv.requests[2]["messages"]
    feedback = [m["content"] for m in third if m["role"] == "user"][1:]
    assert "not JSON" in feedback[0] and "is false" in feedback[1]
    assert [m["content"] for m in third if m["role"] == "assistant"] == ["the slug is hello", '{"slug": "nope"}']
    assert [bool(t.get("rejected")) for t in out["trajectory"]] == [True, True, False]
    shown = CliRunner().invoke(app, ["runs", "show", "last", "--store", str(store_path)], env={"COLUMNS": "200"})
    lines = [line.strip() for line in shown.output.splitlines()]
    head = lines.index(next(x for x in lines if x.startswith("trajectory of work: 3 turns, 0 tool calls")))
    assert lines[head + 2] == "answer: the slug is hello" and lines[head + 3].startswith("rejected: it is not JSON")
    assert lines[head + 6].startswith("rejected: done_when:")


def test_an_agent_whose_answers_are_never_accepted_fails_bounded(write_pipeline, srv) -> None:
    srv.respond = lambda body: Reply('{"slug": "nope"}')
    path = agent_pipeline(write_pipeline, srv, [], with_='done_when: "answer == \'yes\'"\n              max_answers: 2')
    result = goatclaw.run(path)
    work = result.tasks["work"]
    assert work.status.value == "failed" and work.error_class == "invalid_output"
    assert "not accepted after 2 answers" in (work.error or "") and len(srv.requests) == 2


def test_done_when_a_judge_rule_asks_the_model_as_a_reviewer(write_pipeline, srv) -> None:
    def respond(body: dict[str, Any]) -> Reply:
        if "strict reviewer" in body["messages"][0]["content"]:
            ok = body["messages"][1]["content"].endswith("gamma")  # the output, after the criterion
            return Reply(json.dumps({"verdict": "pass" if ok else "fail", "score": 0.9 if ok else 0.1,
                                     "reason": "names gamma" if ok else "no gamma"}))
        assistant = sum(1 for m in body["messages"] if m["role"] == "assistant")
        return Reply(["alpha beta", "alpha beta gamma"][min(assistant, 1)])

    srv.respond = respond
    path = agent_pipeline(write_pipeline, srv, [], with_="done_when: {judge: The answer names gamma}")
    result = goatclaw.run(path)
    assert result.ok, result.tasks["work"].error
    out = result.tasks["work"].output
    assert out["text"] == "alpha beta gamma" and out["answers"] == 2
    assert "no gamma" in out["trajectory"][0]["rejected"]
    judged = [r for r in srv.requests if "strict reviewer" in r["messages"][0]["content"]]
    assert len(judged) == 2 and all(r.get("temperature") == 0 for r in judged)


def test_an_agent_is_offered_similar_past_runs_of_its_task_from_memory(write_pipeline, srv, store_path) -> None:
    srv.respond = scripted(Reply(None, tool_calls=[tool_call("slugify", {"txt": "wrong argument"})]),
                           Reply(None, tool_calls=[tool_call("slugify", {"text": "Hello Agent World"})]), final)
    path = agent_pipeline(write_pipeline, srv, [{"uses": "slugify"}])
    first = goatclaw.run(path)
    assert first.ok, first.tasks["work"].error
    assert first.tasks["work"].output["recalled"] == []
    assert "Past runs" not in srv.requests[0]["messages"][0]["content"]
    srv.requests.clear()
    second = goatclaw.run(path)
    assert second.ok
    system = srv.requests[0]["messages"][0]["content"]
    assert "Past runs of this task" in system
    assert 'slugify({"txt": "wrong argument"}) → invalid_input' in system  # what failed last time
    (recalled,) = second.tasks["work"].output["recalled"]
    assert recalled.startswith('goal: Make a slug of "Hello Agent World"')


def test_an_agent_without_memory_recalls_and_keeps_nothing(write_pipeline, srv, store_path) -> None:
    srv.respond = scripted(Reply("done"))
    path = agent_pipeline(write_pipeline, srv, [], with_="memory: false")
    assert goatclaw.run(path).ok and goatclaw.run(path).ok
    assert all("Past runs" not in r["messages"][0]["content"] for r in srv.requests)


def test_the_agents_tools_are_granted_like_the_llm_tasks(write_pipeline, srv, store_path) -> None:
    """Not granted files.read: file.read is never offered; the output is untrusted (no script gets it unchecked)."""
    srv.respond = scripted(Reply("done"))
    path = agent_pipeline(write_pipeline, srv, [{"uses": "file.read"}, {"uses": "slugify"}],
                          extra="permissions: {network: [127.0.0.1], files: {read: []}, shell: true}",
                          tasks="""
          after:
            uses: shell
            needs: [work]
            with: {run: "echo ${{ tasks.work.output.text }}"}
        """)
    result = goatclaw.run(path)
    assert result.tasks["work"].status.value == "succeeded"
    assert [t["function"]["name"] for t in srv.requests[0]["tools"]] == ["slugify"]
    assert result.tasks["after"].error_class == "permission_denied"
    _, problems = goatclaw.check(path)
    assert any("never offered" in p.message and p.path == "tasks.work.with.tools[0].uses" for p in problems)


def test_validate_checks_the_agents_with_at_its_lines(write_pipeline, srv) -> None:
    path = write_pipeline(f"""
        version: 1
        name: bad-agent
        tasks:
          work:
            uses: agent
            with:
              model: openai/gpt-4o-mini
              api_base: {srv.api_base}
              done_when: {{judge: ""}}
              max_answers: 0
              tools: [{{uses: slugify, with: {{separatr: "_"}}}}]
        """)
    _, problems = goatclaw.check(path)
    shown = {p.path: p.message for p in problems if p.severity == "error"}
    assert "goal" in shown["tasks.work.with"]
    assert "should be non-empty" in shown["tasks.work.with.done_when.judge"]
    assert "less than the minimum of 1" in shown["tasks.work.with.max_answers"]
    assert "takes no argument 'separatr'" in shown["tasks.work.with.tools[0].with.separatr"]
    assert all(p.location is not None and p.location.line > 1 for p in problems)


# -- the shipped agent pipeline -------------------------------------------------------------------


def test_the_shipped_agent_replays_offline_from_its_cassette(tmp_path) -> None:
    """goatclaw test pipelines/agent-research.test.yaml: no model server, no key; its tools really run."""
    done = subprocess.run([sys.executable, "-m", "goatclaw", "test", "pipelines/agent-research.test.yaml"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "OPENAI_API_KEY": "sk-none"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "✓ pipelines/agent-research.test.yaml::reaches-its-goal-from-the-cassette" in done.stdout


def test_the_shipped_agent_reaches_its_goal_live_against_the_local_model_server(tmp_path, monkeypatch) -> None:
    """The same pipeline live: every turn over HTTP through litellm to tests/openai_server.py, tools run for real."""
    sys.path.insert(0, str(REPO / "pipelines"))
    try:
        from record_agent_research import respond
    finally:
        sys.path.remove(str(REPO / "pipelines"))
    (REPO / "out" / "agent-research.json").unlink(missing_ok=True)
    with FakeOpenAI(respond) as live:
        monkeypatch.setenv("OPENAI_BASE_URL", live.api_base)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-local")
        result = goatclaw.run(REPO / "pipelines" / "agent-research.yaml", workspace=REPO, store=tmp_path / "db")
        requests = list(live.requests)
    assert result.ok, {t: r.error for t, r in result.tasks.items() if r.error}
    out = result.tasks["research"].output
    assert out["data"] == {"written": "out/agent-research.json", "languages": 3}
    assert [t["source"] for t in out["trajectory"]] == ["live"] * 3 and len(requests) == 3
    assert [t["function"]["name"] for t in requests[0]["tools"]] == ["catalogue", "save", "time_get_current_time"]
    catalogue = requests[0]["tools"][0]["function"]["parameters"]
    assert catalogue["required"] == ["language"] and "base" not in catalogue["properties"]  # fixed by the pipeline
    saved = json.loads((REPO / "out" / "agent-research.json").read_text())
    assert saved["years"] == {"python": 1991, "rust": 2015, "go": 2009}
    assert saved["checked_at"].startswith(("20", "19"))  # mcp-server-time really answered: an ISO time
    with Store.open(tmp_path / "db") as db:
        runs = db.runs()
        children = [r for r in runs if r.pipeline == "catalogue"]
        parents = {e["data"]["run_id"] for r in children for e in db.events(r.id) if e["topic"] == "run.parent"}
        assert db.run("last").id == result.run_id  # 'last' is the agent's run, not one of its children
    assert len(children) == 3 and parents == {result.run_id}


def test_a_grant_within_a_ceiling_keeps_only_what_both_allow(tmp_path) -> None:
    from goatclaw.security.permissions import Grant, within

    child = Grant(shell=True, network=True, files_read=(".",), files_write=("out/",), env=("HOME", "TOKEN"),
                  python=False, workspace=str(tmp_path))
    caller = Grant(shell=("git",), network=("127.0.0.1", "*.example.com"), files_read=("data/",), files_write=(),
                   env=("HOME",), python=True, workspace=str(tmp_path))
    cut = within(child, caller)
    assert (cut.shell, cut.network, cut.files_read, cut.files_write, cut.env, cut.python) == (
        ("git",), ("127.0.0.1", "*.example.com"), ("data/",), (), ("HOME",), False)
    narrow = within(Grant(network=("api.example.com", "evil.org"), workspace=str(tmp_path)), caller)
    assert narrow.network == ("api.example.com",)  # covered by *.example.com; evil.org by nothing


def test_validate_treats_an_agents_model_like_an_llm_tasks(write_pipeline, monkeypatch) -> None:
    """No key for the agent's provider: validate says so at the agent's model, as for an llm task."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    path = write_pipeline("""
        version: 1
        name: keyless
        permissions: {network: [api.anthropic.com]}
        tasks:
          work:
            uses: agent
            with: {model: anthropic/claude-3-5-haiku-latest, goal: say hi}
        """)
    _, problems = goatclaw.check(path)
    assert any(p.path.startswith("tasks.work.with.model") and "ANTHROPIC_API_KEY" in p.message for p in problems), \
        [(p.path, p.message) for p in problems]


def test_an_agent_without_tools_just_answers(write_pipeline, srv) -> None:
    srv.respond = scripted(Reply("42"))
    path = write_pipeline(f"""
        version: 1
        name: no-tools
        tasks:
          work:
            uses: agent
            with: {{model: openai/gpt-4o-mini, api_base: "{srv.api_base}", api_key: sk-test,
                   goal: What is six times seven?, done_when: "answer | int == 42"}}
        """)
    result = goatclaw.run(path)
    assert result.ok, result.tasks["work"].error
    assert result.tasks["work"].output["text"] == "42" and "tools" not in srv.requests[0]


def test_validate_checks_a_pipeline_tools_file_and_its_fixed_vars(write_pipeline, srv) -> None:
    write_pipeline("""
        version: 1
        name: broken
        vars: {word: x}
        tasks:
          a: {uses: echo, needs: [nowhere]}
        """, name="broken.yaml")
    write_pipeline(LOOKUP, name="pipelines/lookup.yaml")
    path = llm_with_tools(write_pipeline, srv, [{"pipeline": "broken.yaml"},
                                                {"pipeline": "pipelines/lookup.yaml", "with": {"wrod": "x"}}])
    _, problems = goatclaw.check(path)
    shown = {p.path: p.message for p in problems if p.severity == "error"}
    assert "pipeline tool 'broken.yaml' is invalid" in shown["tasks.ask.with.tools[0].pipeline"]
    assert "nowhere" in shown["tasks.ask.with.tools[0].pipeline"]
    assert "has no var 'wrod'" in shown["tasks.ask.with.tools[1].with.wrod"]
    assert all(p.location is not None for p in problems if p.path.startswith("tasks.ask.with.tools"))


def test_the_specialists_are_tools_of_the_agent(write_pipeline, srv, project, store_path) -> None:
    """Each specialist is offered with its with: schema (fixed arguments left out); a data call runs as an attempt.

    A model may choose a tool's sinks (a path, a URL, a command, the SQL) only where the tool's entry trusts it to
    (``trust:``); without it the tool is refused (tests/test_tool_sinks.py), which the last run here shows.
    """
    (project / "data").mkdir()
    (project / "data" / "orders.csv").write_text("region,qty\nnorth,3\nsouth,4\nnorth,5\n")
    asked = "SELECT region, sum(qty) AS qty FROM orders GROUP BY region ORDER BY region"
    srv.respond = scripted(Reply(None, tool_calls=[tool_call("data", {"query": asked})]),
                           lambda body: Reply("north " + str(json.loads(_tool_messages(body)[0]["content"])
                                                             ["rows"][0]["qty"])))
    names = ["data", "http", "graphql", "wait", "check", "file.glob", "file.archive", "code"]
    # a model may choose a tool's sinks (paths, URLs, commands, SQL) only where the entry trusts it to
    tools = [{"uses": n, "trust": list(default_registry().task(n).spec.sinks)} for n in names]
    tools[0]["with"] = {"files": {"orders": "data/orders.csv"}}
    result = goatclaw.run(agent_pipeline(write_pipeline, srv, tools))
    assert result.ok, result.tasks["work"].error
    offered = {t["function"]["name"]: t["function"]["parameters"] for t in srv.requests[0]["tools"]}
    assert set(offered) == {"data", "http", "graphql", "wait", "check", "file_glob", "file_archive", "code"}
    assert "query" in offered["data"]["properties"] and "files" not in offered["data"]["properties"]  # fixed
    assert {"paginate", "auth", "select"} <= set(offered["http"]["properties"])
    assert {"goal", "folder", "mode", "checks"} <= set(offered["code"]["properties"])
    assert {"http", "tcp", "file", "command"} <= set(offered["wait"]["properties"])
    assert result.tasks["work"].output["text"] == "north 8"
    topics = [e["topic"] for e in _events(store_path, result.run_id)]
    assert topics == ["tool.started", "tool.succeeded"]
    srv.respond = scripted(Reply(None, tool_calls=[tool_call("data", {"query": asked})]), Reply("done"))
    untrusted = goatclaw.run(agent_pipeline(write_pipeline, srv, [{"uses": "data"}]))
    call = untrusted.tasks["work"].output["trajectory"][0]["calls"][0]
    assert call["error_class"] == "permission_denied" and "query" in call["result"]
