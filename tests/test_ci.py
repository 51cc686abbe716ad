"""Pipelines as CI steps: JUnit/JSON/Markdown reports, CI output, --fail-on warn, --max-cost, annotations.

The JUnit report is checked two ways: against an XML Schema in the structure of
Jenkins' junit-10.xsd (tests/fixtures/junit/junit.xsd, validated by ``xmlschema``), and
by parsing it with ``junitparser``, the library CI tools use to read such files.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import junitparser
import pytest
import xmlschema
from typer.testing import CliRunner

from goatclaw import reports
from goatclaw.cli.app import app
from goatclaw.errors import GoatclawError
from goatclaw.store import Store

FIXTURES = Path(__file__).resolve().parent / "fixtures"
XSD = xmlschema.XMLSchema(FIXTURES / "junit" / "junit.xsd")

# a run with every outcome: success, a validation failure, a skipped task, an upstream failure,
# a fan-out with one failing item out of three (fail_fast: false), a warn rule that did not pass
MIXED = """
version: 1
name: mixed
tasks:
  ok:
    uses: echo
    with: {value: 3}
    validate:
      - expr: "output > 10"
        severity: warn
        message: small number
  checked:
    uses: echo
    needs: ok
    with: {value: 2}
    retry: {attempts: 1}
    validate:
      - expr: "output >= 5"
        message: "output must be at least 5"
  never:
    uses: echo
    if: "false"
    with: {value: 1}
  after:
    uses: echo
    needs: checked
    with: {value: 1}
  items:
    uses: shell
    foreach: [0, 1, 0]
    fail_fast: false
    retry: {attempts: 1}
    with: {run: [sh, -c, "exit ${{ item }}"]}
"""


def invoke(*args: str, env: dict[str, str] | None = None) -> object:
    return CliRunner().invoke(app, list(args), env=env)


@pytest.fixture
def mixed_run(write_pipeline: Callable[..., Path], project: Path) -> Path:
    """``apply`` the mixed pipeline with all three reports; the folder holding them."""
    write_pipeline(MIXED)
    result = invoke("apply", "p.yaml", "--output", "plain", "--report", "junit:out/junit.xml",
                    "--report", "json:out/report.json", "--report", "markdown:out/summary.md")
    assert result.exit_code == 1, result.output
    return project / "out"


# -- JUnit -----------------------------------------------------------------------------------------------


def test_the_junit_report_is_valid_against_the_junit_schema(mixed_run: Path) -> None:
    XSD.validate(mixed_run / "junit.xml")  # raises XMLSchemaValidationError with the reason


def test_the_junit_report_parses_with_one_case_per_task_and_fan_out_item(mixed_run: Path) -> None:
    xml = junitparser.JUnitXml.fromfile(str(mixed_run / "junit.xml"))
    suites = list(xml)
    assert [s.name for s in suites] == ["mixed"]
    cases = {c.name: c for c in suites[0]}
    # plan order (level by level, file order within a level), each fan-out followed by its items
    assert list(cases) == ["ok", "never", "items", "items[0]", "items[1]", "items[2]", "checked", "after"]
    outcome = {name: [type(r).__name__ for r in c.result] for name, c in cases.items()}
    assert outcome["ok"] == [] and outcome["items[0]"] == [] and outcome["items[2]"] == []
    assert outcome["checked"] == ["Failure"] and outcome["items"] == ["Failure"] and outcome["items[1]"] == ["Failure"]
    assert outcome["never"] == ["Skipped"] and outcome["after"] == ["Skipped"]
    suite = suites[0]
    assert (suite.tests, suite.failures, suite.skipped, suite.errors) == (8, 3, 2, 0)


def test_a_failure_carries_its_error_class_error_and_the_rule_that_rejected_it(mixed_run: Path) -> None:
    xml = junitparser.JUnitXml.fromfile(str(mixed_run / "junit.xml"))
    cases = {c.name: c for s in xml for c in s}
    failure = cases["checked"].result[0]
    assert failure.type == "validation"
    assert "output must be at least 5" in failure.message
    assert "rule 1 (expr, error): output must be at least 5" in failure.text
    item = cases["items[1]"].result[0]
    assert item.type == "internal" and "command exited with code 1" in item.message
    assert cases["items"].result[0].message.startswith("1 of 3 items failed; item 1: command exited with code 1")
    assert "upstream_failed: needs checked" in cases["after"].result[0].message
    assert "if: was false" in cases["never"].result[0].message
    # the warn rule does not fail its task; it is shown in the task's output
    assert "warning: rule 1 (expr, warn): small number" in cases["ok"].system_out


def test_the_junit_schema_is_not_a_rubber_stamp(mixed_run: Path) -> None:
    text = (mixed_run / "junit.xml").read_text()
    broken = text.replace('<testcase name="ok"', "<testcase", 1)  # name is required
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        XSD.validate(broken)
    wrong_order = re.sub(r"(<failure [^>]*>)", r"<system-out>x</system-out>\1", text, count=1)
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        XSD.validate(wrong_order)


def test_control_characters_in_an_error_still_give_valid_xml(write_pipeline: Callable[..., Path],
                                                             project: Path) -> None:
    write_pipeline("""
        version: 1
        tasks:
          bell:
            uses: shell
            retry: {attempts: 1}
            with: {script: "printf 'ring\\a\\b' >&2; exit 3"}
        """)
    invoke("apply", "p.yaml", "--output", "plain", "--report", "junit:j.xml")
    XSD.validate(project / "j.xml")
    junitparser.JUnitXml.fromfile(str(project / "j.xml"))


def test_report_text_escapes_what_xml_cannot_hold_as_pytest_does() -> None:
    assert reports.xml_text("a\x00b\x1b[31mc\x7f") == "a#x00b#x1B[31mc\x7f"
    assert reports.xml_text("\ud800 \ufffe \uffff") == "#xD800 #xFFFE #xFFFF"
    kept = "tab\tnl\ncr\r é ☃ 😀 \ufffd"
    assert reports.xml_text(kept) == kept  # legal XML stays as it was, a U+FFFD the task wrote included


# -- JSON and Markdown ---------------------------------------------------------------------------------------


def test_the_json_report_holds_the_run_tasks_items_and_verdicts(mixed_run: Path) -> None:
    data = json.loads((mixed_run / "report.json").read_text())
    assert data["run"]["status"] == "failed" and data["run"]["pipeline"] == "mixed"
    tasks = {t["id"]: t for t in data["tasks"]}
    assert tasks["ok"]["outcome"] == "passed" and tasks["ok"]["output"] == 3
    assert tasks["checked"]["error_class"] == "validation"
    assert [v["message"] for v in tasks["checked"]["verdicts"]] == ["output must be at least 5"]
    assert [i["outcome"] for i in tasks["items"]["items"]] == ["passed", "failed", "passed"]
    assert data["counts"] == {"succeeded": 1, "failed": 2, "skipped": 1, "upstream_failed": 1}
    assert data["cost"]["usd"] == 0 and data["cost"]["over"] is False


def test_the_markdown_report_has_a_status_table_and_the_failures(mixed_run: Path) -> None:
    text = (mixed_run / "summary.md").read_text()
    assert text.startswith("## ❌ mixed: failed\n")
    assert "| task | status | attempts | time | cost | detail |" in text
    assert re.search(r"^\| `checked` \| ❌ failed \| 1 \|", text, re.M)
    assert "| `items` | ❌ failed |" in text and "2/3 items passed" in text
    assert "### Failures" in text and "- **`checked`** (validation)" in text
    assert "  - rule 1 (expr, error): output must be at least 5" in text
    assert "### Warnings" in text and "small number" in text


def test_markdown_appends_as_github_step_summary_expects(write_pipeline: Callable[..., Path], project: Path) -> None:
    write_pipeline("version: 1\nname: tiny\ntasks:\n  a: {uses: echo, with: {value: 1}}\n")
    summary = project / "summary.md"
    summary.write_text("# earlier step\n")
    for _ in range(2):
        assert invoke("apply", "p.yaml", "--output", "plain", "--report", f"markdown:{summary}").exit_code == 0
    text = summary.read_text()
    assert text.startswith("# earlier step\n") and text.count("## ✅ tiny: succeeded") == 2


def test_runs_report_makes_the_same_report_later(mixed_run: Path, project: Path) -> None:
    result = invoke("runs", "report", "last", "--format", "junit")
    assert result.exit_code == 0, result.output
    assert result.stdout == (mixed_run / "junit.xml").read_text()
    md = invoke("runs", "report", "--format", "markdown")
    assert md.stdout == (mixed_run / "summary.md").read_text()
    invoke("runs", "report", "--format", "json", "--output", "again.json")
    assert json.loads((project / "again.json").read_text()) == json.loads((mixed_run / "report.json").read_text())


def test_runs_report_of_an_unknown_run_is_a_clear_error(mixed_run: Path) -> None:
    result = invoke("runs", "report", "nope")
    assert result.exit_code == 1
    assert "no run 'nope'" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("spec", ["junit", "xml:out.xml", "junit:", ":x"])
def test_a_bad_report_option_is_a_usage_error_before_anything_runs(write_pipeline: Callable[..., Path],
                                                                   store_path: Path, spec: str) -> None:
    write_pipeline("version: 1\ntasks:\n  a: {uses: echo}\n")
    result = invoke("apply", "p.yaml", "--report", spec)
    assert result.exit_code == 2
    assert "--report" in result.output and "FORMAT:PATH" in result.output
    assert not store_path.exists()


def test_an_unwritable_report_path_is_a_clear_error(write_pipeline: Callable[..., Path], project: Path) -> None:
    write_pipeline("version: 1\ntasks:\n  a: {uses: echo}\n")
    (project / "blocker").write_text("a file, not a folder")
    result = invoke("apply", "p.yaml", "--output", "plain", "--report", "junit:blocker/j.xml")
    assert result.exit_code == 1
    assert "cannot write the junit report to blocker/j.xml" in result.output
    assert "Traceback" not in result.output


# -- CI output -----------------------------------------------------------------------------------------------


def test_in_ci_apply_prints_plain_timestamped_lines_even_when_rich_is_asked(
        write_pipeline: Callable[..., Path]) -> None:
    write_pipeline("version: 1\nname: tiny\ntasks:\n  a: {uses: echo, with: {value: 1}}\n")
    for output in ("auto", "rich"):
        result = invoke("apply", "p.yaml", "--output", output, "--no-cache", env={"CI": "true"})
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert re.fullmatch(r"\d\d:\d\d:\d\d run \S+ started: tiny \(1 tasks\)", lines[0]), lines
        assert any(re.fullmatch(r"\d\d:\d\d:\d\d   ✓ a succeeded in \d+ms", line) for line in lines), lines
        assert "\x1b[" not in result.stdout  # no live view, no cursor movement


@pytest.mark.slow
def test_in_ci_a_real_process_never_waits_for_input(write_pipeline: Callable[..., Path], project: Path) -> None:
    write_pipeline("version: 1\nname: tiny\ntasks:\n  a: {uses: echo, with: {value: 1}}\n")
    env = {**os.environ, "CI": "true"}
    env.pop("GOATCLAW_STORE", None)
    done = subprocess.run([sys.executable, "-m", "goatclaw", "apply", "p.yaml", "--report", "junit:j.xml"],
                          cwd=project, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert re.match(r"\d\d:\d\d:\d\d run ", done.stdout)
    XSD.validate(project / "j.xml")


# -- --fail-on warn -------------------------------------------------------------------------------------------

# a judge rule with no model configured is a warning at validate time (line 5, column 24)
WARNS = """
version: 1
tasks:
  a:
    uses: echo
    validate: [{judge: The value is good}]
"""


def test_validate_passes_warnings_unless_fail_on_warn(write_pipeline: Callable[..., Path]) -> None:
    write_pipeline(WARNS)
    plain = invoke("validate", "p.yaml")
    assert plain.exit_code == 0, plain.output
    failing = invoke("validate", "p.yaml", "--fail-on", "warn")
    assert failing.exit_code == 2
    assert "p.yaml:5:24: tasks.a.validate[0].judge: a judge rule needs a model" in failing.output
    assert "✓" not in failing.output


def test_validate_github_prints_warnings_as_warning_annotations(write_pipeline: Callable[..., Path]) -> None:
    write_pipeline(WARNS)
    result = invoke("validate", "p.yaml", "--format", "github", "--fail-on", "warn")
    assert result.exit_code == 2
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("::warning file=p.yaml,line=5,col=24::tasks.a.validate[0].judge: a judge rule needs "
                               "a model"), lines


def test_apply_fail_on_warn_refuses_a_pipeline_with_warnings(write_pipeline: Callable[..., Path],
                                                            store_path: Path) -> None:
    write_pipeline(WARNS)
    result = invoke("apply", "p.yaml", "--output", "plain", "--fail-on", "warn")
    assert result.exit_code == 2
    assert "p.yaml:5:24: tasks.a.validate[0].judge" in result.output
    assert not store_path.exists()


def test_apply_fail_on_warn_fails_a_run_whose_warn_rule_did_not_pass(write_pipeline: Callable[..., Path]) -> None:
    write_pipeline("""
        version: 1
        tasks:
          a:
            uses: echo
            with: {value: 3}
            validate: [{expr: "output > 10", severity: warn, message: small number}]
        """)
    assert invoke("apply", "p.yaml", "--output", "plain").exit_code == 0
    result = invoke("apply", "p.yaml", "--output", "plain", "--fail-on", "warn", "--no-cache")
    assert result.exit_code == 1
    assert "warning: a: rule 1 (expr): small number" in result.output
    assert "1 warning(s) and --fail-on warn" in result.output


# -- GitHub annotations at the right lines, as a real process ----------------------------------------------


@pytest.mark.slow
def test_github_annotations_from_a_real_process_point_at_the_errors(project: Path) -> None:
    (project / "bad.yaml").write_text(
        "version: 1\n"                      # 1
        "tasks:\n"                          # 2
        "  fetch:\n"                        # 3
        "    uses: echo\n"                  # 4
        "    retry: {attempts: -1}\n"       # 5: -1 at column 23
        "  parse:\n"                        # 6
        "    uses: echo\n"                  # 7
        "    needs: [fetch, nope]\n"        # 8: nope at column 20
        "    priority: high\n")             # 9: high at column 15
    env = {k: v for k, v in os.environ.items() if k not in ("GOATCLAW_STORE", "CI")}
    done = subprocess.run([sys.executable, "-m", "goatclaw", "validate", "bad.yaml", "--format", "github"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stdout.splitlines() == [
        "::error file=bad.yaml,line=5,col=23::tasks.fetch.retry.attempts: -1 is less than the minimum of 1",
        "::error file=bad.yaml,line=8,col=20::tasks.parse.needs[1]: unknown task 'nope'",
        "::error file=bad.yaml,line=9,col=15::tasks.parse.priority: 'high' is not of type 'integer'",
    ]


# -- the report module from Python --------------------------------------------------------------------------


def test_reports_build_from_the_store_by_run_prefix(mixed_run: Path, store_path: Path) -> None:
    report = reports.build(store_path, "last")
    again = reports.build(store_path, report.run.id[:17])
    assert again.run.id == report.run.id
    assert [t.id for t in report.tasks] == ["ok", "never", "items", "checked", "after"]
    assert reports.render(report, "junit") == (mixed_run / "junit.xml").read_text()


def test_reports_refuse_an_unknown_format(mixed_run: Path, store_path: Path) -> None:
    with pytest.raises(GoatclawError, match="unknown report format 'pdf'"):
        reports.render(reports.build(store_path), "pdf")


# -- --max-cost (a real local OpenAI-compatible server; litellm prices gpt-4o-mini) --------------------------


def spending(write_pipeline: Callable[..., Path], api_base: str, *, max_tokens: str = "max_tokens: 10",
             second: bool = True) -> Path:
    def task(prompt: str) -> str:
        return ("    uses: llm\n    retry: {attempts: 1}\n    with: {model: openai/gpt-4o-mini, prompt: " + prompt +
                f", api_base: {api_base}, api_key: sk-test, {max_tokens}}}\n")

    text = "version: 1\nname: spend\ntasks:\n  first:\n" + task("hi")
    if second:
        text += "  second:\n    needs: first\n" + task("hi again")
    return write_pipeline(text)


@pytest.mark.slow
def test_max_cost_stops_the_run_before_a_call_it_cannot_afford(write_pipeline: Callable[..., Path], srv,
                                                               project: Path) -> None:
    # each call: ~8 prompt tokens + max_tokens 10 estimated (~$7e-06), 11 + 7 tokens charged ($5.85e-06)
    spending(write_pipeline, srv.api_base)
    result = invoke("apply", "p.yaml", "--output", "plain", "--max-cost", "0.00001", "--report", "junit:j.xml",
                    "--report", "markdown:s.md")
    assert result.exit_code == 1, result.output
    assert "--max-cost $0.00001 stopped the run: second could not afford a call (spent $0.000006)" in result.output
    assert len(srv.requests) == 1
    cases = {c.name: c for s in junitparser.JUnitXml.fromfile(str(project / "j.xml")) for c in s}
    assert cases["first"].is_passed and cases["second"].result[0].type == "budget"
    assert "**Cost:** $0.000006 of --max-cost $0.00001 (1 LLM calls" in (project / "s.md").read_text()


@pytest.mark.slow
def test_max_cost_fails_a_run_that_spent_more_than_it_estimated(write_pipeline: Callable[..., Path], srv,
                                                                 project: Path) -> None:
    # max_tokens 1 is estimated (~$1.8e-06, under the cap) and let through; the server charges 7 completion tokens
    # anyway ($5.85e-06): a run that spends past --max-cost after the fact still fails
    spending(write_pipeline, srv.api_base, max_tokens="max_tokens: 1", second=False)
    result = invoke("apply", "p.yaml", "--output", "plain", "--max-cost", "0.000002", "--report", "junit:j.xml")
    assert result.exit_code == 1, result.output
    assert re.search(r"run \S+ cost \$0\.000006, over --max-cost \$0\.000002", result.output), result.output
    XSD.validate(project / "j.xml")
    cases = {c.name: c for s in junitparser.JUnitXml.fromfile(str(project / "j.xml")) for c in s}
    assert cases["first"].is_passed
    assert cases["(run)"].result[0].type == "budget"
    assert "over --max-cost" in cases["(run)"].result[0].message
    assert cases["(run)"].result[0].message.count("over") == 1  # said once
    with Store.open(project / ".goatclaw" / "goatclaw.db") as db:
        (run,) = db.runs()
    assert run.status == "failed" and "over max_cost $0.000002" in (run.error or "")  # the store agrees with CI


@pytest.mark.slow
def test_a_run_within_max_cost_passes_and_reports_its_cost(write_pipeline: Callable[..., Path], srv,
                                                           project: Path) -> None:
    spending(write_pipeline, srv.api_base)
    result = invoke("apply", "p.yaml", "--output", "plain", "--max-cost", "1", "--report", "json:r.json")
    assert result.exit_code == 0, result.output
    cost = json.loads((project / "r.json").read_text())["cost"]
    assert cost["calls"] == 2 and cost["usd"] == pytest.approx(2 * 5.85e-06) and cost["over"] is False


# -- integrations: the pre-commit hooks and the Dockerfile -------------------------------------------------


REPO = Path(__file__).resolve().parent.parent


def test_the_pre_commit_hook_validates_the_shipped_pipelines_and_skips_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    hooks = {h["id"]: h for h in yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())}
    hook = hooks["goatclaw-validate"]
    assert hook["entry"] == "goatclaw validate" and hook["language"] == "python"
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "pipelines").rglob("*") if p.is_file())
    chosen = [f for f in files if re.search(hook["files"], f) and not re.search(hook["exclude"], f)]
    assert "pipelines/quickstart.yaml" in chosen and "pipelines/llm-digest.yaml" in chosen
    assert not [f for f in chosen if f.endswith((".test.yaml", ".json", ".py"))]
    monkeypatch.chdir(REPO)
    result = invoke(*hook["entry"].split()[1:], *chosen)  # what pre-commit runs, on the files it would pass
    assert result.exit_code == 0, result.output
    assert hooks["goatclaw-test"]["entry"] == "goatclaw test" and hooks["goatclaw-test"]["pass_filenames"] is False


def test_the_dockerfile_installs_goatclaw_and_runs_it() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert 'ENTRYPOINT ["goatclaw"]' in text
    assert re.search(r'^RUN pip install "\.\[serve\]" ', text, re.M)  # the HTTP API's extra too (docs/serve.md)
    assert re.search(r"GOATCLAW_SERVE_HOST=0\.0\.0\.0", text) and re.search(r"^EXPOSE 8750$", text, re.M)
    assert re.search(r"^USER \w+", text, re.M)  # not root
    for copied in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for name in copied.split():
            assert (REPO / name).exists(), name
