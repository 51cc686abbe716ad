"""The command line, through typer's CliRunner and as real ``python -m goatclaw`` subprocesses."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

import goatclaw
from goatclaw.cli.app import app

REPO = Path(__file__).resolve().parent.parent
TOPICS = ["python", "rust", "go"]
TASKS = ["catalog", "profile", "words", "oldest", "statically_typed", "report"]

FAILING = """
    version: 1
    name: failing
    tasks:
      fine: {uses: echo, with: {value: 1}}
      boom:
        uses: shell
        with: {script: "echo going down >&2; exit 3"}
      after: {uses: echo, needs: boom, with: {value: 2}}
    """

INVALID = """
    version: 1
    tasks:
      a: {uses: echo}
      a: {uses: echo}
      b: {uses: echo, needs: [zzz]}
    """


@pytest.fixture
def quickstart(project: Path) -> Path:
    """The repository's quickstart pipeline and its data, copied into the project."""
    (project / "pipelines").mkdir()
    shutil.copy(REPO / "pipelines" / "quickstart.yaml", project / "pipelines" / "quickstart.yaml")
    shutil.copytree(REPO / "pipelines" / "data", project / "pipelines" / "data")
    return project / "pipelines" / "quickstart.yaml"


@pytest.fixture
def cli() -> Callable[..., object]:
    runner = CliRunner()

    def invoke(*args: str) -> object:
        return runner.invoke(app, list(args), catch_exceptions=False)

    return invoke


def words_in_catalogue() -> int:
    catalogue = json.loads((REPO / "pipelines" / "data" / "languages.json").read_text())
    return sum(len(entry["summary"].split()) for entry in catalogue.values())


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "GOATCLAW_STORE")}
    return {**env, **extra}


def goatclaw_cmd(*args: str, cwd: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "goatclaw", *args], cwd=cwd, env=subprocess_env(**env),
                          capture_output=True, text=True, timeout=timeout)


# -- apply -----------------------------------------------------------------------------


def test_apply_quickstart_writes_the_report(cli: Callable[..., object], quickstart: Path, project: Path) -> None:
    result = cli("apply", "pipelines/quickstart.yaml")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    report = (project / "out" / "quickstart.md").read_text()
    for rank, topic in enumerate(TOPICS, 1):
        assert f"{rank}. **{topic}**" in report
    assert "Oldest of these: 1991" in report
    assert "Statically typed: rust, go" in report
    assert f"Words in the whole catalogue: {words_in_catalogue()}" in report
    assert (project / ".goatclaw" / "goatclaw.db").is_file()


def test_apply_var_changes_the_report(cli: Callable[..., object], quickstart: Path, project: Path) -> None:
    result = cli("apply", "pipelines/quickstart.yaml", "--var", "topics=[go, haskell]")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    report = (project / "out" / "quickstart.md").read_text()
    assert "1. **go**" in report and "2. **haskell**" in report
    assert "**python**" not in report and "**rust**" not in report
    assert "Oldest of these: 1990" in report


def test_apply_json_prints_one_document(cli: Callable[..., object], quickstart: Path) -> None:
    result = cli("apply", "pipelines/quickstart.yaml", "--output", "json")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    doc = json.loads(result.stdout)  # type: ignore[attr-defined]
    assert doc["status"] == "succeeded"
    assert {tid: t["status"] for tid, t in doc["tasks"].items()} == dict.fromkeys(TASKS, "succeeded")
    assert [p["name"] for p in doc["tasks"]["profile"]["output"]] == TOPICS


def test_apply_dry_run_runs_nothing(cli: Callable[..., object], quickstart: Path, project: Path) -> None:
    result = cli("apply", "pipelines/quickstart.yaml", "--dry-run")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    for tid in TASKS:
        assert tid in result.stdout  # type: ignore[attr-defined]
    assert not (project / ".goatclaw").exists()
    assert not (project / "out").exists()


def test_apply_only_runs_a_task_and_what_it_needs(cli: Callable[..., object], quickstart: Path,
                                                  project: Path) -> None:
    result = cli("apply", "pipelines/quickstart.yaml", "--only", "oldest", "--output", "json")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    doc = json.loads(result.stdout)  # type: ignore[attr-defined]
    assert sorted(doc["tasks"]) == ["catalog", "oldest", "profile"]
    assert doc["tasks"]["oldest"]["output"] == 1991
    assert not (project / "out").exists()


def test_a_failing_task_exits_1(cli: Callable[..., object], write_pipeline: Callable[..., Path]) -> None:
    write_pipeline(FAILING)
    result = cli("apply", "p.yaml")
    assert result.exit_code == 1
    out = result.stdout  # type: ignore[attr-defined]
    assert "✗ boom failed" in out
    assert "✓ fine succeeded" in out
    assert "after upstream_failed" in out
    assert "Traceback" not in result.output  # type: ignore[attr-defined]


def test_an_invalid_file_exits_2_with_located_problems(cli: Callable[..., object],
                                                       write_pipeline: Callable[..., Path]) -> None:
    write_pipeline(INVALID)
    for command in ("apply", "validate", "plan"):
        result = cli(command, "p.yaml")
        assert result.exit_code == 2, (command, result.output)  # type: ignore[attr-defined]
        err = result.stderr  # type: ignore[attr-defined]
        assert re.search(r"p\.yaml:4:\d+: .*duplicate", err), err
        assert re.search(r"p\.yaml:5:\d+: .*zzz", err), err
        assert "Traceback" not in result.output  # type: ignore[attr-defined]
    assert not Path(".goatclaw").exists()


def test_validate_accepts_a_valid_file(cli: Callable[..., object], quickstart: Path) -> None:
    result = cli("validate", "pipelines/quickstart.yaml")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert "✓ pipelines/quickstart.yaml" in result.stderr  # type: ignore[attr-defined]


# -- runs ------------------------------------------------------------------------------


def test_runs_list_and_show_read_the_store(cli: Callable[..., object], quickstart: Path) -> None:
    assert cli("apply", "pipelines/quickstart.yaml").exit_code == 0  # type: ignore[attr-defined]
    listed = cli("runs", "list", "--json")
    assert listed.exit_code == 0, listed.output  # type: ignore[attr-defined]
    (row,) = json.loads(listed.stdout)  # type: ignore[attr-defined]
    assert (row["pipeline"], row["status"]) == ("quickstart", "succeeded")

    table = cli("runs", "list")
    assert table.exit_code == 0
    assert row["id"] in table.stdout and "succeeded" in table.stdout  # type: ignore[attr-defined]

    for ref in ("last", row["id"], row["id"][:-2]):
        shown = cli("runs", "show", ref)
        assert shown.exit_code == 0, shown.output  # type: ignore[attr-defined]
        out = shown.stdout  # type: ignore[attr-defined]
        assert row["id"] in out
        for tid in TASKS:
            assert tid in out

    doc = json.loads(cli("runs", "show", "last", "--json").stdout)  # type: ignore[attr-defined]
    assert doc["run"]["id"] == row["id"]
    assert {t["task_id"]: t["status"] for t in doc["tasks"]} == dict.fromkeys(TASKS, "succeeded")


def test_runs_list_is_readable_at_80_columns(cli: Callable[..., object], quickstart: Path) -> None:
    assert cli("apply", "pipelines/quickstart.yaml").exit_code == 0  # type: ignore[attr-defined]
    table = CliRunner().invoke(app, ["runs", "list"], env={"COLUMNS": "80"}, catch_exceptions=False)
    assert table.exit_code == 0
    assert "quickstart" in table.stdout
    assert "6 succeeded" in table.stdout


def test_runs_show_unknown_run_is_a_clear_error(cli: Callable[..., object], quickstart: Path) -> None:
    assert cli("apply", "pipelines/quickstart.yaml").exit_code == 0  # type: ignore[attr-defined]
    result = cli("runs", "show", "nope")
    assert result.exit_code == 1
    assert "no run 'nope'" in result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in result.output  # type: ignore[attr-defined]


def test_runs_without_a_store_is_a_clear_error(cli: Callable[..., object], project: Path) -> None:
    result = cli("runs", "list")
    assert result.exit_code == 1
    assert "no store" in result.stderr  # type: ignore[attr-defined]
    assert not (project / ".goatclaw").exists(), "reading must not create a store"


# -- plan, schema, version ------------------------------------------------------------------


def test_plan_text(cli: Callable[..., object], quickstart: Path) -> None:
    result = cli("plan", "pipelines/quickstart.yaml")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    out = result.stdout  # type: ignore[attr-defined]
    assert "quickstart: 6 tasks in 4 levels" in out
    assert out.index("catalog") < out.index("profile") < out.index("oldest") < out.index("report")


def test_plan_json(cli: Callable[..., object], quickstart: Path) -> None:
    result = cli("plan", "pipelines/quickstart.yaml", "--format", "json")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    doc = json.loads(result.stdout)  # type: ignore[attr-defined]
    assert doc["levels"] == [["catalog"], ["profile", "words"], ["oldest", "statically_typed"], ["report"]]
    assert doc["tasks"]["report"]["needs"] == ["profile", "words", "oldest", "statically_typed"]


def test_plan_mermaid_and_dot(cli: Callable[..., object], quickstart: Path) -> None:
    mermaid = cli("plan", "pipelines/quickstart.yaml", "-f", "mermaid")
    assert mermaid.exit_code == 0
    text = mermaid.stdout  # type: ignore[attr-defined]
    assert text.startswith("flowchart")
    assert text.count("-->") == 8
    dot = cli("plan", "pipelines/quickstart.yaml", "-f", "dot")
    assert dot.exit_code == 0
    text = dot.stdout  # type: ignore[attr-defined]
    assert text.startswith("digraph") and text.rstrip().endswith("}")
    assert text.count("->") == 8
    for tid in TASKS:
        assert tid in mermaid.stdout and tid in text  # type: ignore[attr-defined]


def test_schema_prints_json_schemas(cli: Callable[..., object]) -> None:
    pipeline = json.loads(cli("schema").stdout)  # type: ignore[attr-defined]
    assert "2020-12" in pipeline["$schema"]
    assert "tasks" in pipeline["properties"]
    project = cli("schema", "goatclaw")
    assert project.exit_code == 0
    assert "store" in json.loads(project.stdout)["properties"]  # type: ignore[attr-defined]
    bad = cli("schema", "nope")
    assert bad.exit_code == 2
    assert "unknown schema" in bad.stderr  # type: ignore[attr-defined]


def test_version(cli: Callable[..., object]) -> None:
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"goatclaw {goatclaw.__version__}"  # type: ignore[attr-defined]


# -- real subprocesses ------------------------------------------------------------------


def test_python_m_goatclaw_help(project: Path) -> None:
    done = goatclaw_cmd("--help", cwd=project)
    assert done.returncode == 0, done.stderr
    for command in ("apply", "validate", "plan", "schema", "runs"):
        assert command in done.stdout


@pytest.mark.slow
def test_subprocess_apply_prints_plain_lines_when_not_a_tty(quickstart: Path, project: Path) -> None:
    done = goatclaw_cmd("apply", "pipelines/quickstart.yaml", cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for tid in TASKS:
        assert any(re.fullmatch(rf"\s*✓ {tid} succeeded( in .*)?", line) for line in lines), done.stdout
    assert not any(re.match(r"\d\d:\d\d:\d\d ", line) for line in lines)
    assert "\x1b[" not in done.stdout, "no terminal escapes in a pipe"
    assert (project / "out" / "quickstart.md").is_file()


@pytest.mark.slow
def test_subprocess_apply_in_ci_stamps_lines(quickstart: Path, project: Path) -> None:
    done = goatclaw_cmd("apply", "pipelines/quickstart.yaml", cwd=project, CI="true")
    assert done.returncode == 0, done.stdout + done.stderr
    task_lines = [line for line in done.stdout.splitlines() if "catalog" in line]
    assert task_lines
    assert all(re.match(r"\d\d:\d\d:\d\d ", line) for line in task_lines), task_lines
    assert any(re.fullmatch(r"\d\d:\d\d:\d\d\s+✓ catalog succeeded( in .*)?", line) for line in task_lines)


@pytest.mark.slow
def test_subprocess_exit_codes(write_pipeline: Callable[..., Path], project: Path) -> None:
    write_pipeline(FAILING, name="failing.yaml")
    write_pipeline(INVALID, name="invalid.yaml")
    failed = goatclaw_cmd("apply", "failing.yaml", cwd=project)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    invalid = goatclaw_cmd("apply", "invalid.yaml", cwd=project)
    assert invalid.returncode == 2
    assert "invalid.yaml:4:" in invalid.stderr
    assert "Traceback" not in failed.stderr + invalid.stderr
    missing = goatclaw_cmd("runs", "show", "nope", cwd=project)
    assert missing.returncode == 1
    assert "no run 'nope'" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.slow
def test_subprocess_ctrl_c_exits_130_and_records_the_run_cancelled(write_pipeline: Callable[..., Path],
                                                                   project: Path) -> None:
    write_pipeline("""
        version: 1
        name: interrupted
        tasks:
          first: {uses: echo, with: {value: 1}}
          sleeper: {uses: shell, needs: first, with: {script: sleep 30}}
        """)
    proc = subprocess.Popen([sys.executable, "-m", "goatclaw", "apply", "p.yaml"], cwd=project,
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        began = time.monotonic()
        for line in proc.stdout:
            if "sleeper started" in line or time.monotonic() - began > 30:
                break
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    shown = goatclaw_cmd("runs", "show", "last", "--json", cwd=project)
    doc = json.loads(shown.stdout)
    assert doc["run"]["status"] == "cancelled"
    assert {t["task_id"]: t["status"] for t in doc["tasks"]} == {"first": "succeeded", "sleeper": "cancelled"}
