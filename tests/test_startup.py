"""Start-up: ``--version`` and a cached ``--help`` answer without the CLI's libraries; ``validate``, no heavy ones."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: What ``--version`` has no use for: the CLI framework, the terminal renderer, the event loop, TLS.
NOT_FOR_VERSION = ["typer", "click", "rich", "asyncio", "ssl", "yaml", "jinja2"]


def test_version_imports_no_cli_library() -> None:
    code = ("import json, sys\n"
            "from goatclaw.cli import main\n"
            "code = main(['--version'], exit=False)\n"
            f"heavy = sorted(m for m in {NOT_FOR_VERSION!r} if m in sys.modules)\n"
            "print(json.dumps({'code': code, 'heavy': heavy}))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("goatclaw ")
    assert json.loads(lines[-1]) == {"code": 0, "heavy": []}


def test_version_as_a_user_runs_it() -> None:
    done = subprocess.run([sys.executable, "-m", "goatclaw", "--version"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("goatclaw 0.") and done.stderr == ""


def _help(cache: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``goatclaw --help`` in a new process, its help cache in ``cache``; on the last line, what it imported."""
    code = ("import json, sys\n"
            "from goatclaw.cli import main\n"
            "code = main(['--help'], exit=False)\n"
            "print(json.dumps({'code': code, 'typer': 'typer' in sys.modules, 'rich': 'rich' in sys.modules}))\n")
    environ = {**os.environ, "GOATCLAW_CACHE_DIR": str(cache), "COLUMNS": "80", **env}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env=environ)


def test_help_is_typer_s_text_then_the_same_text_from_the_cache(tmp_path: Path) -> None:
    first = _help(tmp_path)
    assert first.returncode == 0, first.stderr
    *text, last = first.stdout.splitlines(keepends=True)
    assert json.loads(last) == {"code": 0, "typer": True, "rich": True}  # a miss: typer rendered it
    assert "Usage: goatclaw [OPTIONS] COMMAND [ARGS]..." in "".join(text) and "validate" in "".join(text)
    assert len(list(tmp_path.glob("help-*.txt"))) == 1
    again = _help(tmp_path)
    *cached, last = again.stdout.splitlines(keepends=True)
    assert json.loads(last) == {"code": 0, "typer": False, "rich": False}  # a hit: neither imported
    assert cached == text and again.stderr == ""


def test_another_terminal_width_is_another_entry(tmp_path: Path) -> None:
    narrow, wide = _help(tmp_path), _help(tmp_path, COLUMNS="120")
    assert json.loads(wide.stdout.splitlines()[-1])["typer"]  # not the 80-column text
    assert max(len(line) for line in wide.stdout.splitlines()[:-1]) == 120
    assert max(len(line) for line in narrow.stdout.splitlines()[:-1]) == 80
    assert len(list(tmp_path.glob("help-*.txt"))) == 2
    assert _help(tmp_path, COLUMNS="120").stdout == wide.stdout.replace('"typer": true, "rich": true',
                                                                        '"typer": false, "rich": false')


def test_an_edited_cli_file_is_another_key(tmp_path: Path) -> None:
    from goatclaw.cli import helpcache

    for source in (REPO / "goatclaw" / "cli").glob("*.py"):
        shutil.copy2(source, tmp_path / source.name)
    before = helpcache._code_key(tmp_path)
    assert helpcache._code_key(tmp_path) == before
    os.utime(tmp_path / "app.py", ns=(0, (tmp_path / "app.py").stat().st_mtime_ns + 1))
    assert helpcache._code_key(tmp_path) != before


def test_an_unwritable_cache_is_no_cache(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    for _ in range(2):
        done = _help(blocked / "cache")
        assert done.returncode == 0 and json.loads(done.stdout.splitlines()[-1])["typer"], done.stderr


#: What ``validate`` has no use for: the LLM room and its clients, Dask, the memory's numpy and embedder, the
#: graph library (networkx is only for analysis and export), the web and MCP rooms, the engine's run-time
#: half, the store, rich's tables and live view and typer's markdown help, process pools.
NOT_FOR_VALIDATE = ["litellm", "openai", "httpx", "dask", "distributed", "numpy", "wordllama", "sqlite_vec",
                    "networkx", "jsonschema", "mcp", "starlette", "uvicorn", "goatclaw.engine.runner",
                    "goatclaw.engine.executor", "goatclaw.engine.sentry", "goatclaw.llm", "goatclaw.tracing",
                    "goatclaw.store", "goatclaw.events", "rich", "markdown_it",
                    "concurrent.futures.process", "multiprocessing"]
#: And, for a pipeline without an mcp task (a shell task's module imports asyncio only to run a process): no event
#: loop, no TLS.
NOT_FOR_VALIDATE_WITHOUT_SHELL = ["asyncio", "ssl"]


def _imported_by(argv: list[str], names: list[str], cwd: Path = REPO) -> dict[str, object]:
    code = ("import json, sys\n"
            "from goatclaw.cli import main\n"
            f"code = main({argv!r}, exit=False)\n"
            f"print(json.dumps({{'code': code, 'heavy': sorted(m for m in {names!r} if m in sys.modules)}}))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_validate_imports_nothing_it_does_not_need() -> None:
    found = _imported_by(["validate", "pipelines/quickstart.yaml"], NOT_FOR_VALIDATE + NOT_FOR_VALIDATE_WITHOUT_SHELL)
    assert found == {"code": 0, "heavy": []}


def test_validate_without_a_shell_task_imports_no_event_loop(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("version: 1\ntasks:\n  a: {uses: echo, with: {value: 1}}\n"
                                     "  b: {uses: file.read, needs: a, with: {path: 'x-${{ tasks.a.output }}.txt'}}\n"
                                     "permissions: {files: {read: ['.']}}\n")
    found = _imported_by(["validate", "p.yaml"], NOT_FOR_VALIDATE + NOT_FOR_VALIDATE_WITHOUT_SHELL, cwd=tmp_path)
    assert found == {"code": 0, "heavy": []}


def test_the_probe_sees_what_a_run_imports(tmp_path: Path) -> None:
    """The probe above can fail: ``apply`` of the same pipeline does load the runner, the store and asyncio."""
    (tmp_path / "p.yaml").write_text("version: 1\ntasks:\n  a: {uses: echo, with: {value: 1}}\n")
    found = _imported_by(["apply", "p.yaml", "--store", str(tmp_path / "s.db"), "--output", "json"],
                         NOT_FOR_VALIDATE + NOT_FOR_VALIDATE_WITHOUT_SHELL, cwd=tmp_path)
    assert found["code"] == 0
    assert {"goatclaw.engine.runner", "goatclaw.store", "asyncio"} <= set(found["heavy"])  # type: ignore[arg-type]


def test_validate_of_files_alone_is_answered_without_typer() -> None:
    found = _imported_by(["validate", "pipelines/quickstart.yaml"], ["typer", "click", "rich"])
    assert found == {"code": 0, "heavy": []}
    with_option = _imported_by(["validate", "--format", "text", "pipelines/quickstart.yaml"], ["typer"])
    assert with_option == {"code": 0, "heavy": ["typer"]}  # an option: typer parses it, as before


def test_the_shortcut_prints_and_exits_as_the_typer_command(tmp_path: Path) -> None:
    """``validate FILE…`` (cli/validating.py) and ``validate --format text FILE…`` (typer): same lines, same code."""
    (tmp_path / "bad.yaml").write_text("version: 1\ntasks:\n  a: {uses: nope}\n  b: {uses: echo, needs: zz}\n")
    (tmp_path / "good.yaml").write_text("version: 1\ntasks:\n  a: {uses: echo, with: {value: 1}}\n")
    runs = []
    for options in ([], ["--format", "text"]):
        for files in (["good.yaml"], ["bad.yaml", "good.yaml", "missing.yaml"]):
            done = subprocess.run([sys.executable, "-m", "goatclaw", "validate", *options, *files], cwd=tmp_path,
                                  capture_output=True, text=True, timeout=60,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
            runs.append((done.returncode, done.stdout, done.stderr))
    shortcut, typer_path = runs[:2], runs[2:]
    assert shortcut == typer_path
    assert shortcut[0] == (0, "", "✓ good.yaml\n")
    code, out, err = shortcut[1]
    assert code == 2 and out == "" and "bad.yaml:3:13: tasks.a.uses: unknown task 'nope'" in err
    assert "✓ good.yaml" in err and "missing.yaml: cannot read" in err


#: What ``apply`` of a pipeline without an llm, agent or mcp task has no use for: the LLM room's clients, Dask, the
#: memory's numpy and embedder, the graph library, jsonschema (a valid file), the web and MCP rooms, typer and rich
#: (into a pipe: plain lines, cli/applying.py and cli/plain.py), the process pool and the store's writer process.
NOT_FOR_APPLY = ["litellm", "openai", "httpx", "dask", "distributed", "numpy", "wordllama", "sqlite_vec", "networkx",
                 "jsonschema", "mcp", "starlette", "uvicorn", "typer", "click", "rich", "markdown_it",
                 "concurrent.futures.process", "multiprocessing"]


def test_apply_into_a_pipe_imports_nothing_its_tasks_do_not_need(tmp_path: Path) -> None:
    found = _imported_by(["apply", "pipelines/quickstart.yaml", "--store", str(tmp_path / "s.db")],
                         [*NOT_FOR_APPLY, "goatclaw.engine.runner", "goatclaw.store", "asyncio"])
    assert found == {"code": 0, "heavy": ["asyncio", "goatclaw.engine.runner", "goatclaw.store"]}  # it did run


def test_the_apply_shortcut_prints_and_exits_as_the_typer_command(tmp_path: Path) -> None:
    """``apply FILE --store S`` (cli/applying.py) and ``apply FILE --store S --output plain`` (typer): the same."""
    import re

    (tmp_path / "ok.yaml").write_text("version: 1\ntasks:\n  a: {uses: echo, with: {value: 1}}\n"
                                      "  b: {uses: echo, needs: a, with: {value: '${{ tasks.a.output + 1 }}'}}\n")
    (tmp_path / "bad.yaml").write_text("version: 1\ntasks:\n  a: {uses: nope}\n")
    (tmp_path / "fails.yaml").write_text("version: 1\npermissions: {shell: [bash]}\n"
                                         "tasks:\n  a: {uses: shell, with: {script: 'echo no >&2; exit 3'}}\n")
    (tmp_path / "warns.yaml").write_text("version: 1\ntasks:\n  a:\n    uses: echo\n    with: {value: 1}\n"
                                         "    validate: [{expr: 'output == 2', severity: warn}]\n")
    (tmp_path / "a-folder").mkdir()
    runs = []
    for options, db in (([], "shortcut.db"), (["--output", "plain"], "typer.db")):  # each its own store: no cache hits
        for file, store in (("ok.yaml", db), ("bad.yaml", db), ("fails.yaml", db), ("warns.yaml", db),
                            ("missing.yaml", db), ("ok.yaml", "a-folder")):
            done = subprocess.run([sys.executable, "-m", "goatclaw", "apply", file, "--store", store, *options],
                                  cwd=tmp_path, capture_output=True, text=True, timeout=120,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
            text = re.sub(r"\d{8}-\d{6}-[0-9a-f]{6}", "RUN", done.stdout + "\n--\n" + done.stderr)
            text = re.sub(r"^\d\d:\d\d:\d\d ", "HH:MM:SS ", text, flags=re.M)  # the clock moves between runs
            runs.append((done.returncode, re.sub(r"\d+(\.\d+)?m?s\b", "T", text)))
    shortcut, typer_path = runs[:6], runs[6:]
    assert shortcut == typer_path
    assert [code for code, _ in shortcut] == [0, 2, 1, 0, 2, 1]
    assert "✓ run RUN succeeded in T (2 succeeded)" in shortcut[0][1]
    assert "bad.yaml:3:13: tasks.a.uses: unknown task 'nope'" in shortcut[1][1]
    assert "cannot open the store" in shortcut[5][1]


@pytest.mark.parametrize("value, at_terminal", [("", True), ("1", False), ("true", False), ("yes", False),
                                                ("YES", False), ("no", True)])
def test_a_bare_goatclaw_in_ci_is_never_at_a_terminal(value: str, at_terminal: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """``$CI`` reads the same for the interactive shell as for ``apply``'s lines (cli/applying.py ``in_ci``)."""
    import io

    from goatclaw.cli import _on_terminal

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Tty())
    monkeypatch.setattr(sys, "stdout", Tty())
    monkeypatch.setenv("CI", value)
    assert _on_terminal() is at_terminal
