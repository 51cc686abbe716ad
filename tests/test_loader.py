"""The YAML loader: located errors for hostile or mistaken input, YAML 1.2 scalars, locations."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from goatclaw.errors import Location, SpecError
from goatclaw.spec.loader import Document, Limits, load_file, load_text


def refused(text: str, *, limits: Limits | None = None) -> SpecError:
    """Load ``text`` as ``p.yaml``, expecting a SpecError; return it."""
    with pytest.raises(SpecError) as info:
        load_text(text, file="p.yaml", limits=limits)
    return info.value


def only_problem(err: SpecError) -> tuple[Location | None, str, str]:
    assert len(err.problems) == 1, err.problems
    p = err.problems[0]
    return p.location, p.path, p.message


# -- duplicate keys ----------------------------------------------------------------------


def test_duplicate_key_is_located_and_names_the_first_definition() -> None:
    doc = load_text("version: 1\nname: a\nname: b\n", file="p.yaml")
    [problem] = doc.problems
    assert str(problem) == "p.yaml:3:1: name: duplicate key 'name' (first defined at line 2, column 1)"


def test_nested_duplicate_key_is_located_at_the_second_one() -> None:
    text = "tasks:\n  a:\n    uses: echo\n    with:\n      x: 1\n      y: 2\n      x: 3\n"
    [problem] = load_text(text, file="p.yaml").problems
    assert problem.location == Location("p.yaml", 7, 7)
    assert problem.path == "tasks.a.with.x"
    assert problem.message == "duplicate key 'x' (first defined at line 5, column 7)"


def test_duplicate_keys_in_flow_mappings_and_repeated_three_times() -> None:
    doc = load_text("a: {k: 1, k: 2}\nb: 1\nb: 2\nb: 3\n", file="p.yaml")
    assert [str(p) for p in doc.problems] == [
        "p.yaml:1:11: a.k: duplicate key 'k' (first defined at line 1, column 5)",
        "p.yaml:3:1: b: duplicate key 'b' (first defined at line 2, column 1)",
        "p.yaml:4:1: b: duplicate key 'b' (first defined at line 2, column 1)",
    ]


def test_same_key_in_different_mappings_is_not_a_duplicate() -> None:
    doc = load_text("a: {x: 1}\nb: {x: 2}\n")
    assert doc.problems == []
    assert doc.data == {"a": {"x": 1}, "b": {"x": 2}}


# -- tags ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "tag"), [
    ("a: !!python/object:os.system ls\n", "tag:yaml.org,2002:python/object:os.system"),
    ("a: !!python/object/apply:os.system [ls]\n", "tag:yaml.org,2002:python/object/apply:os.system"),
    ("a: !!binary aGVsbG8=\n", "tag:yaml.org,2002:binary"),
    ("a: !foo bar\n", "!foo"),
    ("a: !foo {x: 1}\n", "!foo"),
    ("a: !!set {x, y}\n", "tag:yaml.org,2002:set"),
    ("a: !!timestamp 2024-01-01\n", "tag:yaml.org,2002:timestamp"),
])
def test_non_standard_tags_are_refused_where_they_are(text: str, tag: str) -> None:
    location, path, message = only_problem(refused(text))
    assert location == Location("p.yaml", 1, 4)
    assert path == "a"
    assert message == f"tag '{tag}' is not allowed; only plain YAML values are"


def test_a_tag_deep_inside_is_located_with_its_path() -> None:
    location, path, message = only_problem(refused("tasks:\n  a:\n    with:\n      - ok\n      - !!binary aGk=\n"))
    assert (location, path) == (Location("p.yaml", 5, 9), "tasks.a.with[1]")
    assert "not allowed" in message


@pytest.mark.parametrize("text", ["!foo key: 1\n", "!!binary aGk=: 1\n", "? !!python/name:os.system\n: 1\n"])
def test_tags_on_keys_are_refused_too(text: str) -> None:
    _, _, message = only_problem(refused(text))
    assert "is not allowed" in message


@pytest.mark.parametrize(("text", "data"), [
    ("a: !!str 1\n", {"a": "1"}),
    ("a: !!int 0x1f\n", {"a": 31}),
    ("a: !!float 1\n", {"a": 1.0}),
    ("a: !!bool true\n", {"a": True}),
    ("a: !!null ~\n", {"a": None}),
    ("a: !!seq [1]\n", {"a": [1]}),
    ("!!map {a: ! x}\n", {"a": "x"}),
])
def test_standard_tags_are_allowed(text: str, data: Any) -> None:
    loaded = load_text(text).data
    assert loaded == data
    assert type(loaded) is type(data) and [type(v) for v in loaded.values()] == [type(v) for v in data.values()]


@pytest.mark.parametrize(("text", "message"), [
    ("a: !!int x\n", "'x' is not a valid !!int"),
    ("a: !!int 1.5\n", "'1.5' is not a valid !!int"),
    ("a: !!bool yes\n", "'yes' is not a valid !!bool"),
    ("a: !!null x\n", "'x' is not a valid !!null"),
    ("a: !!seq {x: 1}\n", "tag 'tag:yaml.org,2002:seq' does not fit a mapping"),
    ("a: !!map [1]\n", "tag 'tag:yaml.org,2002:map' does not fit a sequence"),
    ("a: !!seq x\n", "tag 'tag:yaml.org,2002:seq' does not fit a scalar"),
])
def test_a_standard_tag_must_fit_its_value(text: str, message: str) -> None:
    assert only_problem(refused(text)) == (Location("p.yaml", 1, 4), "a", message)


# -- alias bombs, depth, size ------------------------------------------------------------------


def billion_laughs(levels: int = 9) -> str:
    lines = ['lol0: &lol0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * 10)}]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_fails_fast_with_a_location() -> None:
    text = billion_laughs()
    assert len(text) < 1000
    start = time.perf_counter()
    err = refused(text)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0
    location, _, message = only_problem(err)
    assert message == "aliases expand to more than 100,000 nodes (an alias bomb?)"
    assert location is not None and location.file == "p.yaml" and 2 <= location.line <= 10


def test_alias_bomb_limit_is_configurable_and_small_aliases_are_fine() -> None:
    text = billion_laughs(levels=3)  # 1,000 'lol's
    doc = load_text(text)
    assert len(doc.data["lol3"]) == 10 and doc.data["lol3"][0][0][0] == "lol"
    _, _, message = only_problem(refused(text, limits=Limits(max_alias_nodes=50)))
    assert "aliases expand to more than 50 nodes" in message


def test_an_alias_to_an_unknown_anchor_is_located() -> None:
    assert only_problem(refused("a: 1\nb: *nope\n")) == (
        Location("p.yaml", 2, 4), "b", "alias '*nope' names no anchor defined before it")


@pytest.mark.parametrize("style", ["flow", "block"])
def test_nesting_over_the_depth_limit_is_located(style: str) -> None:
    depth = 70
    if style == "flow":
        text = "a: " + "[" * depth + "]" * depth + "\n"
        where = Location("p.yaml", 1, 4 + 63)  # the bracket that opens level 65
    else:
        text = "".join(f"{'  ' * i}k{i}:\n" for i in range(depth)) + f"{'  ' * depth}leaf\n"
        where = Location("p.yaml", 65, 129)  # the mapping that opens level 65
    location, _, message = only_problem(refused(text))
    assert message == "nesting is deeper than 64 levels"
    assert location == where


def test_nesting_at_the_depth_limit_is_fine_and_the_limit_is_configurable() -> None:
    text = "a: " + "[" * 63 + "]" * 63 + "\n"  # 64 collections with the top mapping
    assert load_text(text).data["a"] is not None
    _, _, message = only_problem(refused("a: [[[1]]]\n", limits=Limits(max_depth=3)))
    assert message == "nesting is deeper than 3 levels"


def test_a_file_over_the_size_limit_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("version: 1\n" + "x: [" + "1, " * 100 + "1]\n")
    size = path.stat().st_size
    with pytest.raises(SpecError) as info:
        load_file(path, limits=Limits(max_bytes=100))
    location, _, message = only_problem(info.value)
    assert location == Location(str(path), 1, 1)
    assert message == f"file is {size:,} bytes, over the limit of 100"
    assert load_file(path, limits=Limits(max_bytes=size)).data["version"] == 1


def test_text_over_the_size_limit_is_refused() -> None:
    _, _, message = only_problem(refused("a: " + "x" * 200 + "\n", limits=Limits(max_bytes=100)))
    assert message == "text is over the limit of 100 bytes"


def test_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_file(tmp_path / "nope.yaml")
    assert "nope.yaml: cannot read: No such file or directory" in str(info.value)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SpecError) as info:
        load_file(latin)
    assert info.value.problems[0].location == Location(str(latin), 1, 1)
    assert "not UTF-8" in info.value.problems[0].message


# -- syntax, numbers, documents ----------------------------------------------------------------


def test_a_yaml_syntax_error_is_located() -> None:
    location, _, message = only_problem(refused("version: 1\ntasks:\n  a: [1, 2\n  b: 3\n"))
    assert location is not None and location.file == "p.yaml" and location.line == 4
    assert message.startswith("YAML syntax error: ")
    assert "flow sequence" in message


def test_a_bad_indent_is_a_located_syntax_error() -> None:
    location, _, message = only_problem(refused("a:\n  b: 1\n c: 2\n"))
    assert location == Location("p.yaml", 3, 2)
    assert message.startswith("YAML syntax error")


@pytest.mark.parametrize("value", [".inf", "-.inf", "+.Inf", ".nan", ".NaN", "1e400", "-1e400"])
def test_non_finite_numbers_are_refused(value: str) -> None:
    location, path, message = only_problem(refused(f"tasks:\n  a:\n    score: {value}\n"))
    assert (location, path) == (Location("p.yaml", 3, 12), "tasks.a.score")
    assert f"'{value}'" in message and "JSON cannot hold it" in message


def test_quoted_non_finite_numbers_are_just_strings() -> None:
    assert load_text("a: '.inf'\nb: \".nan\"\n").data == {"a": ".inf", "b": ".nan"}


def test_two_documents_are_refused_at_the_second() -> None:
    assert only_problem(refused("version: 1\n---\nversion: 2\n")) == (
        Location("p.yaml", 2, 1), "", "a pipeline file holds one YAML document, found a second")


def test_one_explicit_document_is_fine() -> None:
    assert load_text("---\na: 1\n...\n").data == {"a": 1}


# -- YAML 1.2 scalars ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [
    ("no", "no"), ("yes", "yes"), ("on", "on"), ("off", "off"), ("No", "No"), ("y", "y"), ("n", "n"),
    ("2024-01-01", "2024-01-01"), ("12:30:00", "12:30:00"), ("1_000", "1_000"),
    ("true", True), ("false", False), ("True", True), ("FALSE", False),
    ("0x1f", 31), ("0o17", 15), ("012", 12), ("-7", -7), ("+3", 3),
    ("1.5", 1.5), ("1e3", 1000.0), (".5", 0.5), ("-2.5e-3", -0.0025),
    ("~", None), ("null", None), ("", None),
    ("'no'", "no"), ('"true"', "true"), ("'0x1f'", "0x1f"),
])
def test_yaml_1_2_core_scalars(text: str, value: Any) -> None:
    loaded = load_text(f"v: {text}\n").data["v"]
    assert loaded == value
    assert type(loaded) is type(value)


def test_keys_stay_strings_so_a_task_named_no_is_no() -> None:
    doc = load_text("tasks:\n  no: {uses: echo}\n  on: {uses: echo}\n  1: {uses: echo}\n  true: {uses: echo}\n")
    assert list(doc.data["tasks"]) == ["no", "on", "1", "true"]


# -- merge keys --------------------------------------------------------------------------------------


def test_merge_key_copies_an_anchored_mapping_and_explicit_keys_win() -> None:
    text = "base: &base {uses: echo, retry: 3}\ntask:\n  <<: *base\n  retry: 5\n"
    doc = load_text(text)
    assert doc.problems == []
    assert doc.data["task"] == {"uses": "echo", "retry": 5}


def test_merge_key_with_a_list_of_mappings_first_wins() -> None:
    text = "a: &a {x: 1, y: 1}\nb: &b {y: 2, z: 2}\nc:\n  <<: [*a, *b]\n  w: 0\n"
    assert load_text(text).data["c"] == {"w": 0, "x": 1, "y": 1, "z": 2}


def test_merge_of_a_scalar_is_refused() -> None:
    assert only_problem(refused("a: &a 1\nb:\n  <<: *a\n")) == (
        Location("p.yaml", 3, 7), "b", "'<<' merges a mapping or a list of mappings")


def test_merged_mapping_is_not_shared_with_its_anchor() -> None:
    doc = load_text("a: &a {x: 1}\nb:\n  <<: *a\n  y: 2\n")
    assert doc.data["a"] == {"x": 1}


# -- locations ----------------------------------------------------------------------------------------


PIPELINE = """\
version: 1
tasks:
  a:
    uses: echo
    needs: [x, y]
    with:
      list:
        - one
        - {k: v}
"""


def test_locations_of_values_and_keys() -> None:
    doc = load_text(PIPELINE, file="p.yaml")
    assert doc.locate(("tasks", "a", "needs", 1)) == Location("p.yaml", 5, 16)
    assert doc.locate(("tasks", "a", "needs", 0)) == Location("p.yaml", 5, 13)
    assert doc.locate(("tasks", "a", "needs")) == Location("p.yaml", 5, 12)
    assert doc.locate(("tasks", "a", "needs"), key=True) == Location("p.yaml", 5, 5)
    assert doc.locate(("tasks", "a", "with", "list", 1, "k")) == Location("p.yaml", 9, 15)
    assert doc.locate(("tasks", "a", "with", "list", 1, "k"), key=True) == Location("p.yaml", 9, 12)
    assert doc.locate(("version",)) == Location("p.yaml", 1, 10)


def test_locate_falls_back_to_the_nearest_located_ancestor() -> None:
    doc = load_text(PIPELINE, file="p.yaml")
    assert doc.locate(("tasks", "a", "retry", "attempts")) == doc.locate(("tasks", "a"))
    assert doc.locate(("nothing", "here")) == Location("p.yaml", 1, 1)


def test_locations_of_aliases_point_at_the_alias() -> None:
    doc = load_text("a: &x [1]\nb: *x\n", file="p.yaml")
    assert doc.locate(("b",)) == Location("p.yaml", 2, 4)


# -- property: safe_dump → load_text round-trips, and every node has a location -------------------------


class Yaml12SafeDumper(yaml.SafeDumper):
    """PyYAML's SafeDumper, also quoting strings that YAML 1.2 (but not 1.1) reads as numbers.

    PyYAML writes YAML 1.1, so it leaves ``0o17`` or ``-.5`` unquoted; the loader reads
    YAML 1.2, where those are numbers. Quoting them is what a YAML 1.2 writer does.
    """


Yaml12SafeDumper.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^0o[0-7]+$"), list("0"))
Yaml12SafeDumper.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$"),
    list("-+.0123456789"))

KEYS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,10}", fullmatch=True)
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=20))
JSON_LIKE = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=25,
)


def paths(value: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*prefix, i))
    return out


def canonical(value: Any) -> str:
    """JSON text, so that True != 1 and 1.0 != 1 in the comparison."""
    return json.dumps(value, sort_keys=True)


@pytest.mark.parametrize("flow", [False, True, None])
@settings(max_examples=60, deadline=None)
@given(data=JSON_LIKE)
def test_dumped_data_loads_back_equal_with_every_node_located(flow: bool | None, data: Any) -> None:
    # (not allow_unicode=True: PyYAML then writes U+0085 raw, and reads it back as a line break)
    text = yaml.dump(data, Dumper=Yaml12SafeDumper, default_flow_style=flow)
    doc: Document = load_text(text, file="gen.yaml")
    assert doc.problems == []
    assert canonical(doc.data) == canonical(data)
    missing = [p for p in paths(data) if p not in doc.locations]
    assert missing == []
    lines = text.count("\n") + 1
    assert all(1 <= line <= lines for line, _ in doc.locations.values())


@settings(max_examples=50, deadline=None)
@given(data=st.dictionaries(KEYS, SCALARS, min_size=1, max_size=8))
def test_a_duplicated_key_is_always_found(data: dict[str, Any]) -> None:
    text = yaml.dump(data, Dumper=Yaml12SafeDumper, default_flow_style=False, sort_keys=False)
    first = next(iter(data))
    doc = load_text(text + f"{first}: again\n", file="gen.yaml")
    [problem] = doc.problems
    assert problem.location == Location("gen.yaml", text.count("\n") + 1, 1)
    assert problem.message.startswith(f"duplicate key '{first}' (first defined at line 1, column 1)")
