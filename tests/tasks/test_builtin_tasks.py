"""The built-in task plugins, called directly with a real TaskContext.

No mocks: real subprocesses, real files under tmp_path and a real HTTP server on
127.0.0.1. The module-level limits of the plugins are lowered with monkeypatch where a
test would otherwise wait for the production grace periods.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
from local_http import serving

from goatclaw.errors import TaskError
from goatclaw.plugin import TaskContext, spec_of
from goatclaw.registry import BUILTIN_TASKS, Registry
from goatclaw.security.permissions import Grant
from goatclaw.tasks import files
from goatclaw.tasks import shell as shell_module
from goatclaw.tasks.files import list_files, read, write
from goatclaw.tasks.http import http
from goatclaw.tasks.python import python
from goatclaw.tasks.shell import shell

T = TypeVar("T")


# -- helpers and fixtures ------------------------------------------------------------


def run(awaitable: Awaitable[T]) -> T:
    """Run one coroutine to completion (no pytest-asyncio here)."""
    async def main() -> T:
        return await awaitable
    return asyncio.run(main())


def fails(fn: Callable[[], Any], error_class: str) -> TaskError:
    """Call ``fn`` (sync, or returning a coroutine) and return the TaskError it must raise."""
    with pytest.raises(TaskError) as info:
        result = fn()
        if asyncio.iscoroutine(result):
            run(result)
    assert info.value.error_class == error_class, info.value.message
    return info.value


def is_dead(pid: int, within: float = 3.0) -> bool:
    """Whether ``pid`` is gone (or a zombie nobody has reaped yet) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if _is_zombie(pid):
            return True
        time.sleep(0.02)
    return False


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture
def ctx(tmp_path: Path) -> TaskContext:
    """A context whose workspace is a fresh directory (tmp_path/ws), with room outside it."""
    ws = tmp_path / "ws"
    ws.mkdir()
    return TaskContext(run_id="r", task_id="t", workspace=ws, permissions=Grant.everything(ws))


@pytest.fixture
def fast_kill(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shorter grace periods so that tests of the kill path take a fraction of a second."""
    monkeypatch.setattr(shell_module, "KILL_GRACE_SECONDS", 0.3)
    monkeypatch.setattr(shell_module, "PIPE_GRACE_SECONDS", 0.3)


# -- the contract --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BUILTIN_TASKS))
def test_every_builtin_loads_through_the_registry_with_a_docstring(name: str) -> None:
    plugin = Registry(entry_points=False).task(name)
    assert plugin.doc, f"{name} has no docstring"


def test_declared_specs() -> None:
    assert spec_of(shell).permissions == ("shell",) and spec_of(shell).side_effects and not spec_of(shell).cacheable
    assert spec_of(python).permissions == ("python",) and not spec_of(python).cacheable
    assert spec_of(http).permissions == ("network",) and not spec_of(http).cacheable
    assert not spec_of(read).cacheable  # its output follows the file, which the cache key cannot see
    assert spec_of(write).side_effects and not spec_of(write).cacheable
    assert not spec_of(list_files).cacheable


# -- shell ---------------------------------------------------------------------------


def test_shell_run_executes_argv_without_a_shell(ctx: TaskContext) -> None:
    out = run(shell(ctx, run=["printf", "%s|%s", "$(echo injected); ls", 42]))
    assert out == {"exit_code": 0, "stdout": "$(echo injected); ls|42", "stderr": ""}


def test_shell_script_reads_values_from_env_layers(ctx: TaskContext) -> None:
    ctx.env = {"FROM_TASK": "task", "BOTH": "task"}
    out = run(shell(ctx, script='printf "%s,%s,%s,%s" "$WORD" "$FROM_TASK" "$BOTH" "${HOME:+home}"',
                    env={"WORD": "a b; rm -rf /", "BOTH": "with"}))
    assert out["stdout"] == "a b; rm -rf /,task,with,home"


def test_shell_cwd_and_stdin(ctx: TaskContext) -> None:
    (ctx.workspace / "sub").mkdir()
    assert run(shell(ctx, run=["pwd"], cwd="sub"))["stdout"].strip() == str((ctx.workspace / "sub").resolve())
    assert run(shell(ctx, run=["cat"], input="fed through stdin"))["stdout"] == "fed through stdin"
    assert run(shell(ctx, run=["cat"]))["stdout"] == ""  # no input: stdin is empty, never the terminal


def test_shell_cwd_outside_the_workspace_is_refused(ctx: TaskContext) -> None:
    fails(lambda: shell(ctx, run=["pwd"], cwd=".."), "permission_denied")
    assert "not a directory" in fails(lambda: shell(ctx, run=["pwd"], cwd="nope"), "invalid_input").message


def test_shell_nonzero_exit_fails_with_code_and_stderr(ctx: TaskContext) -> None:
    err = fails(lambda: shell(ctx, script="echo 'disk is full' >&2; exit 3"), "internal")
    assert "exited with code 3" in err.message and "disk is full" in err.message
    assert err.details["exit_code"] == 3 and "disk is full" in err.details["stderr"]
    out = run(shell(ctx, script="echo out; exit 3", check=False))
    assert out == {"exit_code": 3, "stdout": "out\n", "stderr": ""}


def test_shell_bad_arguments_are_invalid_input(ctx: TaskContext) -> None:
    missing = fails(lambda: shell(ctx, run=["goatclaw-no-such-program-x"]), "invalid_input")
    assert "goatclaw-no-such-program-x" in missing.message and "not found" in missing.message
    fails(lambda: shell(ctx), "invalid_input")
    fails(lambda: shell(ctx, run=["true"], script="true"), "invalid_input")
    fails(lambda: shell(ctx, run="echo hi"), "invalid_input")  # type: ignore[arg-type]
    fails(lambda: shell(ctx, run=["echo", ["nested"]]), "invalid_input")  # type: ignore[list-item]
    fails(lambda: shell(ctx, script="true", shell="goatclaw-no-such-shell"), "invalid_input")
    fails(lambda: shell(ctx, script="true", timeout="10s"), "invalid_input")  # type: ignore[arg-type]


def test_shell_output_is_capped_with_a_note(ctx: TaskContext, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shell_module, "MAX_OUTPUT_BYTES", 1000)
    out = run(shell(ctx, run=[sys.executable, "-c", "import sys; sys.stdout.write('x' * 5000)"]))
    kept, note = out["stdout"].split("\n", 1)
    assert kept == "x" * 1000 and "truncated" in note and "4,000 more bytes" in note


def test_shell_output_is_decoded_leniently(ctx: TaskContext) -> None:
    out = run(shell(ctx, run=[sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'ok \\xff')"]))
    assert out["stdout"] == "ok \ufffd"


def test_shell_cancellation_kills_the_whole_process_tree(ctx: TaskContext, fast_kill: None) -> None:
    pid_file = ctx.workspace / "grandchild.pid"
    # The grandchild ignores SIGTERM, so only the SIGKILL that follows the grace period ends it.
    script = "(trap '' TERM; exec sleep 30) & echo $! > grandchild.pid; wait"

    async def main() -> None:
        job = asyncio.create_task(shell(ctx, script=script))
        while not pid_file.exists() or not pid_file.read_text().strip():
            await asyncio.sleep(0.02)
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job

    asyncio.run(main())
    assert is_dead(int(pid_file.read_text()))


def test_shell_timeout_kills_the_tree_and_fails_with_timeout(ctx: TaskContext, fast_kill: None) -> None:
    started = time.monotonic()
    err = fails(lambda: shell(ctx, script="sleep 30 & echo $! > child.pid; wait", timeout=0.5), "timeout")
    assert "timed out after 0.5s" in err.message and time.monotonic() - started < 3
    assert is_dead(int((ctx.workspace / "child.pid").read_text()))


def test_shell_does_not_hang_on_background_children_holding_the_pipes(ctx: TaskContext, fast_kill: None) -> None:
    started = time.monotonic()
    out = run(shell(ctx, script="sleep 30 & echo $!"))
    assert time.monotonic() - started < 3
    assert is_dead(int(out["stdout"]))


# -- python --------------------------------------------------------------------------


def _module(ctx: TaskContext, source: str) -> str:
    """Write a uniquely named module into the workspace and return its name."""
    name = f"gc_steps_{uuid.uuid4().hex[:8]}"
    (ctx.workspace / f"{name}.py").write_text(source)
    return name


def test_python_calls_an_importable_function(ctx: TaskContext) -> None:
    assert run(python(ctx, function="json:dumps", args=[{"a": 1}], kwargs={"sort_keys": True})) == '{"a": 1}'
    assert run(python(ctx, function="os.path:join", args=["a", "b"])) == "a/b"


def test_python_finds_workspace_modules_and_awaits_async_functions(ctx: TaskContext) -> None:
    name = _module(ctx, "import asyncio, threading\n"
                        "async def twice(x):\n    await asyncio.sleep(0)\n    return {'x': x * 2}\n"
                        "def where():\n    return threading.current_thread() is threading.main_thread()\n"
                        "class Box:\n    @staticmethod\n    def pair(a, b):\n        return (a, b)\n")
    assert run(python(ctx, function=f"{name}:twice", args=[21])) == {"x": 42}
    assert run(python(ctx, function=f"{name}:where")) is False  # a plain function runs in a thread
    assert run(python(ctx, function=f"{name}:Box.pair", kwargs={"a": 1, "b": "2"})) == [1, "2"]
    assert str(ctx.workspace.resolve()) not in sys.path  # only put there for the import


def test_python_modules_of_one_name_in_two_workspaces_and_an_edited_module(tmp_path: Path) -> None:
    import os

    name = f"gc_same_{uuid.uuid4().hex[:8]}"
    contexts = []
    for n in (1, 2):
        ws = tmp_path / f"ws{n}"
        ws.mkdir()
        (ws / f"{name}.py").write_text(f"def which():\n    return {n}\n")
        contexts.append(TaskContext(run_id="r", task_id="t", workspace=ws, permissions=Grant.everything(ws)))
    first, second = contexts
    assert run(python(first, function=f"{name}:which")) == 1
    assert run(python(second, function=f"{name}:which")) == 2  # its own module, not the first one's
    assert run(python(first, function=f"{name}:which")) == 1
    source = first.workspace / f"{name}.py"
    source.write_text("def which():\n    return 'edited'\n")
    later = source.stat().st_mtime_ns + 2_000_000_000  # a later second, as an editor's save would be
    os.utime(source, ns=(later, later))
    assert run(python(first, function=f"{name}:which")) == "edited"  # goatclaw watch sees the new code


def test_python_bad_references_are_invalid_input(ctx: TaskContext) -> None:
    assert "module:name" in fails(lambda: python(ctx, function="json.dumps"), "invalid_input").message
    assert "no attribute" in fails(lambda: python(ctx, function="json:nope"), "invalid_input").message
    missing = fails(lambda: python(ctx, function="goatclaw_no_such_module:f"), "invalid_input")
    assert "no module named 'goatclaw_no_such_module'" in missing.message
    assert "not something that can be called" in fails(lambda: python(ctx, function="math:pi"),
                                                       "invalid_input").message
    broken = _module(ctx, "import goatclaw_no_such_dependency\n")
    err = fails(lambda: python(ctx, function=f"{broken}:f"), "invalid_input")
    assert "importing its module failed" in err.message and "goatclaw_no_such_dependency" in err.message
    fails(lambda: python(ctx, function="json:dumps", args="x"), "invalid_input")  # type: ignore[arg-type]


def test_python_result_must_be_json(ctx: TaskContext) -> None:
    assert "not JSON" in fails(lambda: python(ctx, function="builtins:set", args=[[1]]), "invalid_output").message
    fails(lambda: python(ctx, function="builtins:float", args=["nan"]), "invalid_output")


def test_python_errors_from_the_function_propagate(ctx: TaskContext) -> None:
    with pytest.raises(ValueError, match="invalid literal"):
        run(python(ctx, function="builtins:int", args=["ten"]))


# -- files ---------------------------------------------------------------------------


def test_write_then_read_text_lines_and_append(ctx: TaskContext) -> None:
    assert write(ctx, path="out/notes.txt", content="one\ntwo\n") == {"path": "out/notes.txt", "bytes": 8}
    assert write(ctx, path="out/notes.txt", content="thrée\n", mode="append") == {"path": "out/notes.txt",
                                                                                  "bytes": 7}
    assert read(ctx, path="out/notes.txt") == "one\ntwo\nthrée\n"
    assert read(ctx, path="out/notes.txt", format="lines") == ["one", "two", "thrée"]
    assert read(ctx, path="./out/../out/notes.txt", format="lines")[0] == "one"


def test_write_json_and_read_it_back(ctx: TaskContext) -> None:
    data = {"name": "goat", "scores": [1, 2.5], "ok": True, "none": None}
    out = write(ctx, path="data.json", content=data, format="json")
    assert out["bytes"] == (ctx.workspace / "data.json").stat().st_size
    assert read(ctx, path="data.json", format="json") == data
    write(ctx, path="log.jsonl", content={"n": 1}, format="json", mode="append")
    write(ctx, path="log.jsonl", content={"n": 2}, format="json", mode="append")
    assert read(ctx, path="log.jsonl", format="lines") == ['{"n": 1}', '{"n": 2}']


def test_write_is_atomic_and_keeps_the_mode(ctx: TaskContext) -> None:
    target = ctx.workspace / "script.sh"
    target.write_text("old")
    target.chmod(0o750)
    write(ctx, path="script.sh", content="new")
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o750
    assert sorted(p.name for p in ctx.workspace.iterdir()) == ["script.sh"]  # no temporary file left


def test_write_refuses_bad_content_and_missing_dirs(ctx: TaskContext) -> None:
    assert "format: json" in fails(lambda: write(ctx, path="a.txt", content={"a": 1}), "invalid_input").message
    fails(lambda: write(ctx, path="a.json", content={"x": float("inf")}, format="json"), "invalid_input")
    fails(lambda: write(ctx, path="new/a.txt", content="x", mkdir=False), "invalid_input")
    fails(lambda: write(ctx, path="a.txt", content="x", format="xml"), "invalid_input")  # type: ignore[arg-type]
    (ctx.workspace / "adir").mkdir()
    fails(lambda: write(ctx, path="adir", content="x"), "invalid_input")
    assert not (ctx.workspace / "a.txt").exists() and not (ctx.workspace / "new").exists()


def test_read_json_rejects_nan_and_infinity(ctx: TaskContext) -> None:
    (ctx.workspace / "bad.json").write_text('{"confidence": Infinity}')
    assert "Infinity" in fails(lambda: read(ctx, path="bad.json", format="json"), "invalid_input").message


def test_read_json_refuses_duplicate_keys_like_the_yaml_loader(ctx: TaskContext) -> None:
    (ctx.workspace / "dup.json").write_text('{"a": {"ok": true, "ok": false}, "b": 1}')
    error = fails(lambda: read(ctx, path="dup.json", format="json"), "invalid_input")
    assert "duplicate key \"ok\"" in error.message and "dup.json" in error.message
    (ctx.workspace / "same.json").write_text('[{"ok": 1}, {"ok": 2}]')  # one key in two objects is fine
    assert read(ctx, path="same.json", format="json") == [{"ok": 1}, {"ok": 2}]
    (ctx.workspace / "broken.json").write_text('{"a": ')
    fails(lambda: read(ctx, path="broken.json", format="json"), "invalid_input")


def test_read_yaml_uses_the_safe_loader(ctx: TaskContext) -> None:
    (ctx.workspace / "a.yaml").write_text("no: 1\nlist: [a, 2]\nwhen: 2024-01-01\n")
    assert read(ctx, path="a.yaml", format="yaml") == {"no": 1, "list": ["a", 2], "when": "2024-01-01"}
    (ctx.workspace / "dup.yaml").write_text("a: 1\na: 2\n")
    assert "duplicate key" in fails(lambda: read(ctx, path="dup.yaml", format="yaml"), "invalid_input").message
    (ctx.workspace / "tag.yaml").write_text("a: !!python/object:os.system ls\n")
    fails(lambda: read(ctx, path="tag.yaml", format="yaml"), "invalid_input")


def test_read_missing_and_oversized_files(ctx: TaskContext, monkeypatch: pytest.MonkeyPatch) -> None:
    err = fails(lambda: read(ctx, path="nope/missing.txt"), "invalid_input")
    assert "nope/missing.txt" in err.message
    fails(lambda: read(ctx, path="."), "invalid_input")
    (ctx.workspace / "big.txt").write_text("x" * 100)
    monkeypatch.setattr(files, "MAX_READ_BYTES", 10)
    assert "over the limit" in fails(lambda: read(ctx, path="big.txt"), "invalid_input").message
    (ctx.workspace / "latin.txt").write_bytes(b"caf\xe9")
    monkeypatch.setattr(files, "MAX_READ_BYTES", 1000)
    fails(lambda: read(ctx, path="latin.txt"), "invalid_input")
    assert read(ctx, path="latin.txt", encoding="latin-1") == "café"


def test_paths_outside_the_workspace_are_refused(ctx: TaskContext) -> None:
    outside = ctx.workspace.parent / "secret.txt"
    outside.write_text("top secret")
    (ctx.workspace / "link.txt").symlink_to(outside)
    (ctx.workspace / "linkdir").symlink_to(ctx.workspace.parent)
    for path in ("../secret.txt", str(outside), "link.txt", "linkdir/secret.txt", "sub/../../secret.txt"):
        fails(lambda p=path: read(ctx, path=p), "permission_denied")
        fails(lambda p=path: write(ctx, path=p, content="pwned"), "permission_denied")
    fails(lambda: list_files(ctx, path=".."), "permission_denied")
    fails(lambda: list_files(ctx, pattern="../*"), "permission_denied")
    fails(lambda: list_files(ctx, path="linkdir"), "permission_denied")
    assert outside.read_text() == "top secret"


def test_list_files(ctx: TaskContext) -> None:
    for name in ("b.md", "a.md", "c.txt", "docs/x.md", "docs/deep/y.md"):
        (ctx.workspace / name).parent.mkdir(parents=True, exist_ok=True)
        (ctx.workspace / name).write_text(name)
    (ctx.workspace / "dir.md").mkdir()
    (ctx.workspace.parent / "outside.md").write_text("no")
    (ctx.workspace / "escape.md").symlink_to(ctx.workspace.parent / "outside.md")
    assert list_files(ctx, pattern="*.md") == ["a.md", "b.md"]
    assert list_files(ctx) == ["a.md", "b.md", "c.txt"]
    assert list_files(ctx, pattern="*.md", recursive=True) == ["a.md", "b.md", "docs/deep/y.md", "docs/x.md"]
    assert list_files(ctx, pattern="*.md", files_only=False) == ["a.md", "b.md", "dir.md"]
    assert list_files(ctx, path="docs", pattern="*.md", recursive=True) == ["docs/deep/y.md", "docs/x.md"]
    fails(lambda: list_files(ctx, path="missing"), "invalid_input")


# -- http ----------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """Routes by path to the responses the tests need."""

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        retry_date = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
        routes: dict[str, tuple[int, dict[str, str], bytes]] = {
            "/json": (200, {"Content-Type": "application/json"}, b'{"ok": true, "n": [1, 2]}'),
            "/text": (200, {"Content-Type": "text/plain; charset=utf-8"}, "héllo".encode()),
            "/nan": (200, {"Content-Type": "application/json"}, b'{"confidence": NaN}'),
            "/429": (429, {"Retry-After": "2"}, b"slow down"),
            "/429-date": (429, {"Retry-After": retry_date}, b""),
            "/503": (503, {"Retry-After": "7"}, b"maintenance"),
            "/500": (500, {}, b"boom"),
            "/401": (401, {}, b"who are you"),
            "/403": (403, {}, b"no"),
            "/404": (404, {}, b"not here"),
            "/created": (201, {}, b""),
            "/redirect": (302, {"Location": "/json"}, b""),
        }
        if self.path == "/slow":
            time.sleep(1.5)
        status, headers, body = routes.get(self.path.split("?")[0], (200, {}, self.path.encode()))
        self._reply(status, headers, body)

    def do_POST(self) -> None:
        data = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        echo = {"method": self.command, "path": self.path, "body": data,
                "content_type": self.headers.get("Content-Type"), "x_token": self.headers.get("X-Token")}
        self._reply(200, {"Content-Type": "application/json"}, json.dumps(echo).encode())

    do_PUT = do_POST

    def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up (the /slow test) is expected, not news


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 (a free port), serving :class:`_Handler`; yields its base URL."""
    with serving(_Handler, _QuietServer) as url:
        yield url


def test_http_get_json_and_text(ctx: TaskContext, server: str) -> None:
    out = run(http(ctx, url=f"{server}/json"))
    assert out["status"] == 200 and out["body"] == {"ok": True, "n": [1, 2]} and out["url"] == f"{server}/json"
    assert out["headers"]["content-type"] == "application/json"
    assert run(http(ctx, url=f"{server}/text"))["body"] == "héllo"
    assert run(http(ctx, url=f"{server}/json", response="text"))["body"] == '{"ok": true, "n": [1, 2]}'
    assert run(http(ctx, url=f"{server}/echo", params={"q": "a b", "n": 2}))["body"] == "/echo?q=a+b&n=2"


def test_http_sends_json_and_text_bodies(ctx: TaskContext, server: str) -> None:
    out = run(http(ctx, url=f"{server}/post", method="post", json={"a": [1]}, headers={"X-Token": "t0k"}))
    assert out["body"]["method"] == "POST" and json.loads(out["body"]["body"]) == {"a": [1]}
    assert out["body"]["content_type"] == "application/json" and out["body"]["x_token"] == "t0k"
    assert run(http(ctx, url=f"{server}/put", method="PUT", body="plain"))["body"]["body"] == "plain"
    fails(lambda: http(ctx, url=f"{server}/post", method="POST", json={}, body="x"), "invalid_input")


def test_http_redirects_and_expected_statuses(ctx: TaskContext, server: str) -> None:
    followed = run(http(ctx, url=f"{server}/redirect"))
    assert followed["status"] == 200 and followed["url"] == f"{server}/json"
    fails(lambda: http(ctx, url=f"{server}/redirect", follow_redirects=False), "upstream")
    assert run(http(ctx, url=f"{server}/redirect", follow_redirects=False, expect=[302]))["status"] == 302
    assert run(http(ctx, url=f"{server}/404", expect=404))["body"] == "not here"
    assert run(http(ctx, url=f"{server}/created"))["status"] == 201
    fails(lambda: http(ctx, url=f"{server}/json", expect=[404]), "upstream")


def test_http_rate_limit_carries_retry_after(ctx: TaskContext, server: str) -> None:
    err = fails(lambda: http(ctx, url=f"{server}/429"), "rate_limit")
    assert err.retry_after == 2 and "429" in err.message and "slow down" in err.message
    dated = fails(lambda: http(ctx, url=f"{server}/429-date"), "rate_limit")
    assert dated.retry_after is not None and 25 < dated.retry_after <= 30


def test_http_status_classes(ctx: TaskContext, server: str) -> None:
    unavailable = fails(lambda: http(ctx, url=f"{server}/503"), "server_error")
    assert unavailable.retry_after == 7 and unavailable.details["status"] == 503
    assert fails(lambda: http(ctx, url=f"{server}/500"), "server_error").retry_after is None
    fails(lambda: http(ctx, url=f"{server}/401"), "auth")
    fails(lambda: http(ctx, url=f"{server}/403"), "auth")
    not_found = fails(lambda: http(ctx, url=f"{server}/404"), "invalid_input")
    assert "404" in not_found.message and "not here" in not_found.message


def test_http_json_parsing_rejects_nan(ctx: TaskContext, server: str) -> None:
    assert run(http(ctx, url=f"{server}/nan"))["body"] == '{"confidence": NaN}'  # auto: handed over as text
    fails(lambda: http(ctx, url=f"{server}/nan", response="json"), "invalid_output")
    fails(lambda: http(ctx, url=f"{server}/text", response="json"), "invalid_output")


def test_http_timeout_connection_and_bad_input(ctx: TaskContext, server: str) -> None:
    assert "timed out" in fails(lambda: http(ctx, url=f"{server}/slow", timeout=0.2), "timeout").message
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fails(lambda: http(ctx, url=f"http://127.0.0.1:{port}/"), "connection")
    fails(lambda: http(ctx, url="ftp://example.com/x"), "invalid_input")
    fails(lambda: http(ctx, url=f"{server}/json", expect="200"), "invalid_input")  # type: ignore[arg-type]
    fails(lambda: http(ctx, url=f"{server}/json", timeout=0), "invalid_input")
    fails(lambda: http(ctx, url=f"{server}/json", response="xml"), "invalid_input")  # type: ignore[arg-type]
