"""The command line's contract: a refused command line is exit 2 and one line, never a traceback.

The first half walks every command and subcommand of the Typer app (a new command is
covered the day it is added) and gives each parameter a value it must refuse; the second
holds the regressions of issues #16 and #17: ``--var``/``--only`` checked against the
pipeline, ``--output json`` on an invalid file, a closed pipe, escaped output.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command

from goatclaw.cli import main
from goatclaw.cli.app import app

PIPELINE = """\
version: 1
name: contract
vars:
  topics: [python, rust]
tasks:
  first: {uses: echo, with: {value: "${{ vars.topics }}"}}
  second: {uses: echo, needs: first, with: {value: 2}}
"""

#: Free-text parameters a bad value cannot be given at parse time (names, ids, queries found or not later).
FREE_TEXT = {
    "apply --run", "apply --address", "why run", "why task", "runs show run", "runs report run", "runs events run",
    "runs logs run", "runs logs task", "runs replay run", "runs list --pipeline", "breakers reset key",
    "plugins show name", "audit show --run", "audit show --action", "dlq list --run", "memory search query",
    "test --case", "mcp tools server", "run goal", "run --model",
    "approve run", "approve task", "approve --as", "reject run", "reject task", "reject --as", "reject --reason",
    "approvals --run",
    "users disable name", "tokens create name", "tokens revoke ref",
    "runs diff a", "runs diff b", "runs fork run", "runs fork --from", "runs fork --model",
}
#: Text parameters and a value each must refuse (``*`` is any command).
BAD_TEXT = {
    "* --var": "topics", "* --llm": "sometimes", "apply --executor": "mainframe", "* --report": "pdf",
    "* --only": "nosuch", "* --since": "-5d", "* --older-than": "-5d", "watch --debounce": "-1s",
    "schema name": "nosuch", "* --kind": "nosuch", "memory graph --format": "nosuch",
    "mcp serve --http": "localhost:http", "init --provider": "nosuch", "init --key-store": "nosuch",
    "approve --input": "env",
    "* --scope": "nosuch", "users add --project": "no such", "tokens create --project": "no such",
    "serve --project": "no/such/folder", "serve --host": "not a host", "serve --grace": "-1s",
    "serve --log-level": "loud", "tokens create --expires": "-1s", "users add name": "a:b",
    "runs fork --set": "topics=x",
}
#: Bad values by parameter type (click's type names); booleans and paths have none of their own.
BAD_BY_TYPE = {"int": ["abc", str(10**30)], "int range": ["abc", str(10**30), "-1"], "float": ["abc", "nan"],
               "float range": ["abc", "nan", "-1"], "choice": ["nosuch"]}
#: What a required parameter gets when another one is under test.
PLACEHOLDER = {"path": "p.yaml", "int range": "1", "int": "1", "str": "x"}
#: Click's names for the types (they differ between click releases).
TYPE_NAMES = {"integer": "int", "integer range": "int range", "text": "str"}
REQUIRED_OPTION = {"--older-than": "30d"}


def _commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))


def _type(param: Any) -> str:
    return TYPE_NAMES.get(param.type.name, param.type.name)


def _name(param: Any) -> str:
    return param.opts[0] if param.param_type_name == "option" else param.name


def _text_key(path: tuple[str, ...], param: Any) -> str | None:
    """Where a text parameter is listed: ``"runs show run"``, or ``"* --var"`` for every command."""
    for key in (f"{' '.join(path)} {_name(param)}", f"* {_name(param)}"):
        if key in FREE_TEXT or key in BAD_TEXT:
            return key
    return None


def _base(path: tuple[str, ...], command: Any, under_test: Any = None, bad: str | None = None) -> list[str]:
    """``path`` with its required parameters (and ``under_test``, given ``bad``) in place."""
    args, options = [*path], []
    for param in command.params:
        value = bad if param is under_test else None
        if value is None and param.required:
            value = REQUIRED_OPTION.get(_name(param)) or PLACEHOLDER[_type(param)]
        if value is None:
            continue
        if param.param_type_name == "argument":
            args.append(value)
        else:
            options += [_name(param), value]
    return [*args, *options]


def _cases() -> Iterator[Any]:
    root = get_command(app)
    yield pytest.param(["nosuch"], id="goatclaw nosuch")
    yield pytest.param(["--no-such-option"], id="goatclaw --no-such-option")
    for path, command in _commands(root):
        yield pytest.param([*_base(path, command), "--no-such-option"], id=f"{' '.join(path)} --no-such-option")
        if hasattr(command, "commands"):
            yield pytest.param([*path, "nosuch"], id=f"{' '.join(path)} nosuch")
        for param in command.params:
            kind = _type(param)
            if kind == "str":
                key = _text_key(path, param)
                bad = [] if key is None or key in FREE_TEXT else [BAD_TEXT[key]]
            else:
                bad = BAD_BY_TYPE.get(kind, [])
            for value in bad:
                yield pytest.param(_base(path, command, param, value), id=f"{' '.join(path)} {_name(param)}={value}")


def test_every_text_parameter_has_a_bad_value_or_is_free_text() -> None:
    """A new text option must say what it refuses (BAD_TEXT) or that it takes anything (FREE_TEXT)."""
    unlisted = [f"{' '.join(path)} {_name(param)}" for path, command in _commands(get_command(app))
                for param in command.params if _type(param) == "str" and _text_key(path, param) is None]
    assert unlisted == []


@pytest.fixture
def pipeline(project: Path) -> Path:
    path = project / "p.yaml"
    path.write_text(PIPELINE)
    return path


@pytest.mark.parametrize("argv", list(_cases()))
def test_an_invalid_command_line_exits_2_with_one_line(argv: list[str], pipeline: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code = main(argv, exit=False)  # the real entry point: an exception here is the traceback a user would see
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith("error: goatclaw"), err
    assert out == ""
    assert not (pipeline.parent / ".goatclaw").exists()  # refused before anything ran or was stored


# -- the same contract through a real process ----------------------------------------------


def goatclaw(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "GOATCLAW_STORE")}
    return subprocess.run([sys.executable, "-m", "goatclaw", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def refused(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """The one line a refused command printed; it names ``words``."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


@pytest.mark.parametrize(("args", "words"), [
    (["--var", "topics"], ["--var", "key=value", "'topics'"]),
    (["--only", "nosuch"], ["--only", "'nosuch'", "first, second"]),
    (["--var", "topicz=[go]"], ["--var", "'topicz'", "not declared", "topics"]),
])
def test_apply_refuses_vars_and_tasks_the_pipeline_does_not_have(args: list[str], words: list[str],
                                                                 pipeline: Path, project: Path) -> None:
    refused(goatclaw("apply", "p.yaml", *args, cwd=project), *words)
    assert not (project / ".goatclaw").exists()  # nothing ran


@pytest.mark.parametrize("args", [["--var", "topicz=[go]"], ["--only", "nosuch"]])
def test_watch_refuses_vars_and_tasks_the_watched_file_does_not_have(args: list[str], pipeline: Path,
                                                                     project: Path) -> None:
    refused(goatclaw("watch", "p.yaml", *args, cwd=project, timeout=20), "goatclaw watch", args[0])
    assert not (project / ".goatclaw").exists()  # no run started


def test_a_declared_var_still_runs(pipeline: Path, project: Path) -> None:
    result = goatclaw("apply", "p.yaml", "--var", "topics=[go]", "-o", "json", cwd=project)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tasks"]["first"]["output"] == ["go"]


def test_output_json_on_an_invalid_file_prints_its_problems(project: Path) -> None:
    (project / "bad.yaml").write_text("version: 1\ntasks:\n  a: {uses: echo}\n  a: {uses: echo}\n")
    result = goatclaw("apply", "bad.yaml", "--output", "json", cwd=project)
    assert result.returncode == 2
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and doc["status"] == "invalid"
    assert [(p["file"], p["line"], p["col"], p["path"]) for p in doc["problems"]] == [("bad.yaml", 4, 3, "tasks.a")]
    assert "bad.yaml:4:3" in result.stderr  # the located problem is still shown


def test_output_json_on_an_undeclared_var_prints_a_document(pipeline: Path, project: Path) -> None:
    result = goatclaw("apply", "p.yaml", "--var", "nosuch=1", "-o", "json", cwd=project)
    assert result.returncode == 2
    assert json.loads(result.stdout)["problems"][0]["path"] == "--var"


# -- #16.9: store commands given impossible values -----------------------------------------


@pytest.fixture
def stored(pipeline: Path, project: Path) -> Path:
    """The project after one successful run of the pipeline."""
    result = goatclaw("apply", "p.yaml", cwd=project)
    assert result.returncode == 0, result.stderr
    return project / ".goatclaw" / "goatclaw.db"


def _runs(store: Path) -> int:
    with sqlite3.connect(store) as db:
        return db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]


@pytest.mark.parametrize(("args", "words"), [
    (["dlq", "show", str(10**30)], ["'letter'", str(10**30)]),
    (["dlq", "replay", str(2**63)], ["'letter'"]),
    (["runs", "replay", "--speed", "-1"], ["--speed", "above 0"]),
    (["runs", "replay", "--speed", "nan"], ["--speed"]),
    (["runs", "prune", "--older-than", "-5d"], ["--older-than", "not negative", "'-5d'"]),
    (["stats", "--since", "-1h"], ["--since"]),
    (["cache", "clear", "--older-than", "-1d"], ["--older-than"]),
])
def test_store_commands_refuse_impossible_values(args: list[str], words: list[str], stored: Path,
                                                 project: Path) -> None:
    refused(goatclaw(*args, cwd=project), *words)
    assert _runs(stored) == 1  # prune deleted nothing


# -- #17.12: a closed pipe is not a failure ------------------------------------------------

SLOW = """\
version: 1
name: slow
permissions: {shell: true}
tasks:
  first: {uses: echo, with: {value: 1}}
  pause: {uses: shell, needs: first, with: {script: "sleep 0.5"}}
""" + "".join(f"  after{i}: {{uses: echo, needs: pause, with: {{value: {i}}}}}\n" for i in range(6))


def test_a_reader_that_goes_away_is_not_a_failure(project: Path) -> None:
    """``goatclaw apply … | head -1``: the run ends as it really ended, quietly, with no dead letter."""
    (project / "slow.yaml").write_text(SLOW)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "GOATCLAW_STORE")}
    proc = subprocess.Popen([sys.executable, "-m", "goatclaw", "apply", "slow.yaml"], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader is gone while the shell task still sleeps: every later line meets EPIPE
    code = proc.wait(timeout=60)
    err = proc.stderr.read()
    proc.stderr.close()
    assert first.startswith("run ") and "started: slow" in first
    assert code == 0, err
    assert err == ""
    with sqlite3.connect(project / ".goatclaw" / "goatclaw.db") as db:
        assert db.execute("SELECT status FROM runs").fetchall() == [("succeeded",)]
        assert db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM tasks WHERE status = 'succeeded'").fetchone()[0] == 8


def test_a_closed_pipe_after_a_store_command_is_quiet(stored: Path, project: Path) -> None:
    result = subprocess.run(f"{sys.executable} -m goatclaw runs events last | head -1", shell=True, cwd=project,
                            capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if k not in ("CI", "GOATCLAW_STORE")})
    assert result.stdout.count("\n") == 1
    assert result.stderr == ""


# -- #16.9: what tasks say is printed escaped ---------------------------------------------

LOUD = textwrap.dedent("""\
    version: 1
    name: loud
    permissions: {shell: true}
    tasks:
      shout: {uses: echo, with: {value: "[/x] [bold red]not styled[/] \\x1b]0;retitled\\x07"}}
      fail:
        uses: shell
        with: {script: "printf '\\\\033[2J\\\\033[31m[/oops] gone' >&2; exit 3"}
    """)


@pytest.fixture
def loud(project: Path) -> Path:
    (project / "loud.yaml").write_text(LOUD)
    assert goatclaw("apply", "loud.yaml", cwd=project).returncode == 1
    return project


def test_the_plain_view_escapes_a_task_error(project: Path) -> None:
    (project / "loud.yaml").write_text(LOUD)
    result = goatclaw("apply", "loud.yaml", cwd=project)
    assert result.returncode == 1, result.stderr
    assert "\x1b" not in result.stdout and "\\x1b[2J\\x1b[31m[/oops] gone" in result.stdout


def test_runs_show_prints_markup_and_control_characters_as_text(loud: Path) -> None:
    result = goatclaw("runs", "show", "last", cwd=loud)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "[/x] [bold red]not styled[/]" in result.stdout
    assert "\\x1b]0;retitled" in result.stdout and "\\x1b[31m[/oops] gone" in result.stdout


def test_a_markdown_report_on_stdout_is_escaped(loud: Path) -> None:
    result = goatclaw("runs", "report", "last", "--format", "markdown", cwd=loud)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\\x1b[2J" in result.stdout


def test_a_run_reference_with_markup_is_an_error_message_not_a_crash(loud: Path) -> None:
    result = goatclaw("runs", "show", "[/x]", cwd=loud)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: no run '[/x]' in {loud / '.goatclaw' / 'goatclaw.db'}"]


# -- #16.9: a damaged, read-only or full store, and a full disk behind stdout --------------


def one_error_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(w in lines[0] for w in words), lines[0]


@pytest.mark.parametrize(("args", "table"), [
    (["runs", "show"], "events"), (["runs", "events"], "events"), (["dlq", "list"], "dead_letters"),
    (["stats"], "events"), (["health"], "dead_letters"),
])
def test_a_store_missing_a_table_is_a_located_error(args: list[str], table: str, stored: Path,
                                                    project: Path) -> None:
    with sqlite3.connect(stored) as db:
        db.execute(f"DROP TABLE {table}")
    one_error_line(goatclaw(*args, "--store", str(stored), cwd=project), str(stored), f"no such table: {table}")


@pytest.fixture
def read_only(stored: Path) -> Iterator[Path]:
    """The store file made read-only (immutable for root, who ignores file modes)."""
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(stored)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available here (root ignores file modes)")
        try:
            yield stored
        finally:
            subprocess.run(["chattr", "-i", str(stored)], check=True)
    else:
        stored.chmod(0o444)
        yield stored


@pytest.mark.parametrize("args", [["runs", "prune", "--older-than", "0s"], ["breakers", "reset", "--all"],
                                  ["cache", "clear"], ["apply", "p.yaml", "--no-cache"]])
def test_a_read_only_store_is_a_located_error(args: list[str], read_only: Path, project: Path) -> None:
    result = goatclaw(*args, "--store", str(read_only), cwd=project)
    one_error_line(result, str(read_only), "readonly")
    assert _runs(read_only) == 1


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (a device that is always full)")
def test_output_to_a_full_disk_is_said_once_and_fails(stored: Path, project: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "GOATCLAW_STORE")}
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "goatclaw", "apply", "p.yaml", "--no-cache", "-o", "plain"],
                                cwd=project, env=env, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: stdout: No space left on device (output was lost)"]
    with sqlite3.connect(stored) as db:  # the run itself went on and was recorded as it ended
        assert db.execute("SELECT status FROM runs ORDER BY started_at").fetchall() == [("succeeded",)] * 2
        assert db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0] == 0


def test_a_report_to_a_full_disk_is_a_located_error(stored: Path, project: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    one_error_line(goatclaw("runs", "report", "last", "-o", "/dev/full", cwd=project), "/dev/full",
                   "No space left on device")
