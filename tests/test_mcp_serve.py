"""``goatclaw mcp serve`` (issue #18): driven as a real subprocess by real MCP clients.

The clients are the official SDK's own (``mcp.Client`` over stdio and streamable HTTP) and the
MCP inspector's command line (``@modelcontextprotocol/inspector --cli``, from npm: ``.ci/run``
installs it under ``.ci/node``). Each test serves a scratch copy of the repository's project
(``goatclaw.yaml`` and ``pipelines/``), so runs and their files land there.
"""

from __future__ import annotations

import ast
import asyncio
import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client  # the mcp extra, in dev
from mcp.client.stdio import StdioServerParameters

REPO = Path(__file__).resolve().parent.parent
FIXED_TOOLS = {"list_pipelines", "validate", "plan", "apply", "runs_list", "runs_show", "memory_search"}
INSPECTORS = [REPO / ".ci" / "node" / "node_modules" / ".bin" / "mcp-inspector-cli",
              Path("/work/npm/node_modules/.bin/mcp-inspector-cli")]

SECRET_PIPELINE = """\
version: 1
name: secretive
secrets: [GC_MCP_TOKEN]
tasks:
  leak:
    uses: echo
    with: {value: "the token is ${{ secrets.GC_MCP_TOKEN }}"}
"""

OUTSIDE_PIPELINE = """\
version: 1
name: outside
tasks:
  hello:
    uses: echo
    with: {value: hi}
"""

# An invalid pipeline text: an unknown plugin (line 4, column 11) and an unknown field (line 5).
INVALID_TEXT = """\
version: 1
tasks:
  a:
    uses: no.such.plugin
    retries: 3
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A scratch copy of the repository's project: goatclaw.yaml and the shipped pipelines."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "goatclaw.yaml", root / "goatclaw.yaml")
    shutil.copytree(REPO / "pipelines", root / "pipelines")
    (root / "pipelines" / "secretive.yaml").write_text(SECRET_PIPELINE)
    (tmp_path / "outside.yaml").write_text(OUTSIDE_PIPELINE)  # a valid pipeline, next to the project folder
    (root / "pipelines" / "link.yaml").symlink_to(tmp_path / "outside.yaml")  # inside by name, outside in fact
    return root


def server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "GOATCLAW_STORE", "GOATCLAW_LLM")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["GC_MCP_TOKEN"] = "s3cr3t-t0ken-value"
    return env


def stdio(project: Path, *args: str) -> StdioServerParameters:
    """``goatclaw mcp serve ARGS`` started by the client, in the project folder."""
    return StdioServerParameters(command=sys.executable, args=["-m", "goatclaw", "mcp", "serve", *args],
                                 cwd=str(project), env=server_env())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_server(project: Path, tmp_path: Path) -> Iterator[str]:
    """``goatclaw mcp serve --http :PORT`` (so on 127.0.0.1) as a subprocess; its URL once it listens."""
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "goatclaw", "mcp", "serve", "--http", f":{port}",
                                 "--expose", "pipelines/quickstart.yaml"], cwd=project, env=server_env(),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"the server ended: {log.read_text()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the server never listened"
                time.sleep(0.1)
        assert f"at http://127.0.0.1:{port}/mcp" in log.read_text()  # no host given: this machine only
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def session(target: Any, calls: list[tuple[str, dict[str, Any]]]) -> tuple[Any, list[Any]]:
    """Connect to ``target``, list the tools, make each call in order; the tool list and the results."""
    async def go() -> tuple[Any, list[Any]]:
        async with Client(target, read_timeout_seconds=120) as client:
            tools = await client.list_tools()
            return tools, [await client.call_tool(name, arguments) for name, arguments in calls]
    return asyncio.run(go())


def text_of(result: Any) -> str:
    return "\n".join(block.text for block in result.content)


# --- the SDK's client over stdio -------------------------------------------------------------------------


def test_stdio_lists_the_tools_and_an_exposed_pipeline_with_its_vars(project: Path) -> None:
    tools, _ = session(stdio(project, "--expose", "pipelines/quickstart.yaml"), [])
    by_name = {t.name: t for t in tools.tools}
    assert set(by_name) == FIXED_TOOLS | {"run_quickstart"}
    params = by_name["run_quickstart"].input_schema["properties"]
    assert params["topics"]["type"] == "array" and params["topics"]["default"] == ["python", "rust", "go"]
    assert params["report"] == {"default": "out/quickstart.md", "title": "Report", "type": "string"}
    assert by_name["apply"].input_schema["required"] == ["path"]
    assert by_name["validate"].annotations.read_only_hint is True


def test_list_pipelines_names_the_project_files(project: Path) -> None:
    elsewhere = StdioServerParameters(command=sys.executable, cwd=str(project.parent), env=server_env(),
                                      args=["-m", "goatclaw", "mcp", "serve", "--project", str(project)])
    _, [listed] = session(elsewhere, [("list_pipelines", {})])
    assert listed.structured_content["root"] == str(project.resolve())
    rows = {r["path"]: r for r in listed.structured_content["pipelines"]}
    assert rows["pipelines/quickstart.yaml"]["name"] == "quickstart"
    assert "pipelines/quickstart.test.yaml" not in rows and "goatclaw.yaml" not in rows
    assert "pipelines/link.yaml" not in rows  # a symlink out of the folder is not read


def test_validate_a_yaml_text_gives_located_problems(project: Path) -> None:
    _, [checked, good, broken, neither] = session(stdio(project), [
        ("validate", {"text": INVALID_TEXT}), ("validate", {"path": "pipelines/quickstart.yaml"}),
        ("validate", {"text": "version: 1\ntasks:\n  a: {uses: echo\n"}), ("validate", {})])
    assert checked.is_error is False  # an invalid pipeline is an answer, not a failed call
    data = checked.structured_content
    assert data["valid"] is False
    where = {(p["line"], p["column"], p["path"]) for p in data["problems"]}
    assert (4, 11, "tasks.a.uses") in where, data
    assert any(p["line"] == 5 and "retries" in p["text"] for p in data["problems"]), data
    assert all(p["file"] == "<text>" for p in data["problems"])
    assert good.structured_content == {"file": "pipelines/quickstart.yaml", "valid": True, "problems": []}
    [syntax] = broken.structured_content["problems"]  # not YAML at all: still located
    assert syntax["file"] == "<text>" and syntax["line"] in (3, 4) and syntax["column"] >= 1, syntax
    assert neither.is_error is True and "exactly one of 'path' and 'text'" in text_of(neither)


def test_plan_gives_the_graph_permissions_and_cost(project: Path) -> None:
    _, [planned] = session(stdio(project), [("plan", {"path": "pipelines/quickstart.yaml"})])
    data = planned.structured_content
    assert data["levels"] == [["catalog"], ["profile", "words"], ["oldest", "statically_typed"], ["report"]]
    assert data["tasks"]["report"]["needs"] == ["profile", "words", "oldest", "statically_typed"]
    assert {row["task"] for row in data["permissions"]} >= {"catalog", "words", "report"}
    assert data["cost"]["tasks"] == [] and data["cost"]["total_usd"] == 0


def test_apply_runs_the_quickstart_and_the_run_reads_back(project: Path) -> None:
    calls = [("apply", {"path": "pipelines/quickstart.yaml", "vars": {"topics": ["go", "haskell"]}}),
             ("runs_list", {}), ("runs_show", {"run": "last"})]
    _, [applied, listed, shown] = session(stdio(project), calls)
    run = applied.structured_content
    assert applied.is_error is False and run["ok"] is True and run["status"] == "succeeded", text_of(applied)
    assert [p["name"] for p in run["tasks"]["profile"]["output"]] == ["go", "haskell"]
    assert "Run " + run["run_id"] in (project / "out" / "quickstart.md").read_text()
    # task outputs are marked untrusted: in _meta, in the data and in words
    assert (applied.meta or {}).get("goatclaw/untrusted") is True and run["untrusted"] is True
    assert "untrusted" in applied.content[0].text
    assert [r["id"] for r in listed.structured_content["runs"]] == [run["run_id"]]
    stored = shown.structured_content
    assert stored["run"]["id"] == run["run_id"] and stored["run"]["vars"]["topics"] == ["go", "haskell"]
    assert stored["tasks"]["oldest"]["output"] == 1990  # haskell (1990) is older than go (2009)
    assert (shown.meta or {}).get("goatclaw/untrusted") is True


def test_apply_masks_the_secrets_in_outputs(project: Path) -> None:
    _, [applied, shown] = session(stdio(project), [("apply", {"path": "pipelines/secretive.yaml"}),
                                                   ("runs_show", {})])
    assert applied.structured_content["ok"] is True, text_of(applied)
    for result in (applied, shown):
        assert "s3cr3t-t0ken-value" not in text_of(result) + json.dumps(result.structured_content)
    assert "the token is " in applied.structured_content["tasks"]["leak"]["output"]


@pytest.mark.parametrize("path", ["../outside.yaml", "{outside}", "pipelines/link.yaml",
                                  "pipelines/../../outside.yaml"])
def test_a_path_outside_the_project_is_refused(project: Path, path: str) -> None:
    path = path.format(outside=project.parent / "outside.yaml")
    _, results = session(stdio(project), [("apply", {"path": path}), ("plan", {"path": path}),
                                          ("validate", {"path": path}), ("runs_list", {})])
    for refused in results[:3]:
        assert refused.is_error is True
        assert "outside the project folder" in text_of(refused), text_of(refused)
    assert results[3].is_error is True and "no store" in text_of(results[3])  # nothing ran
    assert not (project / ".goatclaw").exists()


def test_a_failed_run_is_an_error_result_with_the_run(project: Path) -> None:
    (project / "pipelines" / "fails.yaml").write_text(
        "version: 1\nname: fails\npermissions: {files: {read: [data/]}}\n"
        "tasks:\n  missing:\n    uses: file.read\n    with: {path: data/no-such-file.txt}\n")
    _, [failed] = session(stdio(project), [("apply", {"path": "pipelines/fails.yaml"})])
    assert failed.is_error is True
    run = failed.structured_content
    assert run["ok"] is False and run["status"] == "failed"
    assert run["tasks"]["missing"]["error_class"] == "invalid_input"


def test_apply_refuses_a_var_the_pipeline_does_not_declare(project: Path) -> None:
    _, [refused] = session(stdio(project), [("apply", {"path": "pipelines/quickstart.yaml",
                                                       "vars": {"permissions": {"shell": True}}})])
    assert refused.is_error is True
    assert "'permissions' not declared in pipelines/quickstart.yaml (its vars: topics, report)" in text_of(refused)


def test_an_exposed_pipeline_runs_with_its_vars_as_arguments(project: Path) -> None:
    _, [ran] = session(stdio(project, "--expose", "pipelines/quickstart.yaml"),
                       [("run_quickstart", {"topics": ["rust"], "report": "out/rust.md"})])
    assert ran.structured_content["ok"] is True, text_of(ran)
    assert "**rust**" in (project / "out" / "rust.md").read_text()


def test_a_var_cannot_widen_the_pipelines_permissions(project: Path) -> None:
    _, [ran] = session(stdio(project, "--expose", "pipelines/quickstart.yaml"),
                       [("run_quickstart", {"report": "../escaped.md"})])
    assert ran.is_error is True and ran.structured_content["tasks"]["report"]["status"] == "failed", text_of(ran)
    assert ran.structured_content["tasks"]["report"]["error_class"] == "permission_denied"
    assert not (project.parent / "escaped.md").exists()


@pytest.mark.parametrize(("file", "said"), [("../outside.yaml", "outside the project folder"),
                                             ("pipelines/broken.yaml", "broken.yaml:4:11: tasks.a.uses: unknown task")])
def test_exposing_a_file_outside_the_project_or_invalid_is_a_usage_error(project: Path, file: str, said: str) -> None:
    (project / "pipelines" / "broken.yaml").write_text(INVALID_TEXT)
    done = subprocess.run([sys.executable, "-m", "goatclaw", "mcp", "serve", "--expose", file],
                          cwd=project, env=server_env(), capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr
    assert said in done.stderr and "Traceback" not in done.stderr


# an interpreter whose import system lacks some modules, as an install without an extra (tests/test_extras.py)
BLOCKING = textwrap.dedent("""
    import sys
    for name in sys.argv.pop(1).split(","):
        sys.modules[name] = None
    from goatclaw.cli import main
    main(sys.argv[1:])
""")


def test_memory_search_without_the_extra_is_a_clear_tool_error(project: Path) -> None:
    server = StdioServerParameters(command=sys.executable, args=["-c", BLOCKING, "numpy,wordllama", "mcp", "serve"],
                                   cwd=str(project), env=server_env())
    _, [applied, searched] = session(server, [("apply", {"path": "pipelines/quickstart.yaml"}),
                                              ("memory_search", {"query": "languages"})])
    assert applied.structured_content["ok"] is True  # the store exists: only the extra is missing
    assert searched.is_error is True
    assert "the tool 'memory_search' needs the 'memory' extra (numpy is not installed): pip install" \
        in text_of(searched)


def test_memory_search_finds_the_run(project: Path) -> None:
    with (project / "goatclaw.yaml").open("a") as f:
        f.write("memory: {remember: {runs: true}}\n")  # a run that went well is remembered too
    _, [_, searched] = session(stdio(project), [("apply", {"path": "pipelines/quickstart.yaml"}),
                                                ("memory_search", {"query": "quickstart run", "k": 3})])
    assert searched.is_error is False, text_of(searched)
    assert searched.structured_content["hits"], "the run was remembered"
    assert (searched.meta or {}).get("goatclaw/untrusted") is True


def test_serve_without_the_mcp_extra_says_so(project: Path) -> None:
    done = subprocess.run([sys.executable, "-c", BLOCKING, "mcp", "mcp", "serve"], cwd=project, env=server_env(),
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stderr
    assert "needs the 'mcp' extra (mcp is not installed): pip install" in done.stderr
    assert "Traceback" not in done.stderr


# --- the SDK's client over streamable HTTP ---------------------------------------------------------------


def test_http_serves_the_same_tools_and_runs(project: Path, http_server: str) -> None:
    tools, [applied, shown] = session(http_server, [
        ("apply", {"path": "pipelines/quickstart.yaml"}), ("runs_show", {})])
    assert {t.name for t in tools.tools} == FIXED_TOOLS | {"run_quickstart"}
    assert applied.structured_content["ok"] is True, text_of(applied)
    assert shown.structured_content["run"]["id"] == applied.structured_content["run_id"]
    _, [refused] = session(http_server, [("apply", {"path": "../outside.yaml"})])
    assert refused.is_error is True and "outside the project folder" in text_of(refused)


def test_http_binds_to_loopback_by_default() -> None:
    from goatclaw.cli.mcp_serve import parse_http

    assert parse_http(":8123") == "127.0.0.1:8123" and parse_http("8123") == "127.0.0.1:8123"
    assert parse_http("0.0.0.0:80") == "0.0.0.0:80"


# --- the MCP inspector's command line (npm) ---------------------------------------------------------------


def inspector() -> Path:
    found = next((p for p in INSPECTORS if p.exists()), None)
    if found is None or shutil.which("node") is None:
        if os.environ.get("CI"):  # .ci/run installs it: missing there is a failure, not a skip
            pytest.fail("the MCP inspector is not installed under .ci/node (see .ci/run)")
        pytest.skip("the MCP inspector is not installed (.ci/run installs it under .ci/node)")
    return found


def inspect_cli(project: Path, *args: str) -> Any:
    done = subprocess.run([str(inspector()), "--cli", *args], cwd=project, env=server_env(), capture_output=True,
                          text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_the_inspector_lists_and_calls_tools_over_stdio(project: Path) -> None:
    server = [sys.executable, "-m", "goatclaw", "mcp", "serve"]
    listed = inspect_cli(project, *server, "--method", "tools/list")
    assert {t["name"] for t in listed["tools"]} == FIXED_TOOLS
    called = inspect_cli(project, *server, "--method", "tools/call", "--tool-name", "validate",
                         "--tool-arg", "path=pipelines/quickstart.yaml")
    assert called["isError"] is False and called["structuredContent"]["valid"] is True


def test_the_inspector_calls_a_tool_over_http(project: Path, http_server: str) -> None:
    listed = inspect_cli(project, http_server, "--method", "tools/list")
    assert "run_quickstart" in {t["name"] for t in listed["tools"]}
    called = inspect_cli(project, http_server, "--method", "tools/call", "--tool-name", "plan",
                         "--tool-arg", "path=pipelines/quickstart.yaml")
    assert called["structuredContent"]["levels"][0] == ["catalog"]


# --- the room's borders -----------------------------------------------------------------------------------


_COLLECTED: list[bool] = []


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    # Finalizers of objects earlier tests left behind (a leaked client socket warns when collected)
    # must not run inside CPython 3.11's AST constructor: it then fails with "AST constructor
    # recursion depth mismatch". Collect first (once: a full collection of the suite's heap is
    # slow, and Dask's gc callback measures each one), and parse with the collector off.
    if not _COLLECTED:
        gc.collect()
        _COLLECTED.append(True)
    gc.disable()
    try:
        tree = ast.parse(path.read_text())
    finally:
        gc.enable()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_server_room_stays_over_the_public_api() -> None:
    room = {p: _imports(p) for p in (REPO / "goatclaw" / "server").rglob("*.py")}
    wrong = sorted(f"{p.name}: {m}" for p, mods in room.items() for m in mods
                   if m.startswith(("goatclaw.engine", "goatclaw.cli", "goatclaw.spec")))
    assert wrong == []
    users = {p.relative_to(REPO).as_posix() for p in (REPO / "goatclaw").rglob("*.py")
             if any(m == "mcp.server" or m.startswith("mcp.server.") for m in _imports(p))}
    assert users == {"goatclaw/server/mcp.py"}
