"""``goatclaw test`` and goatclaw.testing: pipeline tests in *.test.yaml files.

Real pipelines, real runs and real subprocesses: a right assertion passes, a wrong one
fails with exit 1 and shows the value it found, an invalid test file is refused at
file:line:col with exit 2, and the shipped examples in pipelines/ pass offline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import junitparser
import pytest
import xmlschema
from typer.testing import CliRunner

from goatclaw.cli.app import app
from goatclaw.errors import SpecError
from goatclaw.testing import PipelineTestFailed, collect, load_tests, operands, run_pipeline_test

REPO = Path(__file__).resolve().parent.parent
XSD = xmlschema.XMLSchema(Path(__file__).resolve().parent / "fixtures" / "junit" / "junit.xsd")

PIPELINE = """
version: 1
name: counting
vars:
  words: [a, bb, ccc]
tasks:
  fetch:
    uses: echo
    with: {value: "${{ vars.words }}"}
  summarize:
    uses: python
    needs: fetch
    with:
      function: builtins:len
      args: ["${{ tasks.fetch.output }}"]
  shout:
    uses: shell
    needs: fetch
    retry: {attempts: 1}
    with: {run: [sh, -c, "exit 7"]}
"""


def write_test(project: Path, body: str, name: str = "counting.test.yaml") -> Path:
    path = project / name
    path.write_text(textwrap.dedent(body).lstrip())
    return path


@pytest.fixture
def counting(write_pipeline: Callable[..., Path]) -> Path:
    return write_pipeline(PIPELINE, name="counting.yaml")


def goatclaw_test(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GOATCLAW_STORE", "CI")}
    return subprocess.run([sys.executable, "-m", "goatclaw", "test", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


RIGHT = """
version: 1
pipeline: counting.yaml
tests:
  counts:
    expect:
      status: failed
      tasks:
        fetch: succeeded
        summarize: {status: succeeded, output: 3}
        shout: {status: failed, error_class: internal, error: exited with code 7}
      asserts:
        - "tasks.summarize.output == 3"
        - "tasks.fetch.output | length == vars.words | length"
"""

WRONG = """
version: 1
pipeline: counting.yaml
tests:
  counts:
    expect:
      asserts:
        - "tasks.summarize.output == 3"
  miscounts:
    vars: {words: [a, b]}
    expect:
      asserts:
        - "tasks.summarize.output == 3"
"""


# -- passing and failing --------------------------------------------------------------------------------


def test_a_right_assertion_passes(project: Path, counting: Path) -> None:
    write_test(project, RIGHT)
    result = CliRunner().invoke(app, ["test"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].startswith("✓ counting.test.yaml::counts  ")
    assert "1 passed in" in result.stdout


def test_a_wrong_assertion_fails_with_the_value_found(project: Path, counting: Path) -> None:
    path = write_test(project, WRONG)
    result = CliRunner().invoke(app, ["test", str(path.name)])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("✓ counting.test.yaml::counts")
    assert lines[1].startswith("✗ counting.test.yaml::miscounts")
    assert lines[2] == "    counting.test.yaml:12:11: assert tasks.summarize.output == 3 is false"
    assert lines[3] == "      tasks.summarize.output = 2"
    assert "1 passed, 1 failed in" in lines[-1]


@pytest.mark.slow
def test_goatclaw_test_as_a_real_process(project: Path, counting: Path) -> None:
    write_test(project, RIGHT, "right.test.yaml")
    right = goatclaw_test("right.test.yaml", cwd=project)
    assert right.returncode == 0, right.stdout + right.stderr
    write_test(project, WRONG, "wrong.test.yaml")
    wrong = goatclaw_test(cwd=project)  # every *.test.yaml under the cwd
    assert wrong.returncode == 1
    assert "✓ right.test.yaml::counts" in wrong.stdout
    assert "✗ wrong.test.yaml::miscounts" in wrong.stdout
    assert "tasks.summarize.output = 2" in wrong.stdout
    assert "2 passed, 1 failed" in wrong.stdout
    assert "Traceback" not in wrong.stdout + wrong.stderr


def test_status_output_and_error_expectations_show_expected_and_actual(project: Path, counting: Path) -> None:
    write_test(project, """
        version: 1
        tests:
          wrong:
            expect:
              status: succeeded
              tasks:
                summarize: {output: 4}
                shout: {status: succeeded, error: "exit 9"}
                fetch: failed
        """)
    result = CliRunner().invoke(app, ["test"])
    assert result.exit_code == 1
    out = result.stdout
    assert "expected the run to be succeeded, it failed" in out
    assert "tasks.summarize.output: not the expected output" in out
    assert "expected: 4" in out and "actual:   3" in out
    assert "tasks.shout.status: expected succeeded, got failed" in out
    assert "tasks.shout.error: expected it to contain 'exit 9'" in out
    assert "tasks.fetch.status: expected failed, got succeeded" in out


def test_a_stubbed_task_does_not_run_and_gives_its_output(project: Path, counting: Path) -> None:
    write_test(project, """
        version: 1
        tests:
          stubbed:
            stubs:
              fetch: [x, y, z, w]
              shout: {exit_code: 0, stdout: "", stderr: ""}
            expect:
              status: succeeded
              tasks:
                summarize: {output: 4}
                shout: {status: succeeded, output: {exit_code: 0, stdout: "", stderr: ""}}
              asserts: ["tasks.shout.attempts == 0"]
        """)
    result = CliRunner().invoke(app, ["test"])
    assert result.exit_code == 0, result.output


def test_a_stubbed_fan_out_exposes_its_outputs(project: Path, write_pipeline: Callable[..., Path]) -> None:
    write_pipeline("""
        version: 1
        tasks:
          each:
            uses: shell
            foreach: [1, 2]
            with: {run: [sh, -c, "exit 1"]}
          total:
            uses: python
            needs: each
            with: {function: builtins:sum, args: ["${{ tasks.each.outputs }}"]}
        """, name="fan.yaml")
    write_test(project, """
        version: 1
        tests:
          sums:
            stubs: {each: [20, 22]}
            expect: {tasks: {total: {output: 42}}}
        """, "fan.test.yaml")
    assert CliRunner().invoke(app, ["test", "fan.test.yaml"]).exit_code == 0


def test_only_runs_the_named_tasks(project: Path, counting: Path) -> None:
    write_test(project, """
        version: 1
        tests:
          just-fetch:
            only: [summarize]
            expect:
              status: succeeded
              asserts: ["'shout' not in tasks"]
        """)
    result = CliRunner().invoke(app, ["test"])
    assert result.exit_code == 0, result.output


# -- invalid test files ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "expected"), [
    ("version: 1\ntests:\n  t:\n    expect: {statuss: failed}\n",
     "counting.test.yaml:4:14: tests.t.expect.statuss: unknown field 'statuss' (did you mean 'status'?)"),
    ("version: 1\ntests:\n  t:\n    stubs: {fecth: 1}\n    expect: {status: failed}\n",
     "counting.test.yaml:4:13: tests.t.stubs.fecth: the pipeline 'counting' has no task 'fecth'"),
    ("version: 1\ntests:\n  t:\n    expect:\n      asserts: ['tasks.a ==']\n",
     "counting.test.yaml:5:17: tests.t.expect.asserts[0]: invalid expression: unexpected"),
    ("version: 1\npipeline: nope.yaml\ntests:\n  t: {expect: {status: failed}}\n",
     "counting.test.yaml:2:11: pipeline: no pipeline file nope.yaml"),
    ("version: 1\ntests:\n  t:\n    expect: {tasks: {fetch: done}}\n",
     "counting.test.yaml:4:29: tests.t.expect.tasks.fetch: 'done' is not one of"),
])
def test_an_invalid_test_file_is_refused_at_file_line_col(project: Path, counting: Path, body: str,
                                                          expected: str) -> None:
    write_test(project, body)
    result = CliRunner().invoke(app, ["test", "counting.test.yaml"])
    assert result.exit_code == 2
    assert "E counting.test.yaml: invalid test file" in result.stdout
    assert any(line.strip().startswith(expected) for line in result.stdout.splitlines()), result.stdout
    assert "Traceback" not in result.output


def test_an_invalid_pipeline_is_reported_with_its_own_location(project: Path, write_pipeline) -> None:
    write_pipeline("version: 1\ntasks:\n  a: {uses: echo, needs: [zz]}\n", name="broken.yaml")
    write_test(project, "version: 1\ntests:\n  t: {expect: {status: failed}}\n", "broken.test.yaml")
    result = CliRunner().invoke(app, ["test"])
    assert result.exit_code == 2
    assert "broken.yaml:3:27: tasks.a.needs[0]: unknown task 'zz'" in result.stdout


def test_no_test_files_is_a_failure(project: Path) -> None:
    result = CliRunner().invoke(app, ["test"])
    assert result.exit_code == 1
    assert "no pipeline tests found" in result.stdout


def test_a_missing_path_is_a_usage_error(project: Path) -> None:
    result = CliRunner().invoke(app, ["test", "nowhere/"])
    assert result.exit_code == 2
    assert "nowhere: no such file or folder" in result.output


# -- the shipped examples ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_shipped_pipeline_tests_pass_offline(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}  # no API key: the llm tests replay the cassette
    done = subprocess.run([sys.executable, "-m", "goatclaw", "test", "pipelines/", "--report",
                           f"junit:{tmp_path / 'tests.xml'}"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "✓ pipelines/quickstart.test.yaml::default-topics" in done.stdout
    assert "✓ pipelines/llm-digest.test.yaml::digest-from-cassette" in done.stdout
    assert " failed" not in done.stdout
    XSD.validate(tmp_path / "tests.xml")
    suites = list(junitparser.JUnitXml.fromfile(str(tmp_path / "tests.xml")))
    assert {s.name for s in suites} == {"pipelines/quickstart.test.yaml", "pipelines/llm-digest.test.yaml",
                                        "pipelines/llm-cascade.test.yaml", "pipelines/agent-research.test.yaml",
                                        "pipelines/summarise-the-languages-catalogue-into-out.test.yaml",
                                        "pipelines/research-digest.test.yaml", "pipelines/code-fix.test.yaml",
                                        "pipelines/approval-example.test.yaml", "pipelines/capitals-eval.test.yaml",
                                        "pipelines/csv-report.test.yaml", "pipelines/api-harvest.test.yaml",
                                        "pipelines/deploy-and-wait.test.yaml"}
    assert "✓ pipelines/llm-cascade.test.yaml::cheap-first-then-escalate" in done.stdout
    assert "✓ pipelines/agent-research.test.yaml::reaches-its-goal-from-the-cassette" in done.stdout
    assert "✓ pipelines/api-harvest.test.yaml::harvests-every-page" in done.stdout
    assert "✓ pipelines/deploy-and-wait.test.yaml::deploys-v2-and-waits-for-health" in done.stdout
    assert "✓ pipelines/csv-report.test.yaml::cleans-and-reports" in done.stdout
    # the eval: a dataset of four rows, graded offline (the judge's answers are in the cassette too)
    assert [line.split("  ")[0] for line in done.stdout.splitlines() if "capitals-eval" in line and "✓" in line] == [
        f"✓ pipelines/capitals-eval.test.yaml::capitals[{row}]" for row in ("fr", "jp", "ke", "au")]
    assert "pipelines/capitals-eval.test.yaml::capitals: 4/4 rows passed (100%)" in done.stdout
    assert "judge-accepts-the-fact" in done.stdout and "close-to-reference" in done.stdout


def test_the_junit_report_of_a_failing_test_run_is_valid(project: Path, counting: Path) -> None:
    write_test(project, WRONG)
    result = CliRunner().invoke(app, ["test", "--report", "junit:out/t.xml"])
    assert result.exit_code == 1
    XSD.validate(project / "out" / "t.xml")
    cases = {c.name: c for s in junitparser.JUnitXml.fromfile(str(project / "out" / "t.xml")) for c in s}
    assert cases["counts"].is_passed
    assert "tasks.summarize.output = 2" in cases["miscounts"].result[0].text


# -- from Python and pytest --------------------------------------------------------------------------------


def test_run_pipeline_test_raises_an_assertion_error_listing_what_failed(project: Path, counting: Path) -> None:
    path = write_test(project, WRONG)
    with pytest.raises(AssertionError) as info:
        run_pipeline_test(path)
    assert isinstance(info.value, PipelineTestFailed)
    assert "miscounts failed" in str(info.value) and "tasks.summarize.output = 2" in str(info.value)
    results = run_pipeline_test(path, "counts")
    assert [r.passed for r in results] == [True]


def test_collect_gives_cases_to_parametrize(project: Path, counting: Path) -> None:
    write_test(project, WRONG)
    cases = collect(project)
    assert [str(c) for c in cases] == [f"{project / 'counting.test.yaml'}::counts",
                                       f"{project / 'counting.test.yaml'}::miscounts"]
    assert cases[0].check().passed
    with pytest.raises(PipelineTestFailed):
        cases[1].check()


def test_load_tests_raises_spec_error_for_an_invalid_file(project: Path, counting: Path) -> None:
    path = write_test(project, "version: 1\ntests: {}\n")
    with pytest.raises(SpecError) as info:
        load_tests(path)
    assert str(info.value.problems[0].location) == f"{path}:2:8"


@pytest.mark.parametrize(("source", "expected"), [
    ("tasks.summarize.output.count == 3", ["tasks.summarize.output.count"]),
    ("tasks.a.output | length > 0 and vars.x == 'a'", ["tasks.a.output | length", "vars.x"]),
    ("not tasks.a.output", ["tasks.a.output"]),
    ("x is not none", ["x"]),
    ("f(a == 1, b) == c", ["f(a == 1, b)", "c"]),
    ("tasks.a.ok", []),
])
def test_operands_are_the_sides_of_top_level_comparisons(source: str, expected: list[str]) -> None:
    assert operands(source) == expected


# -- the pytest plugin ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_pytest_plugin_collects_test_files_and_offers_a_fixture(project: Path, counting: Path) -> None:
    write_test(project, WRONG)
    (project / "test_fixture.py").write_text(textwrap.dedent("""
        def test_right(pipeline_test):
            results = pipeline_test("counting.test.yaml", "counts")
            assert [r.passed for r in results] == [True]
        """))
    env = {k: v for k, v in os.environ.items() if k not in ("GOATCLAW_STORE", "CI", "PYTEST_ADDOPTS")}
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "goatclaw.pytest_plugin", "-p", "no:cacheprovider",
                           "--rootdir", str(project), "-q", str(project)], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed, 2 passed" in done.stdout
    assert "FAILED counting.test.yaml::miscounts" in done.stdout
    assert "assert tasks.summarize.output == 3 is false" in done.stdout
    assert "tasks.summarize.output = 2" in done.stdout
    assert "Traceback" not in done.stdout


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its contents."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_goatclaw_test_leaves_the_repository_unchanged(write_pipeline: Callable[..., Path], project: Path) -> None:
    """A case whose pipeline writes files runs in a copy: the repository is byte for byte as before.

    A pre-commit hook that changes files fails the commit ("files were modified by this hook"),
    so ``goatclaw test`` must never write into the project it tests, store included.
    """
    write_pipeline("""
        version: 1
        tasks:
          report:
            uses: file.write
            with: {path: out/report.md, content: "written by the pipeline"}
          note:
            uses: shell
            with: {script: "echo more > notes.txt"}
    """, name="writer.yaml")
    write_test(project, """
        version: 1
        pipeline: writer.yaml
        tests:
          writes:
            expect:
              status: succeeded
              asserts: ["tasks.report.output.path == 'out/report.md'"]
    """, name="writer.test.yaml")
    before = _tree(project)
    result = CliRunner().invoke(app, ["test", "writer.test.yaml"])
    assert result.exit_code == 0, result.output
    assert "1 passed" in result.output
    assert _tree(project) == before, sorted(set(_tree(project)) ^ set(before))
    assert not (project / "out").exists() and not (project / "notes.txt").exists()
