"""Evals in pipeline tests: assertion kinds, datasets with a summary and reports, baselines and the regression gate.

Real pipelines and runs; the LLM tasks and the llm_rubric judge talk to the local OpenAI
server (tests/openai_server.py); ``similar`` embeds with the memory room's wordllama,
offline. Every assertion kind is shown passing and failing, and a failure shows the
value found.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import junitparser
import pytest
from openai_server import FakeOpenAI, Reply, final, scripted, tool_call
from typer.testing import CliRunner

from goatclaw.cli.app import app
from goatclaw.testing import load_tests, run_pipeline_test

ANSWERS = """
version: 1
name: answers
vars:
  city: Paris
tasks:
  answer:
    uses: echo
    with: {value: "The capital of France is ${{ vars.city }}."}
  record:
    uses: echo
    needs: answer
    with: {value: '{"city": "${{ vars.city }}", "population": 2100000}'}
"""


def write(project: Path, text: str, name: str) -> Path:
    path = project / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.fixture
def answers(write_pipeline: Callable[..., Path]) -> Path:
    return write_pipeline(ANSWERS, name="answers.yaml")


def outcomes(project: Path, asserts: str, vars: str = "{}") -> list[Any]:
    """Run one case with ``asserts`` (YAML list items) and give every outcome."""
    write(project, f"""
        version: 1
        pipeline: answers.yaml
        tests:
          t:
            vars: {vars}
            expect:
              asserts:
                {textwrap.indent(textwrap.dedent(asserts).strip(), " " * 16).lstrip()}
        """, "answers.test.yaml")
    (result,) = run_pipeline_test(project / "answers.test.yaml", check=False)
    return list(result.outcomes)


# -- the kinds ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("item", "passes"), [
    ("- {contains: Paris, task: answer}", True),
    ("- {contains: Lyon, task: answer}", False),
    ("- {contains: [France, Paris], task: answer}", True),
    ("- {contains: [France, Lyon], task: answer}", False),
    ("- {icontains: 'capital of FRANCE', task: answer}", True),
    ("- {contains: 'capital of FRANCE', task: answer}", False),
    ("- {contains_any: [Lyon, Paris], task: answer}", True),
    ("- {contains_any: [Lyon, Nice], task: answer}", False),
    ("- {contains_all: [The, Paris], task: answer}", True),
    ("- {starts_with: The capital, task: answer}", True),
    ("- {starts_with: capital, task: answer}", False),
    ("- {equals: The capital of France is Paris., task: answer}", True),
    ("- {equals: The capital, task: answer}", False),
    ("- {regex: '^The \\w+ of France is [A-Z][a-z]+\\.$', task: answer}", True),
    ("- {regex: '\\d{4}', task: answer}", False),
    ("- {regex: 'PARIS', ignore_case: true, task: answer}", True),
    ("- {is_json: true, task: record}", True),
    ("- {is_json: true, task: answer}", False),
    ("- {is_json: {schema: {type: object, required: [city, population]}}, task: record}", True),
    ("- {is_json: {schema: {type: object, required: [mayor]}}, task: record}", False),
    ("- {levenshtein: The capital of France is Pariss, task: answer}", True),
    ("- {levenshtein: The capital of Spain is Madrid., max: 3, task: answer}", False),
    ("- {contains: Paris, not: true, task: answer}", False),
    ("- {contains: Lyon, not: true, task: answer}", True),
    ("- {contains: '${{ vars.city }}', task: answer}", True),
    ("- {contains: Paris, value: '${{ tasks.record.output }}'}", True),
    ("- {contains: Paris}", True),  # no task: the run's last task (record)
    ("- {latency: 60000}", True),
    ("- {latency: 0}", False),
    ("- {latency: 60000, task: answer}", True),
    ("- {cost: 0}", True),
])
def test_each_kind_passes_and_fails(project: Path, answers: Path, item: str, passes: bool) -> None:
    (outcome,) = outcomes(project, item)
    assert outcome.passed is passes, outcome
    assert outcome.found or not passes  # what was checked is named even when it passed


def test_a_failing_assertion_prints_the_value_found(project: Path, answers: Path) -> None:
    write(project, """
        version: 1
        tests:
          wrong-city:
            vars: {city: Lyon}
            expect:
              asserts:
                - {contains: Paris, task: answer}
                - {regex: '^\\d+$', task: answer, name: digits-only}
                - {is_json: {schema: {type: object, required: [mayor]}}, task: record}
                - {levenshtein: The capital of France is Paris., max: 3, task: answer}
        """, "answers.test.yaml")
    result = CliRunner().invoke(app, ["test", "answers.test.yaml"])
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("✗ answers.test.yaml::wrong-city")
    assert lines[1] == "    answers.test.yaml:7:11: assert contains Paris: failed"
    assert lines[2] == '      tasks.answer.output = "The capital of France is Lyon."'
    assert lines[3] == "      missing: 'Paris'"
    assert "    answers.test.yaml:8:11: assert digits-only: failed" in lines
    assert "      no match" in lines
    assert any("'mayor' is a required property" in line for line in lines), lines
    assert any(line.endswith("(distance 5)") for line in lines) and "      edit distance 5 > 3" in lines


@pytest.mark.parametrize(("items", "expected"), [
    ("- {contains: x, icontains: y}", ["answers.test.yaml:6:11: tests.t.expect.asserts[0]: has 'contains' and "
                                       "'icontains'; use exactly one of them"]),
    ("- {contain: x}", ["answers.test.yaml:6:12: tests.t.expect.asserts[0].contain: unknown field 'contain' "
                        "(did you mean 'contains'?)"]),
    ("- {similar: x, threshold: 2}", ["answers.test.yaml:6:35: tests.t.expect.asserts[0].threshold: 2 is greater "
                                      "than the maximum of 1"]),
    ("- {trajectory: [a], order: random}", ["answers.test.yaml:6:36: tests.t.expect.asserts[0].order: 'random' is "
                                            "not one of"]),
    ("- {regex: '(a', task: answer}", ["answers.test.yaml:6:19: tests.t.expect.asserts[0].regex: missing ): (a"]),
    ("- {contains: x, task: nope}", ["answers.test.yaml:6:31: tests.t.expect.asserts[0].task: the pipeline 'answers' "
                                     "has no task 'nope'"]),
    ("- {contains: '${{ vars. }}'}", ["answers.test.yaml:6:22: tests.t.expect.asserts[0].contains: invalid "
                                      "expression"]),
])
def test_an_invalid_assertion_is_refused_at_file_line_col(project: Path, answers: Path, items: str,
                                                          expected: list[str]) -> None:
    write(project, f"version: 1\ntests:\n  t:\n    expect:\n      asserts:\n        {items}\n", "answers.test.yaml")
    result = CliRunner().invoke(app, ["test", "answers.test.yaml"])
    assert result.exit_code == 2, result.output
    lines = [line.strip() for line in result.stdout.splitlines()]
    for want in expected:
        assert any(line.startswith(want) for line in lines), result.stdout
    assert "Traceback" not in result.output


def test_similar_uses_the_memory_embedder_offline(project: Path, answers: Path) -> None:
    near, far = outcomes(project, """
        - {similar: 'Paris is the capital city of France.', task: answer, threshold: 0.6}
        - {similar: 'Photosynthesis converts light into chemical energy.', task: answer, threshold: 0.6}
        """)
    assert near.passed and near.score is not None and near.score >= 0.6, near
    assert not far.passed and far.score is not None and far.score < near.score, far
    assert "similarity" in far.found and far.message.startswith("similarity ")


def _judge(body: dict[str, Any]) -> Reply:
    """A judge that passes an output naming Paris, and fails any other."""
    asked = body["messages"][-1]["content"]
    ok = "Paris" in asked.split("Output:", 1)[1]
    return Reply(json.dumps({"verdict": "pass" if ok else "fail", "score": 0.9 if ok else 0.2,
                             "reason": "names the capital" if ok else "wrong city"}))


def test_llm_rubric_asks_the_validation_rooms_judge(project: Path, answers: Path, srv: FakeOpenAI) -> None:
    srv.respond = _judge
    rubric = (f"- {{llm_rubric: Names the capital of France, task: answer, model: openai/gpt-4o-mini, "
              f"api_base: '{srv.api_base}', api_key: sk-test}}")
    (good,) = outcomes(project, rubric)
    assert good.passed and good.score == pytest.approx(0.9)
    (bad,) = outcomes(project, rubric, vars="{city: Lyon}")
    assert not bad.passed and bad.score == pytest.approx(0.2) and "wrong city" in bad.message
    assert len(srv.requests) == 2
    asked = srv.requests[0]["messages"]
    assert "strict reviewer" in asked[0]["content"] and "Criterion: Names the capital of France" in asked[1]["content"]


def test_cost_counts_the_runs_llm_calls(project: Path, write_pipeline: Callable[..., Path], srv: FakeOpenAI) -> None:
    write_pipeline(f"""
        version: 1
        name: priced
        tasks:
          ask:
            uses: llm
            retry: {{attempts: 1}}
            with: {{model: openai/gpt-4o-mini, prompt: hi, api_base: '{srv.api_base}', api_key: sk-test}}
        """, name="priced.yaml")
    write(project, """
        version: 1
        pipeline: priced.yaml
        tests:
          t:
            llm: live
            expect:
              asserts:
                - {cost: 1.0}
                - {cost: 0.000001, task: ask}
                - {contains: hi, task: ask}
        """, "priced.test.yaml")
    (result,) = run_pipeline_test(project / "priced.test.yaml", check=False)
    cheap, tight, said = result.outcomes
    assert cheap.passed and said.passed
    assert not tight.passed and tight.found.startswith("tasks.ask cost = $0.0000")  # 11 + 7 tokens of gpt-4o-mini
    assert result.cost_usd > 0.000001 and result.tokens == 18


def test_trajectory_checks_the_tools_called(project: Path, write_pipeline: Callable[..., Path],
                                            srv: FakeOpenAI) -> None:
    srv.respond = scripted(Reply(None, tool_calls=[tool_call("say", {"value": "a"})]),
                           Reply(None, tool_calls=[tool_call("shout", {"value": "b"})]), final)
    write_pipeline(f"""
        version: 1
        name: agentic
        tasks:
          ask:
            uses: llm
            retry: {{attempts: 1}}
            with:
              model: openai/gpt-4o-mini
              api_base: '{srv.api_base}'
              api_key: sk-test
              prompt: go
              tools: [{{uses: echo, name: say}}, {{uses: echo, name: shout}}, {{uses: echo, name: whisper}}]
        """, name="agentic.yaml")
    write(project, """
        version: 1
        pipeline: agentic.yaml
        tests:
          t:
            llm: live
            expect:
              asserts:
                - {trajectory: [say, shout]}
                - {trajectory: [shout, say]}
                - {trajectory: [shout, say], order: any_order}
                - {trajectory: [say, whisper], order: any_order}
                - {trajectory: [shout], order: in_order, task: ask}
                - {trajectory: [shout, say], order: in_order}
        """, "agentic.test.yaml")
    (result,) = run_pipeline_test(project / "agentic.test.yaml", check=False)
    assert [o.passed for o in result.outcomes] == [True, False, True, False, True, False]
    assert result.outcomes[1].found == 'the tools called: ["say", "shout"]'
    assert result.outcomes[1].message == 'expected ["shout", "say"] (exact)'


# -- datasets -------------------------------------------------------------------------------------------


CASES_CSV = """id,city,expected
fr,Paris,Paris
it,Rome,Rome
es,Madrid,Barcelona
de,Berlin,Berlin
"""


def dataset_test(project: Path, body: str = "") -> Path:
    write(project, CASES_CSV, "data/cities.csv")
    return write(project, f"""
        version: 1
        pipeline: answers.yaml
        tests:
          capitals:
            cases: {{from: data/cities.csv}}
            expect:
              status: succeeded
              asserts:
                - {{contains: '${{{{ vars.expected }}}}', task: answer, name: names-the-city}}
                - {{is_json: true, task: record}}
                - "tasks.answer.output | length > 10"
        {body}
        """, "answers.test.yaml")


def test_a_dataset_runs_one_case_per_row_with_a_summary(project: Path, answers: Path) -> None:
    dataset_test(project)
    cases = load_tests(project / "answers.test.yaml")
    assert [c.name for c in cases] == ["capitals[fr]", "capitals[it]", "capitals[es]", "capitals[de]"]
    assert cases[2].vars == {"city": "Madrid", "expected": "Barcelona", "id": "es"}
    result = CliRunner().invoke(app, ["test", "--report", "json:out/r.json", "--report", "markdown:out/r.md",
                                      "--report", "junit:out/r.xml"])
    assert result.exit_code == 1, result.output
    out = result.stdout
    assert "✗ answers.test.yaml::capitals[es]" in out and "✓ answers.test.yaml::capitals[fr]" in out
    assert 'tasks.answer.output = "The capital of France is Madrid."' in out  # the failing row shows its value
    assert "answers.test.yaml::capitals: 3/4 rows passed (75%)" in out
    summary = out[out.index("answers.test.yaml::capitals: 3/4"):]
    assert "names-the-city" in summary and "3/4 (75%)" in summary and "4/4 (100%)" in summary
    assert "worst: capitals[es]: 1 failed: assert names-the-city: failed" in summary
    doc = json.loads((project / "out" / "r.json").read_text())
    ds = doc["datasets"]["answers.test.yaml::capitals"]
    assert (ds["cases"], ds["passed"], ds["pass_rate"]) == (4, 3, 0.75)
    assert ds["assertions"]["names-the-city"] == {"passed": 3, "total": 4, "rate": 0.75, "score": None}
    assert ds["assertions"]["is_json true"]["rate"] == 1.0
    assert set(ds["latency_ms"]) == {"mean", "p50", "p95", "max"}
    assert [c["name"] for c in doc["cases"]][2] == "answers.test.yaml::capitals[es]"
    md = (project / "out" / "r.md").read_text()
    assert "| answers.test.yaml::capitals | 4 | 3 (75%) |" in md
    assert "| names-the-city | 3/4 (75%) |  |" in md
    suites = list(junitparser.JUnitXml.fromfile(str(project / "out" / "r.xml")))
    assert [c.name for c in suites[0]] == ["capitals[fr]", "capitals[it]", "capitals[es]", "capitals[de]"]


def test_a_jsonl_dataset_keeps_types_and_inline_rows_work(project: Path, answers: Path) -> None:
    write(project, '{"name": "one", "city": "Oslo", "n": 3}\n\n{"name": "two", "city": "Bern", "n": 4}\n',
          "data/rows.jsonl")
    write(project, """
        version: 1
        tests:
          from-file:
            cases: {from: data/rows.jsonl, limit: 1}
            expect:
              asserts: ["vars.n == 3", {contains: Oslo, task: answer}]
          inline:
            cases: [{city: Rome}, {city: Nice}]
            expect:
              asserts: [{icontains: '${{ vars.city | upper }}', task: answer}]
        """, "answers.test.yaml")
    results = run_pipeline_test(project / "answers.test.yaml")
    assert [r.case.name for r in results] == ["from-file[one]", "inline[1]", "inline[2]"]


@pytest.mark.parametrize(("files", "cases", "expected"), [
    ({}, "{from: data/none.csv}", "answers.test.yaml:4:12: tests.t.cases.from: no dataset file"),
    ({"data/bad.jsonl": '{"a": 1}\n[1]\n'}, "{from: data/bad.jsonl}", "data/bad.jsonl:2: a row must be a JSON object"),
    ({"data/bad.jsonl": '{"a": NaN}\n'}, "{from: data/bad.jsonl}", "data/bad.jsonl:1: not JSON"),
    ({"data/bad.csv": "a,b\n1,2,3\n"}, "{from: data/bad.csv}", "more values than columns"),
    ({"data/dup.csv": "id,a\nx,1\nx,2\n"}, "{from: data/dup.csv}", "two rows of the dataset have the id 'x'"),
    ({}, "{from: data/cases.txt}", "tests.t.cases"),
])
def test_a_bad_dataset_is_refused_with_exit_2(project: Path, answers: Path, files: dict[str, str], cases: str,
                                              expected: str) -> None:
    for name, text in files.items():
        write(project, text, name)
    write(project, f"version: 1\ntests:\n  t:\n    cases: {cases}\n    expect: {{status: succeeded}}\n",
          "answers.test.yaml")
    result = CliRunner().invoke(app, ["test", "answers.test.yaml"])
    assert result.exit_code == 2, result.output
    assert expected in result.stdout, result.stdout


# -- baselines and the regression gate --------------------------------------------------------------------


def test_the_gate_fails_a_worse_prompt_and_passes_an_equal_one(project: Path, write_pipeline: Callable[..., Path],
                                                               srv: FakeOpenAI) -> None:
    """The model follows the prompt; a worse prompt loses the city in some answers, and the gate catches it."""
    def model(body: dict[str, Any]) -> Reply:
        prompt = body["messages"][-1]["content"]
        city = prompt.rsplit(" ", 1)[-1]
        careless = "briefly" in prompt and city in ("Rome", "Berlin")
        return Reply("It is a big city." if careless else f"The capital is {city}.")

    srv.respond = model

    def pipeline(prompt: str) -> None:
        write_pipeline(f"""
            version: 1
            name: capitals
            tasks:
              answer:
                uses: llm
                retry: {{attempts: 1}}
                with:
                  model: openai/gpt-4o-mini
                  api_base: '{srv.api_base}'
                  api_key: sk-test
                  temperature: 0
                  prompt: "{prompt} ${{{{ vars.city }}}}"
            """, name="capitals.yaml")

    write(project, CASES_CSV.replace("Barcelona", "Madrid"), "data/cities.csv")
    write(project, """
        version: 1
        pipeline: capitals.yaml
        tests:
          capitals:
            llm: live
            cases: {from: data/cities.csv}
            expect:
              asserts:
                - {contains: '${{ vars.expected }}', task: answer, name: names-the-city}
        """, "capitals.test.yaml")
    runner = CliRunner()
    pipeline("Name the capital of the country whose capital is")
    first = runner.invoke(app, ["test", "--report", "json:main.json"])
    assert first.exit_code == 0, first.output
    equal = runner.invoke(app, ["test", "--baseline", "main.json", "--fail-on-regression"])
    assert equal.exit_code == 0, equal.output
    assert "baseline: no regression" in equal.stdout
    pipeline("Answer briefly about the city")
    worse = runner.invoke(app, ["test", "--baseline", "main.json", "--fail-on-regression", "--tolerance", "0.1",
                                "--report", "markdown:out/pr.md"])
    assert worse.exit_code == 1, worse.output
    assert "✓ capitals.test.yaml::capitals[fr]" in worse.stdout and "✗ capitals.test.yaml::capitals[it]" in worse.stdout
    assert "baseline: 2 regressions" in worse.stdout
    assert "capitals.test.yaml::capitals: pass rate 1 → 0.5" in worse.stdout
    assert "capitals.test.yaml::capitals: names-the-city: pass rate 1 → 0.5" in worse.stdout
    assert "| capitals.test.yaml::capitals | pass rate | 1 | 0.5 |" in (project / "out" / "pr.md").read_text()
    lenient = runner.invoke(app, ["test", "--baseline", "main.json", "--tolerance", "0.5"])
    assert lenient.exit_code == 1 and "baseline: no regression" in lenient.stdout  # rows failed; not a regression


def test_cost_and_latency_rises_are_gated_only_when_a_tolerance_is_given(project: Path, answers: Path) -> None:
    from goatclaw.testing import Summary, Tolerances, compare

    base = {"x": {"pass_rate": 1.0, "cost_usd": 0.01, "latency_ms": {"p95": 100.0}, "assertions": {}}}
    now = Summary("x", 2, 2, {}, cost_usd=0.013, latency_ms={"p95": 180.0})
    assert compare([now], base) == []
    assert [str(r) for r in compare([now], base, Tolerances(cost=0.2, latency=0.5))] == [
        "x: cost ($) 0.01 → 0.013", "x: latency p95 (ms) 100 → 180"]
    assert compare([now], base, Tolerances(cost=0.5, latency=1.0)) == []


def test_fail_on_regression_needs_a_baseline_and_a_bad_baseline_is_refused(project: Path, answers: Path) -> None:
    dataset_test(project)
    runner = CliRunner()
    no_base = runner.invoke(app, ["test", "--fail-on-regression"])
    assert no_base.exit_code == 2 and "--fail-on-regression needs --baseline" in no_base.output
    (project / "bad.json").write_text("[1, 2]")
    bad = runner.invoke(app, ["test", "--baseline", "bad.json"])
    assert bad.exit_code == 2 and "bad.json is not a baseline" in bad.output
    missing = runner.invoke(app, ["test", "--baseline", "nowhere.json"])
    assert missing.exit_code == 2 and "cannot read the baseline nowhere.json" in missing.output
    assert "Traceback" not in bad.output


def test_llm_record_writes_the_judges_answers_too_and_the_eval_replays_offline(
        project: Path, write_pipeline: Callable[..., Path], srv: FakeOpenAI) -> None:
    srv.respond = lambda body: _judge(body) if "strict reviewer" in body["messages"][0]["content"] \
        else Reply(f"The capital is {body['messages'][-1]['content'].split()[-1]}")
    write_pipeline(f"""
        version: 1
        name: asked
        vars: {{city: Paris}}
        tasks:
          ask:
            uses: llm
            retry: {{attempts: 1}}
            with: {{model: openai/gpt-4o-mini, prompt: 'Say ${{{{ vars.city }}}}', temperature: 0,
                    api_base: '{srv.api_base}', api_key: sk-test}}
        """, name="asked.yaml")
    write(project, f"""
        version: 1
        pipeline: asked.yaml
        llm: replay
        tests:
          cities:
            cases: [{{city: Paris}}, {{city: Rome}}]
            expect:
              asserts:
                - {{llm_rubric: Names Paris, task: ask, model: openai/gpt-4o-mini, api_base: '{srv.api_base}',
                    api_key: sk-test, name: judge}}
        """, "asked.test.yaml")
    runner = CliRunner()
    recorded = runner.invoke(app, ["test", "--llm", "record"])
    assert recorded.exit_code == 1, recorded.output  # Rome does not name Paris: the judge fails it
    assert len(srv.requests) == 4  # two answers, two judgements
    tape = json.loads((project / "asked.cassette.json").read_text())
    assert len(tape["exchanges"]) == 4
    srv.requests.clear()
    replayed = runner.invoke(app, ["test"])
    assert replayed.exit_code == 1, replayed.output
    assert srv.requests == []  # offline: every answer, the judge's too, from the cassette
    assert "✓ asked.test.yaml::cities[1]" in replayed.stdout and "✗ asked.test.yaml::cities[2]" in replayed.stdout
    assert "judge: fail, score 0.2 (threshold 0.5): wrong city" in replayed.stdout
    judge_row = next(line for line in replayed.stdout.splitlines() if line.startswith("judge "))
    assert judge_row.split() == ["judge", "1/2", "(50%)", "0.550"]  # the mean of the scores 0.9 and 0.2


def test_similar_uses_the_projects_memory_embedder(project: Path, answers: Path, srv: FakeOpenAI,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``memory.embedder: litellm/<model>`` in goatclaw.yaml: similar embeds with that model (the local server)."""
    (project / "goatclaw.yaml").write_text((project / "goatclaw.yaml").read_text()
                                           + "memory: {embedder: litellm/openai/text-embedding-3-small}\n")
    monkeypatch.setenv("OPENAI_BASE_URL", srv.api_base)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    same, other = outcomes(project, """
        - {similar: The capital of France is Paris., task: answer, threshold: 0.99}
        - {similar: Something else entirely, task: answer, threshold: 0.99}
        """)
    assert same.passed and same.score == pytest.approx(1.0, abs=1e-5)  # one text, one deterministic vector
    assert not other.passed
    embedded = [r["input"] for r in srv.requests if "input" in r]
    assert embedded == [["The capital of France is Paris.", "The capital of France is Paris."],
                        ["The capital of France is Paris.", "Something else entirely"]]
    assert {r["model"] for r in srv.requests} == {"text-embedding-3-small"}
