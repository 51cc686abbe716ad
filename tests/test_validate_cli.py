"""`goatclaw validate`: one located line per problem, no traceback, exit code 2.

The issue's must-show: a file with a duplicate key, a cycle, an unknown ``needs``, a wrong
type and a template naming a missing task prints one located line for each and exits 2,
as a real ``python -m goatclaw`` process and through typer's CliRunner.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

import goatclaw
from goatclaw.cli.app import app

FIXTURES = Path(__file__).resolve().parent / "fixtures"
VALID = sorted((FIXTURES / "valid").glob("*.yaml"))
INVALID = sorted((FIXTURES / "invalid").glob("*.yaml"))

MUST_SHOW = [
    "must_show.yaml:10:7: tasks.fetch.with.url: duplicate key 'url' (first defined at line 9, column 7)",
    "must_show.yaml:13:12: tasks.a.needs: dependency cycle: a -> b -> c -> a",
    "must_show.yaml:22:20: tasks.parse.needs[1]: unknown task 'fecth' (did you mean 'fetch'?)",
    "must_show.yaml:26:15: tasks.report.priority: 'high' is not of type 'integer'",
    "must_show.yaml:28:13: tasks.report.with.text: unknown task 'summary'",
]


@pytest.fixture
def must_show(project: Path) -> Path:
    path = project / "must_show.yaml"
    shutil.copy(FIXTURES / "invalid" / "must_show.yaml", path)
    return path


@pytest.fixture
def valid(project: Path) -> Path:
    path = project / "minimal.yaml"
    shutil.copy(FIXTURES / "valid" / "minimal.yaml", path)
    return path


def goatclaw_process(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GOATCLAW_STORE", "CI")}
    return subprocess.run([sys.executable, "-m", "goatclaw", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


def expected_lines(fixture: Path) -> list[str]:
    """The ``# expect: line:col: path: message`` comments at the end of an invalid fixture."""
    return re.findall(r"^# expect: (.+)$", fixture.read_text(), re.M)


# -- the must-show ------------------------------------------------------------------------------


@pytest.mark.slow
def test_must_show_as_a_real_process(must_show: Path, project: Path) -> None:
    done = goatclaw_process("validate", "must_show.yaml", cwd=project)
    assert done.returncode == 2
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stderr.splitlines() == MUST_SHOW


def test_must_show_through_the_cli_runner(must_show: Path) -> None:
    result = CliRunner().invoke(app, ["validate", "must_show.yaml"])
    assert result.exit_code == 2
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    for line in MUST_SHOW:
        assert line in result.output.splitlines()
    assert result.output.splitlines() == MUST_SHOW


def test_must_show_through_the_python_api(must_show: Path) -> None:
    with pytest.raises(goatclaw.SpecError) as info:
        goatclaw.load(must_show)
    assert [str(p).removeprefix(f"{must_show.parent}/") for p in info.value.problems] == MUST_SHOW


# -- every fixture -------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", INVALID, ids=lambda p: p.name)
def test_invalid_fixture_prints_exactly_its_expected_lines(fixture: Path, project: Path) -> None:
    expected = expected_lines(fixture)
    assert expected, f"{fixture.name} has no '# expect:' lines"
    shutil.copy(fixture, project / fixture.name)
    result = CliRunner().invoke(app, ["validate", fixture.name])
    assert result.exit_code == 2
    assert result.output.splitlines() == [f"{fixture.name}:{line}" for line in expected]


@pytest.mark.parametrize("fixture", VALID, ids=lambda p: p.name)
def test_valid_fixture_passes(fixture: Path, project: Path) -> None:
    shutil.copy(fixture, project / fixture.name)
    result = CliRunner().invoke(app, ["validate", fixture.name])
    assert result.exit_code == 0, result.output
    assert result.output == f"✓ {fixture.name}\n"


# -- formats ----------------------------------------------------------------------------------------


def test_github_format_prints_annotations(must_show: Path) -> None:
    result = CliRunner().invoke(app, ["validate", "must_show.yaml", "--format", "github"])
    assert result.exit_code == 2
    annotations = result.stdout.splitlines()
    assert annotations == [
        re.sub(r"^must_show\.yaml:(\d+):(\d+): (.*)$", r"::error file=must_show.yaml,line=\1,col=\2::\3", line)
        for line in MUST_SHOW
    ]
    assert annotations[0] == ("::error file=must_show.yaml,line=10,col=7::tasks.fetch.with.url: "
                              "duplicate key 'url' (first defined at line 9, column 7)")


def test_github_format_escapes_the_file_name(write_pipeline: Callable[..., Path]) -> None:
    write_pipeline("version: 1\ntasks:\n  a: {uses: echo, needs: [zz]}\n", name="my,pipe.yaml")
    result = CliRunner().invoke(app, ["validate", "my,pipe.yaml", "--format", "github"])
    assert result.exit_code == 2
    assert result.stdout == "::error file=my%2Cpipe.yaml,line=3,col=27::tasks.a.needs[0]: unknown task 'zz'\n"


def test_json_format_parses(must_show: Path) -> None:
    result = CliRunner().invoke(app, ["validate", "must_show.yaml", "--format", "json"])
    assert result.exit_code == 2
    problems = json.loads(result.stdout)
    assert [(p["line"], p["col"], p["path"]) for p in problems] == [
        (10, 7, "tasks.fetch.with.url"), (13, 12, "tasks.a.needs"), (22, 20, "tasks.parse.needs[1]"),
        (26, 15, "tasks.report.priority"), (28, 13, "tasks.report.with.text")]
    assert {p["file"] for p in problems} == {"must_show.yaml"}
    assert {p["severity"] for p in problems} == {"error"}
    assert problems[1]["message"] == "dependency cycle: a -> b -> c -> a"


def test_json_format_of_a_valid_file_is_an_empty_list(valid: Path) -> None:
    result = CliRunner().invoke(app, ["validate", "minimal.yaml", "-f", "json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == []


def test_a_valid_file_exits_0(valid: Path) -> None:
    result = CliRunner().invoke(app, ["validate", "minimal.yaml"])
    assert result.exit_code == 0
    assert result.output == "✓ minimal.yaml\n"


# -- several files, missing files ---------------------------------------------------------------------


def test_several_files_at_once(must_show: Path, valid: Path, project: Path) -> None:
    shutil.copy(FIXTURES / "invalid" / "graph_errors.yaml", project / "graph_errors.yaml")
    result = CliRunner().invoke(app, ["validate", "minimal.yaml", "must_show.yaml", "graph_errors.yaml"])
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert lines[0] == "✓ minimal.yaml"
    assert lines[1:] == MUST_SHOW + [f"graph_errors.yaml:{e}" for e in
                                     expected_lines(FIXTURES / "invalid" / "graph_errors.yaml")]


def test_several_valid_files_exit_0(project: Path) -> None:
    for fixture in VALID:
        shutil.copy(fixture, project / fixture.name)
    result = CliRunner().invoke(app, ["validate", *[f.name for f in VALID]])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"✓ {f.name}" for f in VALID]


def test_a_missing_file_is_a_clear_error(valid: Path) -> None:
    result = CliRunner().invoke(app, ["validate", "nope.yaml", "minimal.yaml"])
    assert result.exit_code == 2
    assert result.output.splitlines() == ["✓ minimal.yaml", "nope.yaml: cannot read: No such file or directory"]
    github = CliRunner().invoke(app, ["validate", "nope.yaml", "-f", "github"])
    assert github.stdout == "::error::nope.yaml: cannot read: No such file or directory\n"


def test_a_directory_is_a_clear_error(project: Path) -> None:
    (project / "folder").mkdir()
    result = CliRunner().invoke(app, ["validate", "folder"])
    assert result.exit_code == 2
    assert result.output == "folder: cannot read: Is a directory\n"


@pytest.mark.slow
def test_a_missing_file_as_a_real_process(project: Path) -> None:
    done = goatclaw_process("validate", "nope.yaml", cwd=project)
    assert done.returncode == 2
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stderr == "nope.yaml: cannot read: No such file or directory\n"


def test_validate_needs_a_file() -> None:
    result = CliRunner().invoke(app, ["validate"])
    assert result.exit_code == 2
    assert "Missing argument" in result.output


# -- apply refuses an invalid file before running anything -------------------------------------------------


def count_runs(store: Path) -> int:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(*) FROM runs").fetchone()[0])


INVALID_WITH_A_SIDE_EFFECT = """
    version: 1
    tasks:
      write:
        uses: file.write
        with: {path: marker.txt, content: ran}
      broken:
        uses: echo
        needs: [write, nowhere]
    """


def test_apply_on_an_invalid_file_exits_2_and_runs_nothing(write_pipeline: Callable[..., Path], valid: Path,
                                                          store_path: Path, project: Path) -> None:
    assert goatclaw.run(goatclaw.load(valid)).ok  # the store exists and holds one run
    assert count_runs(store_path) == 1
    write_pipeline(INVALID_WITH_A_SIDE_EFFECT, name="bad.yaml")
    result = CliRunner().invoke(app, ["apply", "bad.yaml", "--output", "plain"])
    assert result.exit_code == 2
    assert result.output.splitlines() == ["bad.yaml:8:20: tasks.broken.needs[1]: unknown task 'nowhere'"]
    assert count_runs(store_path) == 1
    assert not (project / "marker.txt").exists()


def test_apply_on_an_invalid_file_creates_no_store(must_show: Path, store_path: Path) -> None:
    result = CliRunner().invoke(app, ["apply", "must_show.yaml"])
    assert result.exit_code == 2
    assert result.output.splitlines() == MUST_SHOW
    assert not store_path.exists()


@pytest.mark.slow
def test_apply_on_an_invalid_file_as_a_real_process(must_show: Path, project: Path, store_path: Path) -> None:
    done = goatclaw_process("apply", "must_show.yaml", cwd=project)
    assert done.returncode == 2
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stderr.splitlines() == MUST_SHOW
    assert not store_path.exists()


def test_validate_checks_a_pipeline_test_file_as_one(write_pipeline: Callable[..., Path]) -> None:
    from typer.testing import CliRunner

    from goatclaw.cli.app import app

    write_pipeline("version: 1\ntasks:\n  a: {uses: echo, with: {value: 1}}\n", "p.yaml")
    good = write_pipeline("tests:\n  ok:\n    expect: {tasks: {a: {status: succeeded}}}\n", "p.test.yaml")
    bad = write_pipeline("tests:\n  wrong:\n    expect: {tasks: {nosuch: {status: succeeded}}}\n", "q.test.yaml")
    (bad.parent / "q.yaml").write_text((bad.parent / "p.yaml").read_text())
    assert CliRunner().invoke(app, ["validate", str(good)]).exit_code == 0
    result = CliRunner().invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2
    assert "q.test.yaml:3:22: tests.wrong.expect.tasks.nosuch: the pipeline 'q' has no task 'nosuch'" in result.output
