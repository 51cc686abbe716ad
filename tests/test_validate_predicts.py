"""`goatclaw validate` predicts what the run will refuse, and meets GitHub Actions habits with the goatclaw way.

Issue 17, items 8 and 14: a pipeline that the threat score will block fails validate with the
grant that fixes it; ``--llm replay`` needs no API key; ``vars.<typo>`` and ``.outputs`` on a task
without ``foreach`` are located errors with a "did you mean"; ``retry: 3`` and ``if: ${{ … }}``
work; ``&&``, ``||``, ``run: echo hi`` and a task-level ``run:`` say how goatclaw writes them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

import goatclaw
from goatclaw.cli.app import app

REPO = Path(goatclaw.__file__).resolve().parent.parent  # the checkout under test, for its subprocesses too

FIVE_SHELL_STEPS = """
version: 1
tasks:
  a: {uses: shell, with: {run: [echo, a]}}
  b: {uses: shell, with: {run: [echo, b]}}
  c: {uses: shell, with: {run: [echo, c]}}
  d: {uses: shell, with: {run: [echo, d]}}
  e: {uses: shell, with: {script: echo e}}
"""


@pytest.fixture
def bare_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project whose goatclaw.yaml grants nothing (the default a first pipeline meets)."""
    (tmp_path / "goatclaw.yaml").write_text("version: 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GOATCLAW_STORE", raising=False)
    monkeypatch.delenv("GOATCLAW_LLM", raising=False)
    monkeypatch.delenv("CI", raising=False)
    for var in ("OPENAI_API_BASE", "OPENAI_BASE_URL", "ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL", "OLLAMA_API_BASE"):
        monkeypatch.delenv(var, raising=False)  # a model's host is the provider's own
    return tmp_path


def lines_of(path: Path) -> list[str]:
    _, problems = goatclaw.check(path)
    return [str(p).removeprefix(f"{path}:") for p in problems]


# -- the threat score's verdict, before the run ------------------------------------------------------------


def test_validate_shows_the_block_the_run_would_meet_and_the_grant_that_fixes_it(bare_project: Path) -> None:
    path = bare_project / "p.yaml"
    path.write_text(FIVE_SHELL_STEPS.lstrip())
    result = CliRunner().invoke(app, ["validate", "p.yaml"])
    assert result.exit_code == 2, result.output
    verdict = ("p.yaml:2:1: tasks: the run would be blocked by its threat score: 5 tasks (a, b, c, d, e) "
               "will fail with permission_denied, a score of 8 that reaches the threshold 5; grant what they "
               "need: permissions: {shell: [bash, echo]}")
    assert verdict in result.output.splitlines()
    # each task's own warning is labelled as one
    assert "warning: p.yaml:3:13: tasks.a.uses: 'shell' needs permissions.shell" in result.output
    assert "✓" not in result.output
    assert CliRunner().invoke(app, ["apply", "p.yaml", "--output", "plain"]).exit_code == 2  # nothing half-runs

    # the grant it names is the one that lets the run through
    path.write_text(FIVE_SHELL_STEPS.lstrip().replace("tasks:", "permissions: {shell: [bash, echo]}\ntasks:"))
    assert CliRunner().invoke(app, ["validate", "p.yaml"]).exit_code == 0
    ran = goatclaw.run(path)
    assert ran.ok and [ran.tasks[t].output["stdout"].strip() for t in "abcde"] == list("abcde")


def test_a_located_verdict_sits_at_the_permissions_the_grant_goes_into(bare_project: Path) -> None:
    path = bare_project / "p.yaml"
    path.write_text(FIVE_SHELL_STEPS.lstrip().replace("tasks:", "permissions: {network: false}\ntasks:"))
    verdicts = [line for line in lines_of(path) if "would be blocked" in line]
    assert len(verdicts) == 1 and verdicts[0].startswith("2:1: permissions: the run would be blocked")


def test_the_grant_named_is_the_narrowest_each_plugin_s_constant_arguments_allow(bare_project: Path) -> None:
    path = bare_project / "p.yaml"
    path.write_text(textwrap.dedent("""
        version: 1
        tasks:
          a: {uses: llm, with: {prompt: hi, model: gpt-4o-mini}}
          b: {uses: llm, with: {prompt: hi, model: [anthropic/claude-3-haiku, {name: ollama/llama3,
                                                                              api_base: "http://127.0.0.1:11434"}]}}
          c: {uses: http, with: {url: "https://api.example.com/x"}}
          d: {uses: python, with: {function: "json:dumps", args: [1]}}
          e: {uses: file.write, with: {path: out/x.txt, content: x}}
        """).lstrip())
    verdict = [line for line in lines_of(path) if "would be blocked" in line]
    grant = ("permissions: {network: [127.0.0.1, api.anthropic.com, api.example.com, api.openai.com], "
             "python: [json], files: {write: [out/x.txt]}}")
    assert len(verdict) == 1 and verdict[0].endswith(f"grant what they need: {grant}")
    path.write_text(path.read_text().replace("tasks:", f"{grant}\ntasks:"))
    assert not [line for line in lines_of(path) if "permission" in line]


@pytest.mark.parametrize("change", [
    pytest.param(lambda t: t.replace("{uses: shell,", "{uses: shell, if: vars.go,"), id="if"),
    pytest.param(lambda t: t.replace("  b: {uses: shell,", "  b: {uses: shell, needs: a,")
                 .replace("  c: {uses: shell,", "  c: {uses: shell, needs: a,")
                 .replace("  d: {uses: shell,", "  d: {uses: shell, needs: a,"), id="needs a denied task"),
    pytest.param(lambda t: "threat_threshold: 9\n" + t, id="higher threshold"),
])
def test_only_certain_denials_count(bare_project: Path, change: Callable[[str], str]) -> None:
    path = bare_project / "p.yaml"
    text = change(FIVE_SHELL_STEPS.lstrip())
    path.write_text(text.replace("version: 1\n", "version: 1\nvars: {go: true}\n"))
    found = lines_of(path)
    assert found and not [line for line in found if "would be blocked" in line]
    assert all("will fail with permission_denied" in line for line in found)  # the warnings stay


# -- --llm replay needs no API key ------------------------------------------------------------------------


@pytest.mark.slow
def test_apply_llm_replay_with_fail_on_warn_does_not_warn_about_a_key(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "goatclaw", "apply", "pipelines/llm-digest.yaml", "--llm", "replay",
                           "--fail-on", "warn", "--output", "plain", "--store", str(tmp_path / "db")],
                          cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "OPENAI_API_KEY" not in done.stdout + done.stderr
    # a live run still hears about it
    _, live = goatclaw.check(REPO / "pipelines" / "llm-digest.yaml", llm="live")
    _, replay = goatclaw.check(REPO / "pipelines" / "llm-digest.yaml", llm="replay")
    assert any("OPENAI_API_KEY" in p.message for p in live) or os.environ.get("OPENAI_API_KEY")
    assert not [p for p in replay if "OPENAI_API_KEY" in p.message]


# -- typos the run would meet as an undefined value ---------------------------------------------------------


def test_a_variable_typo_says_did_you_mean(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        vars: {name: goat}
        tasks:
          a: {uses: echo, with: {message: "hi ${{ vars.nme }}", other: "${{ vars.get('maybe', 1) }}"}}
          b: {uses: echo, if: "vars['nmae'] == 'goat'", with: {x: "${{ vars.from_the_command_line }}"}}
        """)
    assert lines_of(path) == [
        "4:35: tasks.a.with.message: unknown variable 'vars.nme' (did you mean 'vars.name'?)",
        "5:23: tasks.b.if: unknown variable 'vars.nmae' (did you mean 'vars.name'?)",
    ]


def test_outputs_of_a_task_without_foreach_says_use_output(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          one: {uses: echo, with: {x: 1}}
          many: {uses: echo, foreach: [1, 2], with: {x: "${{ item }}"}}
          after:
            uses: echo
            needs: [one, many]
            if: tasks.one.outputs | length > 0
            with:
              ok: "${{ tasks.many.outputs }} ${{ tasks.one.output }} ${{ tasks.one.status }}"
              typo: "${{ tasks.one.outptu }}"
              odd: "${{ tasks.one.whatever }}"
        """)
    assert lines_of(path) == [
        "8:9: tasks.after.if: task 'one' has no foreach, so it has no 'outputs' (did you mean 'tasks.one.output'?)",
        "11:13: tasks.after.with.typo: task 'one' has no field 'outptu' (did you mean 'output'?)",
        "12:12: tasks.after.with.odd: task 'one' has no field 'whatever'; a task has error, output, status",
    ]


# -- GitHub Actions habits -----------------------------------------------------------------------------------


def test_retry_n_is_attempts_n_with_the_other_settings_inherited(write_pipeline: Callable[..., Path],
                                                                project: Path) -> None:
    path = write_pipeline("""
        version: 1
        defaults: {retry: {delay: 10ms, on: [internal]}}
        tasks:
          flaky:
            uses: shell
            retry: 3
            with: {script: 'n=$(cat count 2>/dev/null || echo 0); echo $((n+1)) > count; [ "$n" -ge 2 ]'}
        """)
    pipeline = goatclaw.load(path)
    policy = pipeline.tasks["flaky"].retry
    assert (policy.attempts, policy.delay, policy.on) == (3, 0.01, ("internal",))
    result = goatclaw.run(pipeline, store=False)
    assert result.ok and result.tasks["flaky"].attempts == 3
    assert (project / "count").read_text().strip() == "3"


def test_retry_n_in_defaults_and_the_project_file(write_pipeline: Callable[..., Path], project: Path) -> None:
    path = write_pipeline("version: 1\ndefaults: {retry: 4}\ntasks:\n  a: {uses: echo}\n")
    assert goatclaw.load(path).tasks["a"].retry.attempts == 4
    (project / "goatclaw.yaml").write_text("version: 1\ndefaults: {retry: 2}\n")
    path = write_pipeline("version: 1\ntasks:\n  a: {uses: echo}\n")
    assert goatclaw.load(path).tasks["a"].retry.attempts == 2


@pytest.mark.parametrize(("value", "message"), [
    ("0", "tasks.a.retry: 0 is less than the minimum of 1"),
    ("101", "tasks.a.retry: 101 is greater than the maximum of 100"),
    ("true", "tasks.a.retry: true is not of type 'integer' or 'object' or false"),
    ("fast", "tasks.a.retry: \"fast\" is not of type 'integer' or 'object' or false"),
])
def test_a_wrong_retry_says_what_it_takes(write_pipeline: Callable[..., Path], value: str, message: str) -> None:
    path = write_pipeline(f"version: 1\ntasks:\n  a: {{uses: echo, retry: {value}}}\n")
    assert lines_of(path) == [f"3:26: {message}"]


@pytest.mark.parametrize("go", [True, False])
def test_if_written_as_one_whole_template_works(write_pipeline: Callable[..., Path], go: bool) -> None:
    path = write_pipeline(f"""
        version: 1
        vars: {{go: {str(go).lower()}}}
        tasks:
          a:
            uses: echo
            if: ${{{{ vars.go }}}}
            with: {{x: 1}}
            validate: [{{expr: "${{{{ output.x == 1 }}}}"}}]
        """)
    assert lines_of(path) == []
    result = goatclaw.run(goatclaw.load(path), store=False)
    assert result.ok and result.tasks["a"].status.value == ("succeeded" if go else "skipped")


def test_c_style_operators_and_templates_in_bare_expressions_show_the_goatclaw_way(
        write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        vars: {a: true, b: false}
        tasks:
          x:
            uses: echo
            if: vars.a && !vars.b || false
            with: {y: "${{ vars.a && vars.b }}"}
            validate: [{expr: "output.y || true"}]
          z: {uses: echo, if: "run ${{ vars.a }}"}
        """)
    assert lines_of(path) == [
        "6:9: tasks.x.if: invalid expression: unexpected char '&' at 7 (write `and` for `&&`, `or` for `||`, "
        "`not` for `!`)",
        "7:15: tasks.x.with.y: invalid expression: unexpected char '&' at 8 (write `and` for `&&`)",
        "8:23: tasks.x.validate[0].expr: invalid expression: expected token 'name', got '|' (write `or` for `||`)",
        "9:23: tasks.z.if: invalid expression: unexpected char '$' at 4 (`if:` and `expr:` are bare expressions: "
        "write them without `${{ }}`, e.g. `if: vars.ok`)",
    ]


def test_run_as_a_string_shows_the_list_and_script(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          a: {uses: shell, with: {run: echo "hello world"}}
        """)
    assert lines_of(path) == [
        "3:27: tasks.a.with.run: 'shell' argument 'run' expects list[str] | None, got string 'echo \"hello world\"'; "
        "write a list: run: [echo, \"hello world\"], or script: \"echo \\\"hello world\\\"\" for a command line "
        "the shell parses"]


def test_run_at_task_level_shows_where_a_command_goes(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          a:
            uses: shell
            run: echo hi
          b: {uses: shell, run: [git, status]}
        """)
    assert lines_of(path) == [
        "5:5: tasks.a.run: unknown field 'run': a command goes under `with:` of a `uses: shell` task: "
        "`with: {script: \"echo hi\"}`",
        "6:20: tasks.b.run: unknown field 'run': a command goes under `with:` of a `uses: shell` task: "
        "`with: {run: [\"git\", \"status\"]}`",
    ]
