"""No template can stall a run: each explosive operation is refused up front, in bounded time and memory.

Every case renders in a fresh interpreter with a memory cap and a wall-clock timeout, so
that on code without the bounds the test fails (timeout or memory error) instead of
hanging the suite: a single C call cannot be interrupted from inside the process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from goatclaw.errors import TemplateError
from goatclaw.template import compile_expression, compile_value

_RUNNER = textwrap.dedent("""
    import resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (1536 * 2**20, 1536 * 2**20))
    from goatclaw.template import compile_value
    from goatclaw.errors import TemplateError
    t0 = time.monotonic()
    try:
        compile_value(sys.argv[1]).render({"x": "y"})
        print("rendered")
    except TemplateError as exc:
        print("refused", exc.message)
    print(f"took {time.monotonic() - t0:.3f}")
""")

BOMBS = {
    "sum of lists": "${{ ([[0]*1000]*6000)|sum(start=[]) }}",
    "string doubled with ~": "{% set ns = namespace(s='ab') %}{% for i in range(40) %}"
                             "{% set ns.s = ns.s ~ ns.s %}{% endfor %}${{ ns.s|length }}",
    "string doubled with +": "{% set ns = namespace(s='ab') %}{% for i in range(40) %}"
                             "{% set ns.s = ns.s + ns.s %}{% endfor %}${{ ns.s|length }}",
    "list doubled by sharing": "{% set ns = namespace(s=['ab']) %}{% for i in range(60) %}"
                               "{% set ns.s = [ns.s, ns.s] %}{% endfor %}${{ ns.s|string|length }}",
    "dict doubled by sharing": "{% set ns = namespace(s={'a': 1}) %}{% for i in range(60) %}"
                               "{% set ns.s = {'a': ns.s, 'b': ns.s} %}{% endfor %}${{ ns.s|tojson|length }}",
    "big integer squared": "{% set ns = namespace(x=3) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}"
                           "{% endfor %}${{ ns.x > 5 }}",
    "printf keys": "${{ ('%(' * 100000) % {} }}",
    "join of shared strings": "${{ (['x'*1000000]*1000)|join|length }}",
    "str.join of shared strings": "${{ ''.join(['x'*1000000]*1000)|length }}",
    "replace": "${{ ('a'*100000).replace('a', 'b'*100000)|length }}",
    "replace filter": "${{ ('a'*100000)|replace('a', 'b'*100000)|length }}",
    "format fields": "${{ ('{0}'*100000).format('x'*100000)|length }}",
    "bytes times n": "${{ ('a'.encode()) * 10**10 }}",
    "macro output doubled": "{% macro m(x) %}${{x}}${{x}}{% endmacro %}{% set ns = namespace(s='ab') %}"
                            "{% for i in range(40) %}{% set ns.s = m(ns.s) %}{% endfor %}${{ ns.s|length }}",
    "dict.fromkeys": "${{ {}.fromkeys(range(100000), 'x'*1000000)|string|length }}",
    "map default": "${{ range(100000)|map(attribute='x', default='y'*1000000)|join|length }}",
    "namespace changed after use": "{% set ns = namespace(a=1) %}{% set l = [ns] %}{% set ns.a = 'x'*9000000 %}"
                                   "${{ ([ns]*1000)|string|length }}",
    "memory held by recursion": "{% macro m(n) %}{% set x = 'a'*9000000 %}{% if n %}${{ m(n-1) }}{% endif %}"
                                "${{ x[:1] }}{% endmacro %}${{ m(200)|length }}",
}


#: Python itself refuses these at once; what the sandbox must not do is take quadratic time checking them first.
_PYTHON_REFUSES = {"printf keys"}


@pytest.mark.parametrize(("name", "template"), BOMBS.items(), ids=list(BOMBS))
def test_explosive_templates_are_refused_quickly(name: str, template: str) -> None:
    try:
        done = subprocess.run([sys.executable, "-c", _RUNNER, template], capture_output=True, text=True,
                              timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("the render ran past 20 s: one C call escaped the sandbox's bounds")
    assert done.returncode == 0, done.stderr[-2000:]
    verdict, took = done.stdout.strip().splitlines()
    assert verdict.startswith("refused"), verdict
    assert name in _PYTHON_REFUSES or "sandbox" in verdict or "MiB of memory" in verdict, verdict
    assert float(took.split()[1]) < 4.0, took  # refused up front, not stopped by the 5 s watchdog


def test_the_memory_watchdog_names_memory() -> None:
    with pytest.raises(TemplateError, match="MiB of memory"):
        compile_value(BOMBS["memory held by recursion"]).render({})


def test_refusals_name_the_bound() -> None:
    with pytest.raises(TemplateError, match="blocked by the template sandbox: sum"):
        compile_expression("[[1], [2]]|sum(start=[])").evaluate({})
    with pytest.raises(TemplateError, match="100,000 bits"):
        compile_expression("(2**10000)**9 * (2**10000)**2").evaluate({})


@pytest.mark.parametrize(("source", "expected"), [
    ("[1, 2, 3]|sum", 6),
    ("[1.5, 2]|sum(start=1)", 4.5),
    ("'ab' ~ 'cd' ~ 3", "abcd3"),
    ("(['a'] * 3)|join(',')", "a,a,a"),
    ("'%5s|%-3d|' % ('x', 7)", "    x|7  |"),
    ("'%(a)s' % {'a': 1}", "1"),
    ("'{:>4}{}'.format('x', 1)", "   x1"),
    ("'a-b'.replace('-', '--')", "a--b"),
    ("[1, [2, 3]] + [4]", [1, [2, 3], 4]),
    ("2 ** 100", 2 ** 100),
    ("{'a': [1, 2]}", {"a": [1, 2]}),
    ("(1, 2)", (1, 2)),
    ("range(5)|map(attribute='x', default=0)|list", [0, 0, 0, 0, 0]),
    ("('x' * 1000000)|length", 1000000),
])
def test_ordinary_values_still_work(source: str, expected: object) -> None:
    assert compile_expression(source).evaluate({}) == expected


def test_a_loop_target_tuple_still_unpacks() -> None:
    out = compile_value("{% for k, v in d|dictsort %}${{ k }}=${{ v }};{% endfor %}").render({"d": {"b": 2, "a": 1}})
    assert out == "a=1;b=2;"


def test_a_render_honours_a_shorter_limit() -> None:
    loop = compile_value("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
    t0 = time.monotonic()
    with pytest.raises(TemplateError, match="task's timeout") as caught:
        loop.render({}, limit=0.3)
    assert time.monotonic() - t0 < 2.0
    assert caught.value.error_class == "timeout"


# -- patterns: every user- or content-supplied pattern runs in linear time ---------------------

_SCAN = textwrap.dedent("""
    import sys, time
    from goatclaw.security.threat import ThreatScore
    text = {"rm": "rm -" + "r" * 100000, "curl": "curl " * 60000}[sys.argv[1]]
    t0 = time.monotonic()
    ThreatScore().output(text, untrusted=True)
    print(f"{time.monotonic() - t0:.3f}")
""")


@pytest.mark.parametrize("body", ["rm", "curl"])
def test_the_threat_scanner_is_linear_on_hostile_bodies(body: str) -> None:
    try:
        done = subprocess.run([sys.executable, "-c", _SCAN, body], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("scanning a 100 KB body took over 20 s (backtracking patterns)")
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout) < 1.0


def _schema_rule(schema: dict[str, object]) -> object:
    from goatclaw.spec.model import Rule

    return Rule("schema", schema)


def _verdict(schema: dict[str, object], output: object) -> tuple[bool | None, str]:
    from pathlib import Path

    from goatclaw.validation import check_output

    v = check_output((_schema_rule(schema),), output, {}, base=Path("."), validator=lambda name: None)[0]
    return v.passed, v.message


def test_schema_format_is_enforced() -> None:
    assert _verdict({"format": "email"}, "nope") == (False, "'nope' is not a 'email'")
    assert _verdict({"format": "email"}, "a@b.example")[0] is True
    assert _verdict({"properties": {"ip": {"format": "ipv4"}}}, {"ip": "999.1.1.1"})[0] is False
    assert _verdict({"format": "date"}, "2024-02-30")[0] is False
    assert _verdict({"format": "no-such-format"}, "x")[0] is True  # an unknown format is an annotation


def test_schema_patterns_run_in_linear_time() -> None:
    t0 = time.monotonic()
    assert _verdict({"pattern": "^(a+)+$"}, "a" * 31 + "!")[0] is False
    assert _verdict({"patternProperties": {"^(a|aa)+$": {"type": "string"}}}, {"a" * 40 + "!": 1})[0] is True
    assert _verdict({"patternProperties": {"^a+$": {"type": "string"}}}, {"aa": 1})[0] is False
    assert time.monotonic() - t0 < 1.0


def test_a_format_email_check_is_linear() -> None:
    from goatclaw.validation import FORMATS

    t0 = time.monotonic()
    assert not FORMATS["email"]("a@" + "b." * 50000 + "@")
    assert time.monotonic() - t0 < 1.0


def test_validate_reports_a_schema_pattern_re2_refuses() -> None:
    from pathlib import Path

    from goatclaw.validation import rule_problem

    why = rule_problem(_schema_rule({"pattern": "(a)\\1"}), Path("."), lambda name: True)
    assert why is not None and "RE2" in why
