"""Templates: ``${{ }}`` interpolation, kept types, strict names, the sandbox, and static checks."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import goatclaw
from goatclaw.cli.app import app
from goatclaw.errors import GoatclawError, TemplateError
from goatclaw.template import MAX_RENDER_CHARS, compile_expression, compile_value

FIXTURES = Path(__file__).resolve().parent / "fixtures"

CTX: dict[str, Any] = {
    "vars": {"topics": ["python", "rust"], "n": 3, "name": "goat", "ratio": 0.5, "flag": False},
    "output": {"items": ["x", "y"], "confidence": 0.9, "values": 1},
    "tasks": {"a": {"output": {"ok": True, "list": [1, 2]}}},
    "env": {},
    "secrets": {},
    "run": {"id": "r1"},
}


def render(value: Any, ctx: dict[str, Any] | None = None) -> Any:
    return compile_value(value).render(CTX if ctx is None else ctx)


def evaluate(source: str, ctx: dict[str, Any] | None = None) -> Any:
    return compile_expression(source).evaluate(CTX if ctx is None else ctx)


# -- interpolation and types -----------------------------------------------------------------


@pytest.mark.parametrize(("template", "expected"), [
    ("hello ${{ vars.name }}!", "hello goat!"),
    ("${{ vars.n }}${{ vars.n }}", "33"),
    ("n=${{ vars.n + 1 }}", "n=4"),
    ("${{ vars.topics | join(', ') }}", "python, rust"),
    ("{% for t in vars.topics %}- ${{ t }}\n{% endfor %}", "- python\n- rust\n"),
    ("a${# a comment #}b", "ab"),
    ("no template here", "no template here"),
])
def test_interpolation(template: str, expected: str) -> None:
    assert render(template) == expected


@pytest.mark.parametrize(("template", "expected"), [
    ("${{ vars.topics }}", ["python", "rust"]),
    ("${{ vars.n }}", 3),
    ("  ${{ vars.n }}  ", 3),
    ("${{ vars.ratio }}", 0.5),
    ("${{ vars.flag }}", False),
    ("${{ tasks.a.output }}", {"ok": True, "list": [1, 2]}),
    ("${{ none }}", None),
    ("${{ vars.topics | length }}", 2),
    ("${{ vars.n }}\n", 3),
])
def test_a_whole_template_keeps_its_type(template: str, expected: Any) -> None:
    got = render(template)
    assert got == expected
    assert type(got) is type(expected)


def test_templates_inside_lists_and_mappings() -> None:
    value = {"list": "${{ vars.topics }}", "nested": [{"n": "${{ vars.n }}"}, "x ${{ vars.n }}"], "const": 7}
    assert render(value) == {"list": ["python", "rust"], "nested": [{"n": 3}, "x 3"], "const": 7}


@pytest.mark.parametrize("prompt", [
    "Reply as JSON {{ summary, confidence }}",
    "{{ not_a_template }}",
    "use {{ name }} and { braces }",
    '{"a": {"b": 1}}',
])
def test_a_prompts_own_braces_are_left_alone(prompt: str) -> None:
    assert render(prompt) == prompt
    assert compile_value(prompt).is_constant


def test_a_prompt_with_braces_and_a_template() -> None:
    assert render("Reply as {{ json }} about ${{ vars.name }}") == "Reply as {{ json }} about goat"


def test_bare_expressions() -> None:
    assert evaluate("output.confidence >= 0.8") is True
    assert evaluate("tasks.a.output.list | sum") == 3
    assert evaluate("vars.topics[1]") == "rust"


# -- strict names --------------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["${{ missing }}", "x ${{ missing }}", "${{ vars.nope }}",
                                      "x ${{ tasks.a.output.nope }}", "{% for x in nope %}{% endfor %}"])
def test_undefined_names_raise(template: str) -> None:
    with pytest.raises(TemplateError) as info:
        render(template)
    assert "undefined" in info.value.message or "has no attribute" in info.value.message


@pytest.mark.parametrize("source", ["missing", "vars.nope", "output.nope > 1", "vars.nope is none",
                                    "vars.nope is string", "vars.nope is sameas false"])
def test_undefined_names_in_expressions_raise_rather_than_become_none(source: str) -> None:
    with pytest.raises(TemplateError):
        evaluate(source)


def test_is_defined_may_probe_an_undefined_name() -> None:
    assert evaluate("vars.nope is defined") is False
    assert evaluate("vars.nope is undefined") is True
    assert evaluate("vars.n is number and vars.name is string and none is none") is True


def test_template_error_is_a_goatclaw_error() -> None:
    assert issubclass(goatclaw.TemplateError, GoatclawError)


@pytest.mark.parametrize("template", ["${{ vars.n + }}", "x ${{ vars.n + }}", "{% if %}", "{% for x in y %}"])
def test_syntax_errors_raise_when_compiled(template: str) -> None:
    with pytest.raises(TemplateError) as info:
        compile_value({"k": [template]})
    assert info.value.message.startswith(("invalid expression", "invalid template"))


# -- the sandbox ------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", [
    "${{ output.__class__ }}",
    "x ${{ output.__class__ }}",
    "${{ ''.__class__.__mro__ }}",
    "${{ ''.__class__.__mro__[1].__subclasses__() }}",
    "${{ vars.topics.__len__() }}",
    "${{ '{0.__class__}'.format(output) }}",
    "${{ vars.topics.append('x') }}",
    "${{ output.update({'a': 1}) }}",
    "${{ vars.topics.pop() }}",
])
def test_the_sandbox_refuses_internals_and_mutation(template: str) -> None:
    with pytest.raises(TemplateError) as info:
        render(template)
    assert "blocked by the template sandbox" in info.value.message


@pytest.mark.parametrize("source", ["output.__class__", "''.__class__.__mro__", "output.__class__ is none",
                                    "output.__class__ == none"])
def test_a_blocked_expression_raises_and_is_never_none(source: str) -> None:
    with pytest.raises(TemplateError) as info:
        evaluate(source)
    assert "blocked by the template sandbox" in info.value.message


def test_dict_keys_win_over_methods() -> None:
    assert render("${{ output.items }}") == ["x", "y"]
    assert render("${{ output.values }}") == 1
    assert evaluate("output.items | length") == 2
    assert evaluate("output.keys() | list") == ["items", "confidence", "values"]
    assert evaluate("tasks.a.output.get('ok')") is True


HUGE = [
    "${{ 'a' * 10**9 }}",
    "${{ 10**9 * 'a' }}",
    "${{ [0] * 10**9 }}",
    "${{ 'ab' * 5000 * 5000 }}",
    "${{ vars.name * 10**8 }}",
    "${{ 10 ** 100000 }}",
    "${{ (2 ** 10000) ** 10000 }}",
    "${{ range(10**9) | list | length }}",
    "${{ range(10**6) | length }}",
    "{% for i in range(10**8) %}a{% endfor %}",
    "${{ 'a' | center(10**9) }}",
    "${{ 'a' | indent(10**9) }}",
    "${{ 'a'.ljust(10**9) }}",
    "${{ 'a'.rjust(10**9) }}",
    "${{ 'a'.zfill(10**9) }}",
    "${{ 'a'.center(10**9) }}",
    "${{ '\t'.expandtabs(10**9) }}",
    "${{ '%1000000000s' % 'a' }}",
    "${{ '%.1000000000f' % 1.5 }}",
    "${{ '%*s' % (10**9, 'a') }}",
    "${{ '%1000000000s' | format('a') }}",
    "${{ '{:>1000000000}'.format('a') }}",
    "${{ '{:.1000000000f}'.format(1.5) }}",
    "${{ '{:{}}'.format('a', 10**9) }}",
    "${{ '{x:>1000000000}'.format_map({'x': 1}) }}",
    "${{ [1] | slice(10**9) | list | length }}",
    "${{ [1] | batch(10**9, 0) | list | length }}",
    "${{ lipsum(10**6) }}",
    "x ${{ 'a' * 10**7 }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}xx{% endfor %}{% endfor %}",
]


@pytest.mark.parametrize("template", HUGE)
def test_huge_results_are_refused_quickly(template: str) -> None:
    start = time.perf_counter()
    with pytest.raises(TemplateError) as info:
        render(template)
    assert time.perf_counter() - start < 3.0
    assert "sandbox" in info.value.message or "Range too big" in info.value.message \
        or f"over {MAX_RENDER_CHARS:,} characters" in info.value.message


@pytest.mark.parametrize(("template", "expected"), [
    ("${{ 'ab' * 3 }}", "ababab"),
    ("${{ range(3) | list }}", [0, 1, 2]),
    ("${{ range(100000) | length }}", 100000),
    ("${{ 2 ** 100 }}", 2**100),
    ("${{ 7 % 3 }}", 1),
    ("${{ '%5s|%-3d|%.2f' % ('a', 7, 1.5) }}", "    a|7  |1.50"),
    ("${{ '%s-%s' | format('a', 'b') }}", "a-b"),
    ("${{ '{:>4}{:.1f}'.format('a', 2) }}", "   a2.0"),
    ("${{ 'a' | center(5) }}", "  a  "),
    ("${{ ('x' * 1000).center(20000) | length }}", 20000),
    ("${{ 'a\nb' | indent(2) }}", "a\n  b"),
    ("${{ [1, 2, 3] | slice(2) | list }}", [[1, 2], [3]]),
    ("${{ [1, 2, 3] | batch(2, 0) | list }}", [[1, 2], [3, 0]]),
    ("${{ lipsum(1, false) | length > 0 }}", True),
])
def test_ordinary_use_of_the_bounded_operations_still_works(template: str, expected: Any) -> None:
    assert render(template) == expected


@pytest.mark.parametrize("text", ['[1, NaN]', '{"confidence": Infinity}', '-Infinity'])
def test_fromjson_rejects_non_finite_numbers(text: str) -> None:
    with pytest.raises(TemplateError) as info:
        render("${{ vars.text | fromjson }}", {"vars": {"text": text}})
    assert "is not valid JSON" in info.value.message


def test_fromjson_and_tojson() -> None:
    assert render("${{ vars.text | fromjson }}", {"vars": {"text": '{"a": [1, 2.5, null]}'}}) == {"a": [1, 2.5, None]}
    assert render("${{ vars.v | tojson }}", {"vars": {"v": {"é": [1]}}}) == '{"é": [1]}'
    with pytest.raises(TemplateError):
        render("${{ vars.text | fromjson }}", {"vars": {"text": "not json"}})


# -- through a real run -------------------------------------------------------------------------------


def test_a_run_renders_with_kept_types_and_leaves_prompts_alone(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        vars: {topics: [python, rust], n: 3}
        tasks:
          a:
            uses: echo
            with:
              list: ${{ vars.topics }}
              num: "${{ vars.n }}"
              text: n is ${{ vars.n }}
              prompt: Reply as {{ json }} please
          b:
            uses: echo
            needs: a
            with:
              got: ${{ tasks.a.output.list }}
              count: ${{ tasks.a.output.list | length }}
        """)
    result = goatclaw.run(goatclaw.load(path), store=False)
    assert result.ok
    assert result.tasks["a"].output == {"list": ["python", "rust"], "num": 3, "text": "n is 3",
                                        "prompt": "Reply as {{ json }} please"}
    assert result.tasks["b"].output == {"got": ["python", "rust"], "count": 2}


def test_a_run_fails_the_task_that_reaches_for_internals(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          a: {uses: echo, with: {x: 1}}
          b:
            uses: echo
            needs: a
            with:
              cls: ${{ tasks.a.output.__class__ }}
        """)
    result = goatclaw.run(goatclaw.load(path), store=False)
    assert not result.ok
    assert result.tasks["b"].output is None
    assert "blocked by the template sandbox" in (result.tasks["b"].error or "")


@pytest.mark.parametrize("value", ["${{ range(1)|map(attribute='__class__')|list }}",
                                   "${{ range(1)|map(attribute='__class__') }}",
                                   "${{ {'a': [vars.topics|map(attribute='__class__')|first]} }}"])
def test_a_blocked_attribute_inside_a_whole_value_fails_the_task_not_the_run(
        write_pipeline: Callable[..., Path], value: str) -> None:
    """A blocked attribute deep in a list or mapping fails where it is rendered, not later as a traceback."""
    path = write_pipeline(f"""
        version: 1
        vars: {{topics: [a]}}
        tasks:
          a: {{uses: echo, with: {{cls: "{value}"}}}}
          b: {{uses: echo, if: "{value.removeprefix('${{ ').removesuffix(' }}')}", with: {{x: 1}}}}
        """)
    result = goatclaw.run(goatclaw.load(path), store=False)
    assert [result.tasks[t].status.value for t in "ab"] == ["failed", "failed"]
    assert all("blocked by the template sandbox" in (result.tasks[t].error or "") for t in "ab")


def test_a_lazy_map_in_a_whole_value_is_a_list() -> None:
    assert render("${{ vars.topics|map('upper') }}") == ["PYTHON", "RUST"]


# -- static checks: `goatclaw validate` finds template problems before anything runs -----------------


def test_validate_finds_template_problems(project: Path) -> None:
    shutil.copy(FIXTURES / "invalid" / "template_errors.yaml", project / "t.yaml")
    result = CliRunner().invoke(app, ["validate", "t.yaml"])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        "t.yaml:8:14: tasks.second.with.early: task 'third' is not upstream of 'second': add it to needs",
        "t.yaml:9:16: tasks.second.with.missing: unknown task 'ghost'",
        "t.yaml:10:18: tasks.second.with.unrelated: task 'first' is not upstream of 'second': add it to needs",
        "t.yaml:11:13: tasks.second.with.name: unknown name 'nope'",
        "t.yaml:12:15: tasks.second.with.syntax: invalid expression: unexpected 'end of template'",
        "t.yaml:13:14: tasks.second.with.block: invalid template: Expected an expression, got 'end of statement block'",
        "t.yaml:17:9: tasks.third.if: invalid expression: unexpected 'end of template'",
        "t.yaml:19:15: tasks.third.validate[0].expr: task 'first' is not upstream of 'third': add it to needs",
    ]


@pytest.mark.parametrize(("snippet", "message"), [
    ("${{ tasks.ghost.output }}", "unknown task 'ghost'"),
    ("${{ tasks.frst.output }}", "unknown task 'frst' (did you mean 'first'?)"),
    ("${{ tasks['ghost'].output }}", "unknown task 'ghost'"),
    ("${{ tasks.sibling.output }}", "task 'sibling' is not upstream of 'last': add it to needs"),
    ("${{ varz.x }}", "unknown name 'varz' (did you mean 'vars'?)"),
    ("${{ item }}", "unknown name 'item'"),
    ("${{ vars.x + }}", "invalid expression: unexpected 'end of template'"),
])
def test_validate_finds_each_kind_of_template_problem(write_pipeline: Callable[..., Path], snippet: str,
                                                      message: str) -> None:
    write_pipeline(f"""
        version: 1
        tasks:
          first: {{uses: echo}}
          middle: {{uses: echo, needs: first}}
          sibling: {{uses: echo, needs: first}}
          last:
            uses: echo
            needs: middle
            with:
              x: "{snippet}"
        """)
    result = CliRunner().invoke(app, ["validate", "p.yaml"])
    assert result.exit_code == 2
    assert result.output.splitlines() == [f"p.yaml:10:10: tasks.last.with.x: {message}"]


def test_transitive_upstream_tasks_and_known_names_are_fine(write_pipeline: Callable[..., Path]) -> None:
    write_pipeline("""
        version: 1
        vars: {l: [1, 2]}
        tasks:
          first: {uses: echo}
          middle: {uses: echo, needs: first}
          last:
            uses: echo
            needs: middle
            foreach: ${{ vars.l }}
            if: "tasks.first.output is defined and run.id"
            with:
              x: "${{ tasks.first.output }} ${{ item }} ${{ index }} ${{ range(2) | list }} ${{ env }} ${{ secrets }}"
            validate:
              - expr: "output.x and tasks.middle.output"
        """)
    result = CliRunner().invoke(app, ["validate", "p.yaml"])
    assert result.exit_code == 0, result.output
