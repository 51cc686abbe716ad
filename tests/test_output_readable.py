"""Output a person can read (#17.13, #17.9): what ``apply``, ``runs show``, ``why`` and ``doctor`` print.

Real runs through the CLI: a local HTTP server answering 404 with a whole HTML page, shell
scripts that fail, a fan-out, a Python function raising, an LLM call refused by a budget
(the local OpenAI-speaking server), warn rules, and the store's memory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from local_http import serving
from rich.text import Text
from typer.testing import CliRunner

from goatclaw.cli.app import app
from goatclaw.store import MIGRATIONS, Store

PAGE = ("<!DOCTYPE html>\n<html>\n<head>\n<title>404 Not Found</title>\n</head>\n<body>\n<h1>Not Found</h1>\n"
        "<p>The [bold]requested[/bold] URL was not found.</p>\n<hr>\n<address>Apache</address>\n</body>\n</html>\n")


class _NotFound(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = PAGE.encode()
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web() -> Iterator[str]:
    """A server that answers every GET with a 404 and a 12-line HTML page."""
    with serving(_NotFound) as url:
        yield url


def invoke(*args: str) -> object:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def _run_id(output: str) -> str:
    found = re.search(r"run (\d{8}-\d{6}-[0-9a-f]+)", output)
    assert found, output
    return found.group(1)


def test_a_404_page_is_one_bounded_line_in_the_live_table_the_log_and_the_summary(write_pipeline, web) -> None:
    write_pipeline(f"""
        version: 1
        name: fetching
        tasks:
          fetch:
            uses: http
            with: {{url: "{web}/missing"}}
        """)
    for output in ("rich", "plain"):
        result = invoke("apply", "p.yaml", "-o", output)
        assert result.exit_code == 1, result.output
        assert "returned 404 Not Found: <!DOCTYPE html> … (+11 lines)" in result.output, result.output
        assert "<body>" not in result.output and "</html>" not in result.output, result.output
    shown = invoke("runs", "show")
    assert "<head> … (+9 lines)" in shown.output and "<title>" not in shown.output, shown.output  # three lines
    full = json.loads(invoke("runs", "show", "--json").output)  # the store keeps the whole page
    assert full["tasks"][0]["error"].endswith("</html>")


def test_control_characters_and_markup_in_an_error_are_shown_escaped(write_pipeline, project: Path) -> None:
    (project / "steps.py").write_text("def boom():\n"
                                      "    raise ValueError('\\x1b[31m[bold]boom[/bold]\\x1b[0m\\nnext')\n")
    write_pipeline("""
        version: 1
        name: escaping
        tasks:
          py:
            uses: python
            with: {function: "steps:boom"}
        """)
    for output in ("rich", "plain"):
        result = invoke("apply", "p.yaml", "-o", output)
        assert result.exit_code == 1, result.output
        assert "\x1b[31m" not in result.output and "\\x1b[31m[bold]boom[/bold]\\x1b[0m" in result.output, \
            result.output
    shown = invoke("runs", "show")
    assert "\x1b" not in shown.output and "[bold]boom[/bold]" in shown.output, shown.output


def test_a_retry_line_does_not_repeat_the_whole_script(write_pipeline) -> None:
    write_pipeline("""
        version: 1
        name: retrying
        tasks:
          script:
            uses: shell
            retry: {attempts: 2, delay: 0s}
            with:
              script: |
                echo first
                : only-in-the-script
                echo the-reason >&2
                exit 3
        """)
    result = invoke("apply", "p.yaml", "-o", "plain")
    assert result.exit_code == 1, result.output
    retry, = [line for line in result.output.splitlines() if "↻" in line]
    assert "(internal: command exited with code 3: bash -c echo first …: the-reason); retrying" in retry, retry
    assert "only-in-the-script" not in result.output, result.output  # nor in the summary
    shown = invoke("runs", "show")
    assert "the-reason" in shown.output and "only-in-the-script" not in shown.output, shown.output


def test_fan_out_lines_name_their_item(write_pipeline) -> None:
    write_pipeline("""
        version: 1
        name: fanning
        tasks:
          fan:
            uses: shell
            foreach: [a, b, c]
            retry: {attempts: 2, delay: 0s}
            with: {script: "test ${{ item }} != b"}
        """)
    result = invoke("apply", "p.yaml", "-o", "plain")
    assert result.exit_code == 1, result.output
    assert "↻ fan[1] attempt 1 failed" in result.output, result.output
    assert re.search(r"✗ fan failed in \S+, 2 attempts: item 1: command exited with code 1", result.output), \
        result.output
    assert "✗ fan: internal: item 1: command exited with code 1" in result.output, result.output


def test_the_footer_under_the_live_table_and_the_summary_count_the_same_tasks(write_pipeline) -> None:
    write_pipeline("""
        version: 1
        name: counting
        tasks:
          a: {uses: shell, with: {script: "exit 1"}}
          b: {uses: shell, needs: [a], with: {script: "true"}}
          c: {uses: shell, if: "false", with: {script: "true"}}
        on_failure:
          notify: {uses: shell, with: {script: "true"}}
        finally:
          cleanup: {uses: shell, with: {script: "true"}}
        """)
    result = invoke("apply", "p.yaml", "-o", "rich")
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    summary = next(i for i, line in enumerate(lines) if line.startswith("✗ run "))
    counts = re.search(r"\((.*)\)$", lines[summary]).group(1)  # type: ignore[union-attr]
    assert counts == "1 failed, 1 skipped, 2 succeeded, 1 upstream_failed"
    assert lines[summary - 1].strip() == counts, result.output  # the footer, on its own line
    assert any("notify" in line and "succeeded" in line for line in lines[:summary]), result.output


def test_the_final_line_is_printed_once(write_pipeline) -> None:
    write_pipeline("""
        version: 1
        name: once
        tasks:
          a: {uses: shell, with: {script: "exit 1"}}
        """)
    result = invoke("apply", "p.yaml", "-o", "plain")
    assert result.exit_code == 1, result.output
    run_id = _run_id(result.output)
    assert len([line for line in result.output.splitlines() if f"run {run_id} failed in" in line]) == 1, \
        result.output


def test_a_budget_of_a_tenth_of_a_cent_is_not_printed_as_nothing_and_says_budget_once(write_pipeline, srv) -> None:
    write_pipeline(f"""
        version: 1
        name: spending
        budget: {{usd: 0.001}}
        tasks:
          ask:
            uses: llm
            retry: {{attempts: 1}}
            with: {{model: openai/gpt-4o, prompt: hi, max_tokens: 1000, api_base: {srv.api_base}, api_key: sk-test}}
        """)
    result = invoke("apply", "p.yaml", "-o", "plain")
    assert result.exit_code == 1, result.output
    assert "of the $0.001 budget" in result.output, result.output
    assert "$0.00 " not in result.output and "budget: budget:" not in result.output, result.output
    assert "✗ ask: budget: a call to openai/gpt-4o could cost $0.0" in result.output, result.output
    assert srv.requests == []


def test_a_python_exception_is_named_once(write_pipeline, project: Path) -> None:
    (project / "steps.py").write_text("def bad():\n    raise ValueError('bad value')\n")
    write_pipeline("""
        version: 1
        name: raising
        tasks:
          py: {uses: python, with: {function: "steps:bad"}}
        """)
    result = invoke("apply", "p.yaml", "-o", "plain")
    assert result.exit_code == 1, result.output
    assert "✗ py: ValueError: bad value" in result.output and "ValueError: ValueError" not in result.output
    shown = invoke("runs", "show")
    assert "ValueError: bad value" in shown.output and "ValueError: ValueError" not in shown.output, shown.output


def test_doctor_reports_the_schema_version_the_store_was_migrated_to(write_pipeline, store_path: Path) -> None:
    write_pipeline("""
        version: 1
        name: fine
        tasks:
          a: {uses: echo, with: {value: 1}}
        """)
    assert invoke("apply", "p.yaml", "-o", "plain").exit_code == 0
    with Store.open(store_path) as db:
        applied = db.db.execute("SELECT count(*) FROM migrations").fetchone()[0]
    assert applied == len(MIGRATIONS) > 0
    report = json.loads(invoke("doctor", "--json").output)
    assert report["store"]["schema_version"] == len(MIGRATIONS)
    assert f"schema_version {len(MIGRATIONS)}" in invoke("doctor").output


WARNED = """
    version: 1
    name: warned
    tasks:
      a:
        uses: echo
        with: {value: 3}
        validate:
          - expr: "output > 1"
          - {expr: "output > 10", severity: warn, message: small number}
      b:
        uses: echo
        with: {value: 3}
        validate:
          - {expr: "output > 10", severity: warn, message: also small}
          - {expr: "output > 5", message: too small}
    """


def test_warn_rules_are_shown_by_apply_and_runs_show(write_pipeline) -> None:
    write_pipeline(WARNED)
    for output in ("plain", "rich"):
        result = invoke("apply", "p.yaml", "-o", output, "--no-cache")
        assert result.exit_code == 1, result.output
        assert result.output.count("warning: a: rule 2 (expr): small number") == 1, result.output
        assert result.output.count("warning: b: rule 1 (expr): also small") == 1, result.output
    shown = invoke("runs", "show")
    assert "warning: a: rule 2 (expr): small number" in shown.output, shown.output
    assert "warning: b: rule 1 (expr): also small" in shown.output, shown.output


def test_a_rule_has_one_number_in_every_message(write_pipeline, project: Path) -> None:
    write_pipeline(WARNED)
    result = invoke("apply", "p.yaml", "-o", "plain", "--report", "junit:out/junit.xml",
                    "--report", "markdown:out/summary.md")
    assert result.exit_code == 1, result.output
    texts = {"apply": result.output, "junit": (project / "out" / "junit.xml").read_text(),
             "markdown": (project / "out" / "summary.md").read_text(),
             "runs show": invoke("runs", "show").output}
    for where, text in texts.items():
        assert "rule 2 (expr" in text and "too small" in text, (where, text)  # b's error rule: the second
        numbers = {int(n) for n in re.findall(r"rule (\d+)[^\n]*?too small", text)}
        assert numbers == {2}, (where, numbers, text)
    events = [json.loads(line) for line in invoke("runs", "events", "--json").output.splitlines()]
    verdicts = {(e["task"], e["data"]["message"]): e["data"]["rule"] for e in events if e["topic"] == "task.rule"}
    assert verdicts[("b", "too small")] == 2 and verdicts[("a", "small number")] == 2


TWINS = """
    version: 1
    name: twins
    tasks:
      left: {uses: shell, with: {script: "echo no such table: orders >&2; exit 4"}}
      right: {uses: shell, with: {script: "echo no such table: orders >&2; exit 4"}}
    """


def test_seen_before_and_why_never_list_a_failure_of_the_same_run(write_pipeline: Callable[..., Path]) -> None:
    write_pipeline(TWINS)
    first = invoke("apply", "p.yaml", "-o", "plain")
    assert first.exit_code == 1, first.output
    assert "seen before" not in first.output, first.output  # right's failure is not a past one for left
    why = json.loads(invoke("why", "--json").output)
    assert [t["similar"] for t in why["tasks"]] == [[], []], why
    assert "nothing like it was seen before" in invoke("why").output

    second = invoke("apply", "p.yaml", "-o", "plain")
    assert second.exit_code == 1, second.output
    assert "seen before" in second.output, second.output
    why = json.loads(invoke("why", "--json").output)
    past = [s for t in why["tasks"] for s in t["similar"]]
    assert past and all(s["count"] == 1 for s in past), past  # seen once before, not counting this run
    first_id = _run_id(first.output)
    assert all(first_id in (s["metadata"].get("runs") or [s["metadata"].get("run")]) for s in past), past



_NOT_SHOWN = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028-\u202e\u2066-\u2069]")


@given(st.text(), st.integers(1, 4), st.integers(2, 200))
def test_shown_text_is_bounded_and_carries_no_control_character(text: str, lines: int, width: int) -> None:
    from goatclaw.cli.text import shown

    out = shown(text, lines=lines, width=width)
    rows = out.split("\n") if out else []
    assert len(rows) <= lines
    assert not _NOT_SHOWN.search(out)
    for row in rows[:-1]:
        assert len(row) <= width
    if rows:
        assert len(re.sub(r" … \(\+\d+ lines?\)$", "", rows[-1])) <= width
    assert Text(out).plain == out and Text(out).spans == []  # printed as Text: as written, no style read from it


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_a_dollar_amount_keeps_what_a_person_needs(amount: float) -> None:
    from goatclaw.money import usd

    text = usd(amount)
    assert text.startswith(("$", "<$"))
    if amount >= 0.000001:
        shown_value = float(text.lstrip("<$").replace(",", ""))
        assert shown_value > 0 and abs(shown_value - amount) <= max(0.005, amount * 0.01) + 1e-6, (amount, text)


def test_a_stale_cached_output_names_the_rule_by_its_place_in_the_list(write_pipeline, srv, store_path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from openai_server import Reply

    import goatclaw

    srv.respond = lambda body: Reply(json.dumps({"verdict": "pass", "score": 1, "reason": "a number"}))
    monkeypatch.setenv("OPENAI_API_BASE", srv.api_base)  # where the judge of a non-llm task asks
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    path = write_pipeline("""
        version: 1
        name: judged
        vars: {least: 1}
        tasks:
          count:
            uses: echo
            with: {value: {n: 3}}
            validate:
              - {judge: It is a count, model: openai/gpt-4o-mini}
              - expr: "output.n >= vars.least"
        """)
    assert goatclaw.run(path).ok
    stricter = goatclaw.run(path, vars={"least": 5})
    assert "rule 2 (expr)" in (stricter.tasks["count"].error or ""), stricter.tasks["count"].error
    with Store.open(store_path) as db:
        stale, = [e for e in db.events(stricter.run_id) if e["topic"] == "task.cache.stale"]
    assert "rule 2 (expr)" in stale["data"]["reason"], stale
