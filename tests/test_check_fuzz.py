"""Fuzzing ``goatclaw.check``: type-confused known keys and huge scalars give located problems, never a crash.

A pipeline that sets every known key of the schema, at every level, is mutated: a value is
replaced by one of another type (null, lists, nested lists, mappings, integers over 4,300
digits, floats too large for a double, long strings, booleans), or a key is renamed. Whatever
the mutation, ``check`` returns problems that each name a file, line and column, and
``load`` raises nothing but goatclaw's own errors.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import goatclaw
from goatclaw.errors import GoatclawError, SpecError
from goatclaw.testing import load_tests

#: Every key of the pipeline schema, at every level, with a valid value.
FULL: dict[str, Any] = {
    "version": 1, "name": "fuzzed", "description": "every key", "vars": {"name": "x", "topics": ["a", "b"]},
    "secrets": ["FUZZ_KEY"],
    "defaults": {
        "timeout": "2m",
        "retry": {"attempts": 2, "backoff": "fixed", "delay": "1s", "max_delay": "1m", "multiplier": 2,
                  "jitter": True, "max_elapsed": "1m", "on": ["timeout"], "never_on": ["auth"]},
        "breaker": {"failures": 5, "window": "1m", "reset": "30s", "key": "k", "wait": False},
        "cache": {"ttl": "1h", "key": "v1"},
    },
    "concurrency": 2, "timeout": "1h",
    "permissions": {"shell": ["echo"], "network": ["api.example.com"], "files": {"read": ["."], "write": ["out/"]},
                    "env": ["HOME"], "python": ["json"]},
    "budget": {"usd": 1.5, "downgrade": "gpt-4o-mini"},
    "hooks": ["fuzz-hook", {"use": "fuzz-hook", "with": {"level": 1}, "fail_run": False}],
    "on_failure": {"alert": {"uses": "echo", "with": {"message": "failed"}}},
    "finally": {"cleanup": {"uses": "echo", "with": {"message": "done"}}},
    "threat_threshold": 5, "max_output_bytes": 100_000,
    "tasks": {
        "fan": {
            "uses": "echo", "name": "Fan", "description": "d", "with": {"message": "${{ item }} ${{ vars.name }}"},
            "needs": ["first"], "if": "vars.name", "foreach": "${{ vars.topics }}", "concurrency": 2,
            "fail_fast": True, "timeout": "10s", "retry": {"attempts": 2}, "fix": {"attempts": 1, "mode": "rerun"},
            "validate": [
                {"schema": {"type": "string", "pattern": "^a"}}, {"expr": "output", "message": "m", "severity": "warn"},
                {"type": "string"}, {"range": {"min": 0, "max": 1}}, {"length": {"min": 1, "max": 3}},
                {"format": "email"}, {"regex": "a+"}, {"one_of": ["a"]},
                {"judge": "it is fine", "model": "gpt-4o-mini", "threshold": 0.5},
                {"use": "fuzz-validator", "with": {"level": 1}}],
            "breaker": {"failures": 2}, "priority": 1, "cache": {"ttl": 10}, "continue_on_error": False,
            "fallback": "first", "run_on": "local", "inputs": ["*.txt"], "permissions": {"shell": False},
            "trust": ["first"], "env": {"FUZZ": "y"},
        },
        "first": {"uses": "shell", "with": {"run": ["echo", "hi"]}, "retry": False, "breaker": False,
                  "cache": True, "needs": []},
    },
}

HUGE_INT = "9" * 5000
#: Written into the text as they are: JSON (and so ``json.dumps``) cannot make these.
RAW = {"<huge-int>": HUGE_INT, "<huge-negative>": "-" + HUGE_INT, "<huge-hex>": "0x" + "f" * 4000,
       "<huge-float>": "1e999", "<long-float>": HUGE_INT + ".5", "<nan>": ".nan"}

WRONG: list[Any] = [None, [], [[]], [None], [1], [{}], {}, {"x": {"y": [1]}}, "<huge-int>", "<huge-negative>",
                    "<huge-hex>", "<huge-float>", "<long-float>", "<nan>", 1e300, -1, 0, 2.5, True, False, "",
                    "x" * 5000, [{"schema": 1}], {"schema": 1}, "${{", "${{ vars.nme }}",
                    "${{ range(1)|map(attribute='__class__')|list }}"]


def paths(node: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """The path of every value under ``node``."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield (*path, key)
        yield from paths(value, (*path, key))


PATHS = list(paths(FULL))


def mutated(changes: list[tuple[tuple[str | int, ...], Any]], renames: list[tuple[str | int, ...]] = ()) -> str:
    """The text of FULL with each path set to its value (skipping paths a change made disappear)."""
    data = copy.deepcopy(FULL)
    for path, value in changes:
        parent = _parent(data, path)
        if parent is not None:
            parent[path[-1]] = copy.deepcopy(value)  # values drawn twice must not become one object
    for path in renames:
        parent = _parent(data, path)
        if isinstance(parent, dict):
            parent[f"{path[-1]}x"] = parent.pop(path[-1])
    return _raw(json.dumps(data))


def _raw(text: str) -> str:
    """JSON text with the placeholders of :data:`RAW` written out."""
    for placeholder, raw in RAW.items():
        text = text.replace(json.dumps(placeholder), raw)
    return text


def _parent(data: Any, path: tuple[str | int, ...]) -> Any:
    for part in path[:-1]:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    last = path[-1]
    if isinstance(data, dict) and last in data:
        return data
    return data if isinstance(data, list) and isinstance(last, int) and last < len(data) else None


def assert_only_located_problems(path: Path) -> None:
    """``check`` finds only located problems, and ``load`` raises only goatclaw's errors."""
    _, problems = goatclaw.check(path)
    unlocated = [str(p) for p in problems if p.location is None or p.location.file != str(path)]
    assert not unlocated
    try:
        goatclaw.load(path)
    except SpecError as exc:
        assert exc.problems and all(p.location is not None for p in exc.problems)
    except GoatclawError as exc:  # pragma: no cover - check found nothing, so load raising is a bug
        pytest.fail(f"load raised {type(exc).__name__} after check passed: {exc}")


@pytest.fixture
def target(project: Path) -> Path:
    return project / "fuzzed.yaml"


def test_the_full_pipeline_is_valid_but_for_its_plugins(target: Path) -> None:
    """The starting point is valid: every problem a mutation finds is the mutation's."""
    target.write_text(mutated([]))
    _, problems = goatclaw.check(target)
    assert [p.message.split(" ")[:2] for p in problems] == [["unknown", "hook"], ["unknown", "hook"],
                                                           ["unknown", "validator"]]


#: The wrong values every path is swept with (the hypothesis test below draws from all of WRONG).
SWEEP = [None, [[]], {}, "<huge-int>", True, "x" * 5000]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: ".".join(map(str, p)))
def test_every_known_key_with_a_value_of_each_wrong_type(target: Path, path: tuple[str | int, ...]) -> None:
    for value in SWEEP:
        target.write_text(mutated([(path, value)]))
        assert_only_located_problems(target)


#: Every key of the project file's schema, with a valid value.
PROJECT: dict[str, Any] = {
    "version": 1, "store": {"path": ".goatclaw/fuzzed.db"}, "model": "gpt-4o-mini",
    "fallbacks": ["gpt-4.1-mini", {"name": "ollama/llama3", "api_base": "http://127.0.0.1:11434", "api_key_env": "K"}],
    "budget": {"usd": 1, "downgrade": "gpt-4o-mini"},
    "rate_limits": {"gpt-4o-mini": {"rpm": 10}, "side_effects": {"processes_per_minute": 5}},
    "llm": {"cache": {"ttl": "1h"}, "cassette": "fuzzed.cassette.json", "mode": "live"},
    "memory": {"enabled": True, "embedder": "wordllama", "max_memories": 10, "consolidate_every": 5},
    "executor": {"type": "local"}, "permissions": {"shell": True, "files": {"read": ["."]}},
    "plugins": {"allow": ["echo"], "deny": ["nothing"]}, "defaults": {"retry": 2, "timeout": "1m"},
    "concurrency": 2, "threat_threshold": 5,
}


@pytest.mark.parametrize("path", list(paths(PROJECT)), ids=lambda p: ".".join(map(str, p)))
def test_every_key_of_the_project_file_with_a_value_of_each_wrong_type(project: Path,
                                                                       path: tuple[str | int, ...]) -> None:
    pipeline = project / "p.yaml"
    pipeline.write_text("version: 1\ntasks:\n  a: {uses: echo, with: {x: 1}}\n  b: {uses: llm, with: {prompt: hi}}\n")
    for value in SWEEP:
        data = copy.deepcopy(PROJECT)
        _parent(data, path)[path[-1]] = copy.deepcopy(value)
        (project / "goatclaw.yaml").write_text(_raw(json.dumps(data)))
        _, problems = goatclaw.check(pipeline)
        assert all(p.location is not None for p in problems), [str(p) for p in problems]


#: Every key of a pipeline test file's schema (``*.test.yaml``), with a valid value.
TEST_FILE: dict[str, Any] = {
    "version": 1, "pipeline": "p.yaml", "description": "d", "vars": {"name": "x"}, "stubs": {"a": {"x": 1}},
    "llm": "replay", "cassette": "p.cassette.json",
    "tests": {"one": {
        "description": "d", "vars": {"name": "y"}, "stubs": {"a": 1}, "llm": "live", "cassette": "p.cassette.json",
        "only": ["b"],
        "expect": {"status": "succeeded",
                   "tasks": {"a": "succeeded", "b": {"status": "succeeded", "output": 1, "error": "e",
                                                     "error_class": "internal"}},
                   "asserts": ["tasks.b.output == 1", {"that": "tasks.b.status == 'succeeded'", "message": "m"}]},
    }},
}


@pytest.mark.parametrize("path", list(paths(TEST_FILE)), ids=lambda p: ".".join(map(str, p)))
def test_every_key_of_a_test_file_with_a_value_of_each_wrong_type(project: Path, path: tuple[str | int, ...]) -> None:
    (project / "p.yaml").write_text("version: 1\nvars: {name: x}\ntasks:\n  a: {uses: echo, with: {x: 1}}\n"
                                    "  b: {uses: echo, needs: a, with: {x: 1}}\n")
    for value in SWEEP:
        data = copy.deepcopy(TEST_FILE)
        _parent(data, path)[path[-1]] = copy.deepcopy(value)
        (project / "p.test.yaml").write_text(_raw(json.dumps(data)))
        try:
            load_tests(project / "p.test.yaml")
        except SpecError as exc:
            assert all(p.location is not None for p in exc.problems), str(exc)


wrong_values = st.one_of(
    st.sampled_from(WRONG),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                 | st.text(max_size=8),
                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                 max_leaves=6),
)


@pytest.mark.slow
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(st.tuples(st.sampled_from(PATHS), wrong_values), min_size=1, max_size=4),
       renames=st.lists(st.sampled_from(PATHS), max_size=2))
def test_several_wrong_values_at_once(target: Path, changes: list[tuple[tuple[str | int, ...], Any]],
                                      renames: list[tuple[str | int, ...]]) -> None:
    target.write_text(mutated(changes, renames))
    assert_only_located_problems(target)


@pytest.mark.parametrize("raw", ["<huge-int>", "<huge-negative>", "<huge-hex>"])
def test_an_integer_over_4300_digits_is_refused_where_it_is(target: Path, raw: str) -> None:
    target.write_text(mutated([(("tasks", "fan", "priority"), raw)]))
    _, problems = goatclaw.check(target)
    assert [(p.path, p.message) for p in problems] == [
        ("tasks.fan.priority", "integer is too large: more than 4,300 digits")]
    assert problems[0].location is not None and problems[0].location.line == 1


@pytest.mark.parametrize(("hooks", "where"), [([[]], "hooks[0]"), ([None], "hooks[0]"), ([1], "hooks[0]"),
                                             ([{"use": 1}], "hooks[0].use")])
def test_a_hook_of_the_wrong_type_is_a_schema_problem(target: Path, hooks: list[Any], where: str) -> None:
    target.write_text(mutated([(("hooks",), hooks)]))
    _, problems = goatclaw.check(target)
    assert [p.path for p in problems if p.path.startswith("hooks")] == [where]
    assert all(p.location is not None for p in problems)


@pytest.mark.parametrize(("rule", "kept"), [
    ({"schema": 1}, []), ({"schema": [[]]}, []), ({"regex": []}, []), ({"regex": None}, []),
    ({"judge": "x", "threshold": "high"}, [("judge", "x", {})]), ({"use": "v", "with": 1}, [("use", "v", {})])])
def test_a_rule_of_the_wrong_type_is_a_schema_problem(target: Path, rule: dict[str, Any],
                                                      kept: list[tuple[str, Any, dict[str, Any]]]) -> None:
    target.write_text(mutated([(("tasks", "fan", "validate"), [rule])]))
    pipeline, problems = goatclaw.check(target)
    ours = [p for p in problems if p.path.startswith("tasks.fan.validate")]
    assert ours and all(p.location is not None for p in ours)
    # what the schema refused never reaches a later check, nor a run
    assert pipeline is not None
    assert [(r.kind, r.arg, dict(r.options)) for r in pipeline.tasks["fan"].validate] == kept


def test_a_cassette_path_too_long_for_the_system_is_no_traceback(project: Path) -> None:
    (project / "goatclaw.yaml").write_text(f"version: 1\nllm: {{cassette: {'x' * 5000}}}\n")
    pipeline = project / "p.yaml"
    pipeline.write_text("version: 1\ntasks:\n  a: {uses: llm, with: {prompt: hi, model: gpt-4o-mini}}\n")
    _, problems = goatclaw.check(pipeline)
    assert all(p.location is not None for p in problems)


def test_a_test_file_naming_a_pipeline_too_long_for_the_system_is_located(project: Path) -> None:
    (project / "p.test.yaml").write_text(f"version: 1\npipeline: {'x' * 5000}.yaml\n"
                                         "tests:\n  one: {expect: {status: succeeded}}\n")
    with pytest.raises(SpecError) as info:
        load_tests(project / "p.test.yaml")
    assert all(p.location is not None for p in info.value.problems)
