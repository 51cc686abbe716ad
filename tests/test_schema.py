"""The JSON Schemas and their messages: valid Draft 2020-12, located and readable errors."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import fastjsonschema
import jsonschema
import pytest
from typer.testing import CliRunner

import goatclaw
from goatclaw.api import load_project_for
from goatclaw.cli.app import app
from goatclaw.errors import Location, SpecError
from goatclaw.spec.loader import load_file
from goatclaw.spec.project import load_project
from goatclaw.spec.schema import SCHEMAS, _fast, _full

REPO = Path(__file__).resolve().parent.parent
PACKAGE_SCHEMAS = REPO / "goatclaw" / "schemas"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ALL_FIXTURES = sorted(FIXTURES.rglob("*.yaml"))


def problems_of(path: Path) -> list[str]:
    """``line:col: path: message`` for every problem goatclaw.check finds in ``path``."""
    _, found = goatclaw.check(path)
    return [str(p).removeprefix(f"{path}:") for p in found]


# -- the schemas themselves ----------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEMAS)
def test_shipped_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = json.loads((PACKAGE_SCHEMAS / f"{name}.schema.json").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert jsonschema.validators.validator_for(schema) is jsonschema.Draft202012Validator


@pytest.mark.parametrize("name", SCHEMAS)
def test_repository_schemas_folder_holds_the_shipped_schemas(name: str) -> None:
    assert (REPO / "schemas" / f"{name}.schema.json").read_bytes() == (
        PACKAGE_SCHEMAS / f"{name}.schema.json").read_bytes()


@pytest.mark.parametrize(("args", "name"), [(("pipeline", "--builtins"), "pipeline"), (("goatclaw",), "goatclaw"),
                                           (("test",), "test")])
def test_schema_command_prints_the_shipped_schema(args: tuple[str, ...], name: str) -> None:
    """``goatclaw schema pipeline --builtins`` is the shipped file: regenerate it when a built-in's arguments change."""
    result = CliRunner().invoke(app, ["schema", *args])
    assert result.exit_code == 0, result.output
    shipped = (PACKAGE_SCHEMAS / f"{name}.schema.json").read_text()
    assert result.stdout == shipped, ("the shipped schema is stale: goatclaw schema pipeline --builtins "
                                      "> goatclaw/schemas/pipeline.schema.json")


def test_the_shipped_schema_completes_the_with_keys_of_every_built_in_task() -> None:
    """What an editor reads through the modeline: each built-in's with: keys, typed, a template allowed anywhere."""
    from goatclaw.registry import BUILTIN_TASKS

    shipped = json.loads((PACKAGE_SCHEMAS / "pipeline.schema.json").read_text())
    branches = {b["if"]["properties"]["uses"]["const"]: b for b in shipped["$defs"]["task"]["allOf"]}
    assert set(branches) == set(BUILTIN_TASKS)
    assert {n for n, b in branches.items() if "$comment" not in b} == {"llm", "agent"}  # hand-written in the file
    research = branches["research"]["then"]["properties"]["with"]
    assert {"question", "urls", "search", "memory", "fix_attempts", "max_pages"} <= set(research["properties"])
    assert research["required"] == ["question"] and research["additionalProperties"] is False
    http = branches["http"]["then"]["properties"]["with"]
    assert {"paginate", "auth", "select", "max_wait"} <= set(http["properties"])
    editor = jsonschema.Draft202012Validator(shipped)

    def problems(uses: str, with_: dict[str, object]) -> list[str]:
        return [e.message for e in editor.iter_errors({"version": 1, "tasks": {"t": {"uses": uses, "with": with_}}})]

    assert problems("research", {"question": "${{ vars.q }}", "max_pages": 3}) == []
    assert problems("research", {"question": "q", "max_pages": "${{ vars.n }}"}) == []
    assert any("questoin" in m for m in problems("research", {"questoin": "why?"}))
    assert any("'question' is a required property" in m for m in problems("research", {"urls": ["https://a.b"]}))
    assert problems("research", {"question": "q", "max_pages": "three"})
    assert problems("wait", {"durration": "1s"}) and problems("wait", {"duration": "1s"}) == []


def test_schema_pipeline_adds_the_installed_plugins_with_keys() -> None:
    """Without --builtins the schema also completes the plugins this project can use (the example plugin here)."""
    pytest.importorskip("goatclaw_example", reason="the example plugin is not installed (plugins/goatclaw-example)")
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    shipped = json.loads((PACKAGE_SCHEMAS / "pipeline.schema.json").read_text())
    branches = {b["if"]["properties"]["uses"]["const"]: b for b in printed["$defs"]["task"]["allOf"]}
    assert {"slugify", "text.stats"} <= set(branches)
    slug = branches["slugify"]["then"]["properties"]["with"]
    assert slug["required"] == ["text"] and slug["additionalProperties"] is False
    built_in = [b for b in printed["$defs"]["task"]["allOf"] if b["if"]["properties"]["uses"]["const"]
                not in ("slugify", "text.stats")]
    assert built_in == shipped["$defs"]["task"]["allOf"]


def test_schema_pipeline_under_an_invalid_project_file_is_a_located_error(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "goatclaw.yaml").write_text("version: 1\nnope: 3\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 2 and "goatclaw.yaml:2:1: nope: unknown field 'nope'" in result.output
    assert CliRunner().invoke(app, ["schema", "--builtins"]).exit_code == 0  # needs no project


def test_validation_leaves_the_generated_branches_to_the_plugins(write_pipeline: Callable[..., Path]) -> None:
    """A with: mistake is reported once, by the plugin's check, not a second time by the editor's branch."""
    from goatclaw.spec.schema import GENERATED, load_schema

    assert all(b.get("$comment") != GENERATED for b in load_schema("pipeline")["$defs"]["task"]["allOf"])
    path = write_pipeline("version: 1\ntasks:\n  a:\n    uses: wait\n    with: {durration: 1s}\n")
    found = problems_of(path)
    assert len([p for p in found if "durration" in p]) == 1, found
    templated = write_pipeline("version: 1\nvars: {n: 2}\ntasks:\n  a:\n    uses: wait\n"
                               "    with: {duration: '${{ vars.n }}'}\n")
    assert problems_of(templated) == []


def test_schema_command_refuses_an_unknown_schema() -> None:
    result = CliRunner().invoke(app, ["schema", "nope"])
    assert result.exit_code == 2
    assert "unknown schema 'nope'" in result.output
    assert result.stdout == ""


def test_modelines_point_at_the_schema() -> None:
    """A pipeline that starts with the yaml-language-server modeline gets completion in VS Code."""
    for pipeline in [REPO / "pipelines" / "quickstart.yaml", FIXTURES / "valid" / "full.yaml",
                     FIXTURES / "projects" / "good" / "goatclaw.yaml"]:
        first = pipeline.read_text().splitlines()[0]
        match = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
        assert match, first
        assert (pipeline.parent / match.group(1)).resolve().is_file()


# -- messages --------------------------------------------------------------------------------


def test_unknown_field_says_did_you_mean_at_the_key(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          a:
            uses: echo
            nedds: [b]
          b: {uses: echo}
        """)
    assert problems_of(path) == ["5:5: tasks.a.nedds: unknown field 'nedds' (did you mean 'needs'?)"]


def test_unknown_field_far_from_any_name_has_no_suggestion(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("version: 1\nzzzzz: 1\ntasks: {a: {uses: echo}}\n")
    assert problems_of(path) == ["2:1: zzzzz: unknown field 'zzzzz'"]


@pytest.mark.parametrize(("field", "value", "message"), [
    ("needs", "5", "5 is not of type 'string' or 'array'"),
    ("needs", "{x: 1}", '{"x": 1} is not of type \'string\' or \'array\''),
    ("priority", "high", "'high' is not of type 'integer'"),
    ("timeout", "5 minutes", '"5 minutes" is not a duration (use 500ms, 10s, 2m, 1h or a number of seconds)'),
    ("timeout", "-1", "-1 is less than the minimum of 0"),
    ("timeout", "[1]", "[1] is not of type 'number' or 'string'"),
    ("run_on", "moon", "'moon' is not one of ['local', 'cluster']"),
    ("if", "5", "5 is not of type 'string' or 'boolean'"),
    ("continue_on_error", "maybe", "'maybe' is not of type 'boolean'"),
    ("concurrency", "0", "0 is less than the minimum of 1"),
    ("inputs", "[1]", "1 is not of type 'string'"),
])
def test_wrong_values_are_located_at_the_value(write_pipeline: Callable[..., Path], field: str, value: str,
                                               message: str) -> None:
    path = write_pipeline(f"version: 1\ntasks:\n  b: {{uses: echo}}\n  a:\n    uses: echo\n    {field}: {value}\n")
    col = 4 + len(field) + 3
    if field == "inputs":  # located at the list item
        assert problems_of(path) == [f"6:{col + 1}: tasks.a.{field}[0]: {message}"]
        return
    assert problems_of(path) == [f"6:{col}: tasks.a.{field}: {message}"]


def test_nested_enum_and_minimum(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          a:
            uses: echo
            retry: {attempts: 0, backoff: quadratic}
        """)
    assert problems_of(path) == [
        "5:23: tasks.a.retry.attempts: 0 is less than the minimum of 1",
        "5:35: tasks.a.retry.backoff: 'quadratic' is not one of "
        "['fixed', 'linear', 'exponential', 'fibonacci', 'decorrelated', 'adaptive']",
    ]


def test_a_rule_with_two_kinds_says_so(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          a:
            uses: echo
            validate:
              - expr: output.ok
                regex: ^x$
        """)
    assert problems_of(path) == ["6:9: tasks.a.validate[0]: has 'expr' and 'regex'; use exactly one of them"]


def test_missing_required_fields_are_located_at_the_key(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("version: 1\ntasks:\n  a:\n    with: {x: 1}\n")
    assert problems_of(path) == ["3:3: tasks.a: missing required field 'uses'"]
    path = write_pipeline("version: 1\n")
    assert problems_of(path) == ["1:1: missing required field 'tasks'"]


def test_bad_task_names_are_located_at_the_name(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("version: 1\ntasks:\n  ok: {uses: echo}\n  1bad: {uses: echo}\n")
    assert problems_of(path) == [
        "4:3: tasks.1bad: invalid name '1bad': '1bad' does not match '^[A-Za-z_][A-Za-z0-9_-]*$'"]


def test_a_trailing_newline_is_not_part_of_a_duration(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline('version: 1\ntasks:\n  a: {uses: echo, timeout: "10s\\n"}\n')
    assert problems_of(path) == [
        '3:28: tasks.a.timeout: "10s\\n" is not a duration (use 500ms, 10s, 2m, 1h or a number of seconds)']


def test_not_a_mapping_at_all(write_pipeline: Callable[..., Path]) -> None:
    assert problems_of(write_pipeline("- 1\n")) == ["1:1: [1] is not of type 'object'"]
    assert problems_of(write_pipeline("")) == ["1:1: None is not of type 'object'"]


def test_every_error_at_once_sorted_by_line(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 2
        concurrency: 0
        tasks:
          z:
            uses: echo
            priority: high
          a:
            uses: echo
            nedds: [z]
            timeout: soon
        zzz: true
        """)
    found = problems_of(path)
    assert found == [
        "1:10: version: 1 was expected",
        "2:14: concurrency: 0 is less than the minimum of 1",
        "6:15: tasks.z.priority: 'high' is not of type 'integer'",
        "9:5: tasks.a.nedds: unknown field 'nedds' (did you mean 'needs'?)",
        '10:14: tasks.a.timeout: "soon" is not a duration (use 500ms, 10s, 2m, 1h or a number of seconds)',
        "11:1: zzz: unknown field 'zzz'",
    ]
    with pytest.raises(SpecError) as info:
        goatclaw.load(path)
    assert [str(p).removeprefix(f"{path}:") for p in info.value.problems] == found
    assert info.value.exit_code == 2
    assert info.value.location == Location(str(path), 1, 10)


# -- the fast path and the full validator agree -----------------------------------------------


def schema_name(path: Path) -> str:
    return "goatclaw" if path.name == "goatclaw.yaml" else "pipeline"


@pytest.mark.parametrize("fixture", ALL_FIXTURES, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_fast_path_and_jsonschema_agree(fixture: Path) -> None:
    try:
        doc = load_file(fixture)
    except SpecError:
        pytest.skip("not loadable YAML; no data to validate")
    name = schema_name(fixture)
    full_ok = _full(name).is_valid(doc.data)
    try:
        _fast(name)(doc.data)
        fast_ok = True
    except fastjsonschema.JsonSchemaException:
        fast_ok = False
    assert fast_ok == full_ok
    # and the folder says which it is
    if "valid" in fixture.parts or "good" in fixture.parts:
        assert full_ok


def test_there_are_fixtures_of_both_kinds() -> None:
    assert len([f for f in ALL_FIXTURES if "valid" in f.parts]) >= 5
    assert len([f for f in ALL_FIXTURES if "invalid" in f.parts]) >= 5


def test_the_fast_path_does_not_write_defaults_into_the_data(project: Path) -> None:
    source = FIXTURES / "valid" / "merge_keys.yaml"
    before = load_file(source).data
    pipeline = goatclaw.load(source)
    assert pipeline.source.data == before
    assert "fail_fast" not in pipeline.source.data["tasks"]["first"]


def test_a_task_retry_inherits_the_defaults_it_does_not_set(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        defaults:
          retry: {attempts: 5, delay: 3s}
        tasks:
          a:
            uses: echo
            retry: {max_delay: 10s}
        """)
    retry = goatclaw.load(path).tasks["a"].retry
    assert (retry.attempts, retry.delay, retry.max_delay) == (5, 3.0, 10.0)


# -- the project file ---------------------------------------------------------------------------


BAD_PROJECT = FIXTURES / "projects" / "bad"
BAD_PROJECT_PROBLEMS = [
    "3:3: store.pth: unknown field 'pth' (did you mean 'path'?)",
    "4:11: executor: 'kubernetes' is not one of ['local', 'dask']",
    '7:12: defaults.timeout: "soon" is not a duration (use 500ms, 10s, 2m, 1h or a number of seconds)',
    "8:1: concurrency: duplicate key 'concurrency' (first defined at line 5, column 1)",
]


def test_project_file_errors_are_located() -> None:
    file = BAD_PROJECT / "goatclaw.yaml"
    with pytest.raises(SpecError) as info:
        load_project(file)
    assert [str(p).removeprefix(f"{file}:") for p in info.value.problems] == BAD_PROJECT_PROBLEMS


def test_project_for_a_pipeline_finds_and_checks_its_project_file() -> None:
    with pytest.raises(SpecError) as info:
        load_project_for(BAD_PROJECT / "pipeline.yaml")
    assert {p.location.file for p in info.value.problems if p.location} == {str(BAD_PROJECT / "goatclaw.yaml")}
    good = load_project_for(FIXTURES / "projects" / "good" / "pipeline.yaml")
    assert good.file == FIXTURES / "projects" / "good" / "goatclaw.yaml"
    assert (good.concurrency, good.model, good.defaults.timeout) == (3, "gpt-4o-mini", 30.0)
    assert good.store_path == (FIXTURES / "projects" / "good" / ".goatclaw" / "good.db").resolve()


def test_validate_reports_a_broken_project_file(project: Path) -> None:
    pipeline = BAD_PROJECT / "pipeline.yaml"
    result = CliRunner().invoke(app, ["validate", str(pipeline)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == [f"{BAD_PROJECT / 'goatclaw.yaml'}:{p}" for p in BAD_PROJECT_PROBLEMS]
