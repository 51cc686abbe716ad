"""The MCP client (docs/mcp.md) against real servers nobody here wrote.

``mcp-server-time`` (PyPI, stdio) and ``@modelcontextprotocol/server-everything`` (npm, over
stdio and streamable HTTP; ``.ci/run`` installs it into ``.ci/node``). Models are the local
OpenAI-speaking server (tests/openai_server.py) through litellm; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from openai_server import FakeOpenAI, Reply, tool_call
from typer.testing import CliRunner

import goatclaw
import goatclaw.tools.mcp
from goatclaw.cli.app import app
from goatclaw.store import Store

pytest.importorskip("mcp", reason="the mcp extra is not installed (pip install -e '.[mcp]')")
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
TOKEN = "mcp-header-secret-8e1f"


def _everything() -> str | None:
    """The npm server's binary: .ci/node (what .ci/run installs), tests/node, /work/npm, or PATH."""
    for folder in (REPO / ".ci" / "node", REPO / "tests" / "node", Path("/work/npm")):
        binary = folder / "node_modules" / ".bin" / "mcp-server-everything"
        if binary.exists():
            return str(binary)
    return shutil.which("mcp-server-everything")


EVERYTHING = _everything()
needs_everything = pytest.mark.skipif(
    EVERYTHING is None or shutil.which("node") is None,
    reason="@modelcontextprotocol/server-everything is not installed (.ci/run: npm install --prefix .ci/node)")
try:
    import mcp_server_time  # noqa: F401

    HAS_TIME = True
except ImportError:
    HAS_TIME = False
needs_time = pytest.mark.skipif(not HAS_TIME, reason="mcp-server-time is not installed (it is in the dev extra)")


def _project(root: Path, servers: dict[str, Any]) -> None:
    """A goatclaw.yaml with ``servers``; it says nothing of permissions.mcp, so each pipeline grants its own."""
    text = f"""
        version: 1
        store: {{path: .goatclaw/goatclaw.db}}
        permissions: {{network: true}}
        mcp_servers: {json.dumps(servers)}
        """
    (root / "goatclaw.yaml").write_text(textwrap.dedent(text).lstrip())


@pytest.fixture
def mark() -> str:
    """A unique value in the servers' environment, to find their processes afterwards."""
    return uuid.uuid4().hex


@pytest.fixture
def servers(mark: str) -> dict[str, Any]:
    found: dict[str, Any] = {"time": {"command": sys.executable, "args": ["-m", "mcp_server_time",
                                                                          "--local-timezone", "UTC"],
                                      "env": {"GOATCLAW_TEST_MARK": mark}}}
    if EVERYTHING is not None:
        found["everything"] = {"command": EVERYTHING, "args": ["stdio"], "env": {"GOATCLAW_TEST_MARK": mark}}
    return found


@pytest.fixture
def mcp_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, servers: dict[str, Any]) -> Path:
    _project(tmp_path, servers)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GOATCLAW_STORE", raising=False)
    monkeypatch.delenv("CI", raising=False)
    return tmp_path


def write(root: Path, text: str, name: str = "p.yaml") -> Path:
    path = root / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def audit(store: Path, run_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    with Store.open(store) as db:
        return [(row[3], row[4], json.loads(row[5])) for row in db.audit_rows(run_id=run_id)]


def processes_with(mark: str) -> list[int]:
    """Live processes whose environment holds ``mark`` (the servers this test started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().split(") ", 1)[1][:1]
        except OSError:
            continue
        if mark.encode() in environ and state != "Z":
            found.append(int(entry.name))
    return found


STORE = ".goatclaw/goatclaw.db"


# -- the mcp task ------------------------------------------------------------------------------------


@needs_time
def test_the_mcp_task_calls_a_real_tool_and_its_output_is_untrusted_and_audited(mcp_project, mark) -> None:
    path = write(mcp_project, """
        version: 1
        name: clock
        permissions: {mcp: [time], shell: [echo]}
        tasks:
          now:
            uses: mcp
            with: {server: time, tool: get_current_time, arguments: {timezone: Europe/Paris}}
          say:
            uses: shell
            needs: [now]
            with: {run: "echo ${{ tasks.now.output.text }}"}
        """)
    result = goatclaw.run(path)
    now = result.tasks["now"]
    assert now.status.value == "succeeded", now.error
    assert now.output["server"] == "time" and now.output["tool"] == "get_current_time"
    assert now.output["structured"]["timezone"] == "Europe/Paris"
    assert json.loads(now.output["text"])["timezone"] == "Europe/Paris"
    assert result.tasks["say"].error_class == "permission_denied"  # untrusted: it reaches no script without trust:
    rows = audit(mcp_project / STORE, result.run_id)
    assert [(t, d["server"], d["tool"], d["status"]) for t, a, d in rows if a == "mcp.called"] == [
        ("now", "time", "get_current_time", "succeeded")]
    assert processes_with(mark) == []  # the server stopped with the run


@needs_time
def test_an_mcp_task_not_granted_is_refused_with_permission_denied_and_starts_nothing(mcp_project, servers) -> None:
    starter = f"touch started && exec {sys.executable} -m mcp_server_time"  # leaves a trace if it is ever started
    _project(mcp_project, {**servers, "time": {"command": "sh", "args": ["-c", starter]}})
    path = write(mcp_project, """
        version: 1
        name: clock
        tasks:
          now:
            uses: mcp
            with: {server: time, tool: get_current_time, arguments: {timezone: UTC}}
        """)
    result = goatclaw.run(path)
    assert result.tasks["now"].error_class == "permission_denied"
    assert "permissions.mcp" in result.tasks["now"].error
    rows = audit(mcp_project / STORE, result.run_id)
    assert [a for _, a, _ in rows if a.startswith("mcp.")] == []
    denied = [d for _, a, d in rows if a == "permission.denied"]
    assert len(denied) == 1 and "permissions.mcp" in json.dumps(denied)
    assert not (mcp_project / "started").exists()
    granted = write(mcp_project, "version: 1\nname: ok\npermissions: {mcp: [time]}\ntasks:\n  now: {uses: mcp, with: "
                    "{server: time, tool: get_current_time, arguments: {timezone: UTC}}}\n", "ok.yaml")
    assert goatclaw.run(granted).ok and (mcp_project / "started").exists()  # the trace works


@needs_time
def test_a_task_narrows_mcp_to_one_tool_and_may_not_widen_it(mcp_project) -> None:
    path = write(mcp_project, """
        version: 1
        name: clock
        permissions: {mcp: ["time:get_current_time"]}
        tasks:
          convert:
            uses: mcp
            with: {server: time, tool: convert_time,
                   arguments: {source_timezone: UTC, time: "12:00", target_timezone: Asia/Tokyo}}
        """)
    result = goatclaw.run(path)
    assert result.tasks["convert"].error_class == "permission_denied"
    assert "'convert_time' of server 'time' is not in permissions.mcp" in result.tasks["convert"].error
    wider = write(mcp_project, """
        version: 1
        name: clock
        permissions: {mcp: ["time:get_current_time"]}
        tasks:
          convert:
            uses: mcp
            permissions: {mcp: [time]}
            with: {server: time, tool: convert_time, arguments: {}}
        """, "wider.yaml")
    _, problems = goatclaw.check(wider)
    assert any("permissions.mcp" in p.message and "may only narrow" in p.message for p in problems), problems


@needs_everything
def test_a_secret_in_a_header_is_sent_and_masked_over_streamable_http(tmp_path, monkeypatch) -> None:
    port = _free_port()
    env = {**os.environ, "PORT": str(port)}
    server = subprocess.Popen([EVERYTHING, "streamableHttp"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_port(port)
        _project(tmp_path, {"web": {"url": f"http://127.0.0.1:{port}/mcp",
                                    "headers": {"Authorization": "Bearer ${{ secrets.MCP_TOKEN }}"}}})
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("MCP_TOKEN", TOKEN)
        path = write(tmp_path, """
            version: 1
            name: web
            secrets: [MCP_TOKEN]
            permissions: {mcp: [web]}
            tasks:
              echo:
                uses: mcp
                with: {server: web, tool: echo, arguments: {message: "token ${{ secrets.MCP_TOKEN }}"}}
            """)
        result = goatclaw.run(path)
        echo = result.tasks["echo"]
        assert echo.status.value == "succeeded", echo.error
        assert echo.output["text"] == f"Echo: token {TOKEN}"  # the server got it (as the header did)
        with Store.open(tmp_path / STORE) as db:
            (row,) = [t for t in db.tasks(result.run_id) if t.task_id == "echo"]
            stored = json.dumps([*db.events(result.run_id), *map(list, db.audit_rows(run_id=result.run_id))],
                                default=str)
        assert "Echo: token ***" in json.dumps(row.output)  # what is kept is masked
        assert TOKEN not in stored and TOKEN not in json.dumps(row.output)
    finally:
        server.terminate()
        server.wait(10)


@needs_everything
def test_a_header_reading_an_undeclared_secret_fails_naming_it(tmp_path, monkeypatch) -> None:
    _project(tmp_path, {"web": {"url": "http://127.0.0.1:9/mcp",
                                "headers": {"Authorization": "Bearer ${{ secrets.MCP_TOKEN }}"}}})
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, """
        version: 1
        name: web
        permissions: {mcp: [web]}
        tasks:
          echo: {uses: mcp, retry: {attempts: 1}, with: {server: web, tool: echo, arguments: {message: hi}}}
        """)
    result = goatclaw.run(path)
    assert result.tasks["echo"].error_class == "invalid_input"
    assert "reads secret MCP_TOKEN" in result.tasks["echo"].error and "secrets:" in result.tasks["echo"].error


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port}")


# -- MCP tools on the llm task -------------------------------------------------------------------------


def _offered(body: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in body.get("tools", [])]


def _tool_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in body["messages"] if m.get("role") == "tool"]


def agent(*turns: Reply) -> Any:
    def respond(body: dict[str, Any]) -> Reply:
        done = sum(1 for m in body["messages"] if m.get("role") == "assistant")
        if done >= len(turns):
            return Reply("results: " + " | ".join(m["content"] for m in _tool_messages(body)))
        return turns[done]

    return respond


def llm_pipeline(root: Path, srv: FakeOpenAI, tools: list[Any], *, permissions: str = "", tasks: str = "") -> Path:
    return write(root, f"""
        version: 1
        name: mcp-agent
        permissions: {{network: [127.0.0.1]{permissions}}}
        tasks:
          ask:
            uses: llm
            retry: {{attempts: 1}}
            with:
              model: openai/gpt-4o-mini
              api_base: {srv.api_base}
              api_key: sk-test
              prompt: use the tools
              tools: {json.dumps(tools)}
        {tasks}
        """)


@needs_everything
def test_an_llm_task_calls_an_mcp_tool_through_the_engines_tool_path(mcp_project, srv, mark) -> None:
    srv.respond = agent(Reply(None, tool_calls=[tool_call("everything_echo", {"message": "from the model"})]))
    path = llm_pipeline(mcp_project, srv, [{"mcp": {"server": "everything", "tools": ["echo"]}}],
                        permissions=", mcp: [everything]")
    result = goatclaw.run(path)
    ask = result.tasks["ask"]
    assert ask.status.value == "succeeded", ask.error
    first = srv.requests[0]
    assert _offered(first) == ["everything_echo"]
    params = first["tools"][0]["function"]["parameters"]
    assert params["properties"]["message"]["type"] == "string" and params["required"] == ["message"]
    (answer,) = _tool_messages(srv.requests[1])
    assert json.loads(answer["content"]) == "Echo: from the model"
    assert ask.output["text"] == 'results: "Echo: from the model"'
    call = ask.output["trajectory"][0]["calls"][0]
    assert (call["name"], call["error_class"]) == ("everything_echo", None)
    with Store.open(mcp_project / STORE) as db:
        events = [(e["topic"], e["data"]) for e in db.events(result.run_id) if e["topic"].startswith("tool.")]
    assert [t for t, _ in events] == ["tool.started", "tool.succeeded"]
    assert events[1][1]["uses"] == "mcp:everything" and events[1][1]["untrusted"] is True
    rows = audit(mcp_project / STORE, result.run_id)
    assert [(a, d.get("server"), d.get("tool")) for _, a, d in rows if a in ("mcp.called", "tool.called")] == [
        ("mcp.called", "everything", "echo"), ("tool.called", None, "everything_echo")]
    assert processes_with(mark) == []


@needs_time
def test_an_mcp_tool_error_goes_back_to_the_model_with_its_class(mcp_project, srv) -> None:
    srv.respond = agent(Reply(None, tool_calls=[tool_call("time_get_current_time", {"timezone": "Mars/Olympus"})]))
    path = llm_pipeline(mcp_project, srv, [{"mcp": "time"}], permissions=", mcp: [time]")
    result = goatclaw.run(path)
    assert result.ok, result.tasks["ask"].error
    assert sorted(_offered(srv.requests[0])) == ["time_convert_time", "time_get_current_time"]
    (answer,) = _tool_messages(srv.requests[1])
    assert json.loads(answer["content"])["error_class"] == "tool_error"
    assert result.tasks["ask"].output["trajectory"][0]["calls"][0]["error_class"] == "tool_error"


@needs_time
def test_a_task_without_permissions_mcp_is_never_offered_the_tools(mcp_project, srv, mark) -> None:
    srv.respond = agent(Reply(None, tool_calls=[tool_call("time_get_current_time", {"timezone": "UTC"})]))
    path = llm_pipeline(mcp_project, srv, [{"mcp": "time"}, {"uses": "echo"}])
    result = goatclaw.run(path)
    ask = result.tasks["ask"]
    assert ask.status.value == "succeeded", ask.error
    assert _offered(srv.requests[0]) == ["echo"]  # the request the model received holds no MCP tool
    assert "time_" not in json.dumps(srv.requests[0]["tools"])
    assert list(ask.output["tools"]["refused"]) == ["mcp:time"]
    (answer,) = _tool_messages(srv.requests[1])  # it called one anyway: refused, and audited
    assert json.loads(answer["content"])["error_class"] == "permission_denied"
    rows = audit(mcp_project / STORE, result.run_id)
    assert [a for _, a, _ in rows if a == "mcp.called"] == []
    assert [d["tool"] for _, a, d in rows if a == "permission.denied"] == ["time_get_current_time"]
    assert processes_with(mark) == []  # a server the task is granted nothing of never starts


@needs_time
def test_per_tool_grants_offer_only_those_tools(mcp_project, srv) -> None:
    srv.respond = agent(Reply(None, tool_calls=[tool_call("time_convert_time", {
        "source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"})]))
    path = llm_pipeline(mcp_project, srv, [{"mcp": "time"}], permissions=', mcp: ["time:get_current_time"]')
    result = goatclaw.run(path)
    ask = result.tasks["ask"]
    assert ask.status.value == "succeeded", ask.error
    assert _offered(srv.requests[0]) == ["time_get_current_time"]
    assert "time_convert_time" in ask.output["tools"]["refused"]
    (answer,) = _tool_messages(srv.requests[1])
    assert json.loads(answer["content"])["error_class"] == "permission_denied"
    rows = audit(mcp_project / STORE, result.run_id)
    assert [d["tool"] for _, a, d in rows if a == "permission.denied"] == ["time_convert_time"]


# -- record and replay ---------------------------------------------------------------------------------


@needs_time
def test_record_then_replay_with_the_server_absent_then_a_changed_schema_fails(mcp_project, servers) -> None:
    with FakeOpenAI(agent(Reply(None, tool_calls=[tool_call("time_convert_time", {
            "source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"})]))) as live:
        path = llm_pipeline(mcp_project, live, [{"mcp": "time"}], permissions=", mcp: [time]", tasks="""
          direct:
            uses: mcp
            with: {server: time, tool: convert_time,
                   arguments: {source_timezone: UTC, time: "09:30", target_timezone: Europe/Paris}}
        """)
        recorded = goatclaw.run(path, llm="record")
        assert recorded.ok, {t: r.error for t, r in recorded.tasks.items()}
    tape = path.with_suffix(".cassette.json")
    kinds = [(e.get("kind"), e.get("method")) for e in json.loads(tape.read_text())["exchanges"].values()]
    assert kinds.count(("mcp", "tools/call")) == 2 and ("mcp", "tools/list") in kinds

    absent = {**servers, "time": {"command": "/nonexistent/mcp-server-time"}}
    _project(mcp_project, absent)  # the server is gone, and so is the model server
    replayed = goatclaw.run(path, llm="replay")
    assert replayed.ok, {t: r.error for t, r in replayed.tasks.items()}
    assert replayed.tasks["ask"].output["text"] == recorded.tasks["ask"].output["text"]
    assert replayed.tasks["direct"].output == recorded.tasks["direct"].output
    assert "Asia/Tokyo" in replayed.tasks["ask"].output["text"]

    _project(mcp_project, servers)  # the real server is back, but the recording says another schema
    doc = json.loads(tape.read_text())
    for entry in doc["exchanges"].values():
        if entry.get("method") == "tools/list":
            for tool in entry["response"]["tools"]:
                if tool["name"] == "convert_time":
                    tool["inputSchema"]["properties"]["time_format"] = {"type": "string"}
    tape.write_text(json.dumps(doc))
    changed = goatclaw.run(path, llm="replay")
    error = changed.tasks["direct"].error or ""
    assert changed.tasks["direct"].error_class == "invalid_input"
    assert "tool 'convert_time'" in error and "parameter time_format removed" in error, error
    assert "tool 'convert_time'" in (changed.tasks["ask"].error or "")


# -- lifecycle -------------------------------------------------------------------------------------------


@needs_time
def test_a_cancelled_run_leaves_no_server_process(mcp_project, mark) -> None:
    path = write(mcp_project, """
        version: 1
        name: clock
        permissions: {mcp: [time], shell: [sleep]}
        tasks:
          now:
            uses: mcp
            with: {server: time, tool: get_current_time, arguments: {timezone: UTC}}
          wait:
            uses: shell
            needs: [now]
            with: {run: [sleep, "30"]}
        """)

    async def cancelled() -> list[int]:
        run = asyncio.ensure_future(goatclaw.arun(path))
        deadline = time.monotonic() + 60
        while not processes_with(mark) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        running = processes_with(mark)
        await asyncio.sleep(1.0)  # the mcp task is done, the sleep has started
        run.cancel()
        with pytest.raises((asyncio.CancelledError, goatclaw.errors.GoatclawError)):
            await run
        assert processes_with(mark) == []  # gone with the run, while the event loop goes on
        return running

    assert asyncio.run(cancelled()) != []  # the server did run


@needs_time
def test_a_server_starts_once_per_run_however_many_tasks_use_it(mcp_project, mark) -> None:
    path = write(mcp_project, """
        version: 1
        name: clock
        permissions: {mcp: [time]}
        tasks:
          a: {uses: mcp, with: {server: time, tool: get_current_time, arguments: {timezone: UTC}}}
          b: {uses: mcp, with: {server: time, tool: get_current_time, arguments: {timezone: Asia/Tokyo}}}
          c: {uses: mcp, needs: [a, b], with: {server: time, tool: get_current_time, arguments: {timezone: UTC}}}
        """)
    seen: set[int] = set()

    async def watched() -> Any:
        run = asyncio.ensure_future(goatclaw.arun(path))
        while not run.done():
            seen.update(p for p in processes_with(mark) if _is_python_server(p))
            await asyncio.sleep(0.02)
        assert processes_with(mark) == []  # stopped by the run, not by the event loop's end
        return run.result()

    result = asyncio.run(watched())
    assert result.ok, {t: r.error for t, r in result.tasks.items()}
    assert len(seen) == 1


def _is_python_server(pid: int) -> bool:
    try:
        return b"mcp_server_time" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


# -- goatclaw mcp tools ----------------------------------------------------------------------------------


@needs_time
def test_mcp_tools_lists_a_servers_tools_with_their_schemas(mcp_project) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["mcp", "tools", "time", "--json"])
    assert result.exit_code == 0, result.output
    tools = {t["name"]: t for t in json.loads(result.stdout)}
    assert set(tools) == {"get_current_time", "convert_time"}
    assert tools["get_current_time"]["inputSchema"]["required"] == ["timezone"]
    plain = runner.invoke(app, ["mcp", "tools", "time"])
    assert plain.exit_code == 0 and "get_current_time(timezone: string)" in plain.stdout
    unknown = runner.invoke(app, ["mcp", "tools", "nope"])
    assert unknown.exit_code == 2 and "no MCP server 'nope'" in unknown.stderr and "time" in unknown.stderr


def test_an_mcp_server_entry_with_both_command_and_url_is_refused_at_its_line(tmp_path, monkeypatch) -> None:
    (tmp_path / "goatclaw.yaml").write_text("version: 1\nmcp_servers:\n  both:\n    command: x\n    url: http://h/mcp\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["mcp", "tools", "both"])
    assert result.exit_code == 2
    assert "goatclaw.yaml:4:5:" in result.stderr and "mcp_servers.both" in result.stderr
    assert "use exactly one of them" in result.stderr


def test_validate_names_an_unknown_server_and_warns_of_tools_never_offered(mcp_project) -> None:
    path = write(mcp_project, """
        version: 1
        name: v
        permissions: {network: [127.0.0.1]}
        tasks:
          ask:
            uses: llm
            with:
              model: openai/gpt-4o-mini
              api_base: http://127.0.0.1:9/v1
              api_key: sk-test
              prompt: hi
              tools:
                - mcp: time
                - mcp: {server: nowhere}
        """)
    _, problems = goatclaw.check(path)
    shown = [(p.location.line if p.location else None, p.severity, p.message) for p in problems]
    assert any(line == 13 and sev == "warn" and "never offered" in msg and "'time'" in msg
               for line, sev, msg in shown), shown
    assert any(line == 14 and sev == "error" and "no MCP server 'nowhere'" in msg for line, sev, msg in shown), shown


@needs_time
def test_without_the_mcp_extra_the_task_names_the_extra_and_its_install_line(mcp_project) -> None:
    write(mcp_project, """
        version: 1
        name: clock
        permissions: {mcp: [time]}
        tasks:
          now: {uses: mcp, with: {server: time, tool: get_current_time, arguments: {timezone: UTC}}}
        """)
    code = ("import sys; sys.modules['mcp'] = None\n"  # the SDK absent, as in an install without the extra
            "from goatclaw.cli import main\nmain(['validate', 'p.yaml'])\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=mcp_project, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "'mcp' extra" in done.stderr and "[mcp]" in done.stderr and "Traceback" not in done.stderr


@needs_time
def test_ctrl_c_on_goatclaw_apply_stops_the_servers_too(mcp_project, mark) -> None:
    write(mcp_project, """
        version: 1
        name: clock
        permissions: {mcp: [time], shell: [sleep]}
        tasks:
          now: {uses: mcp, with: {server: time, tool: get_current_time, arguments: {timezone: UTC}}}
          wait: {uses: shell, needs: [now], with: {run: [sleep, "30"]}}
        """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    proc = subprocess.Popen([sys.executable, "-m", "goatclaw", "apply", "p.yaml", "--output", "plain"],
                            cwd=mcp_project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not processes_with(mark) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert processes_with(mark), "the server never started"
        time.sleep(1.5)  # the mcp task is done and the sleep runs
        proc.send_signal(2)  # SIGINT, as Ctrl-C sends it
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    deadline = time.monotonic() + 10
    while processes_with(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with(mark) == [], out


@needs_time
def test_a_server_that_dies_is_started_again_on_the_next_call(mcp_project, mark) -> None:
    from goatclaw.api import load_project_for, mcp_pool

    async def calls() -> tuple[str, str]:
        async with goatclaw.tools.mcp.using(mcp_pool(load_project_for(None))) as pool:
            first = await pool.call("time", "get_current_time", {"timezone": "UTC"})
            (pid,) = [p for p in processes_with(mark) if _is_python_server(p)]
            os.kill(pid, 9)
            deadline = time.monotonic() + 10
            while pid in processes_with(mark) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            with pytest.raises(goatclaw.errors.TaskError) as died:  # the call in flight when it died fails
                await pool.call("time", "get_current_time", {"timezone": "UTC"})
            second = await pool.call("time", "get_current_time", {"timezone": "Asia/Tokyo"})  # a retry: restarted
            return first["structured"]["timezone"] + "," + second["structured"]["timezone"], died.value.error_class

    zones, error_class = asyncio.run(calls())
    assert zones == "UTC,Asia/Tokyo" and error_class == "connection"  # retried by the default policy


@needs_everything
def test_a_secret_in_a_servers_env_is_masked_in_its_tool_result_before_the_model_reads_it(
        mcp_project, servers, srv, monkeypatch) -> None:
    env_server = {**servers["everything"], "env": {**servers["everything"]["env"],
                                                   "SERVICE_TOKEN": "${{ secrets.MCP_TOKEN }}"}}
    _project(mcp_project, {**servers, "everything": env_server})
    monkeypatch.setenv("MCP_TOKEN", TOKEN)
    monkeypatch.setenv("GOATCLAW_OWN_VARIABLE", "not-for-servers")
    srv.respond = agent(Reply(None, tool_calls=[tool_call("everything_get-env", {})]))
    path = llm_pipeline(mcp_project, srv, [{"mcp": {"server": "everything", "tools": ["get-env"]}}],
                        permissions=", mcp: [everything]")
    text = path.read_text().replace("name: mcp-agent\n", "name: mcp-agent\nsecrets: [MCP_TOKEN]\n")
    path.write_text(text)
    result = goatclaw.run(path)
    assert result.ok, result.tasks["ask"].error
    (answer,) = _tool_messages(srv.requests[1])
    assert "SERVICE_TOKEN" in answer["content"]  # the server did get it in its environment
    assert TOKEN not in json.dumps(srv.requests[1]) and "***" in answer["content"]
    assert "GOATCLAW_TEST_MARK" in answer["content"]  # its own env: given; goatclaw's environment: not
    assert "GOATCLAW_OWN_VARIABLE" not in answer["content"] and "not-for-servers" not in answer["content"]
