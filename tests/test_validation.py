"""validate: rules judge a task's output: every kind passing and failing, through real runs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import goatclaw
from goatclaw.cli.app import app
from goatclaw.store import Store


def run_rules(write_pipeline: Callable[..., Path], value: Any, rules: list[dict[str, Any]],
              registry: goatclaw.Registry | None = None) -> goatclaw.RunResult:
    path = write_pipeline(json.dumps({"version": 1, "tasks": {"t": {"uses": "echo", "with": {"value": value},
                                                                     "validate": rules}}}))
    return goatclaw.run(goatclaw.load(path, registry=registry), registry=registry)


CASES = [
    # (rule, passing output, failing output)
    ({"schema": {"type": "object", "required": ["summary"]}}, {"summary": "x"}, {"other": 1}),
    ({"expr": "output.confidence >= 0.8"}, {"confidence": 0.9}, {"confidence": 0.5}),
    ({"expr": "output['items'] | length >= 3"}, {"items": [1, 2, 3]}, {"items": [1]}),
    ({"type": "integer"}, 3, 3.5),
    ({"type": "string"}, "a", 1),
    ({"range": {"min": 0, "max": 1}}, 0.5, 1.5),
    ({"length": 3}, "abc", "abcd"),
    ({"length": {"min": 2, "max": 3}}, [1, 2], [1, 2, 3, 4]),
    ({"format": "email"}, "ada@example.com", "not an email"),
    ({"format": "url"}, "https://example.com/x", "example dot com"),
    ({"format": "uuid"}, "12345678-1234-5678-1234-567812345678", "1234"),
    ({"format": "date"}, "2026-11-24", "24/11/2026"),
    ({"format": "date-time"}, "2026-11-24T10:00:00Z", "2026-11-24"),
    ({"format": "ipv4"}, "10.0.0.1", "::1"),
    ({"format": "ipv6"}, "::1", "10.0.0.1"),
    ({"format": "hostname"}, "api.example.com", "bad host!"),
    ({"regex": "^[a-z-]+$"}, "a-slug", "Not A Slug"),
    ({"one_of": ["red", "green"]}, "red", "blue"),
]


@pytest.mark.parametrize(("rule", "good", "bad"), CASES, ids=[f"{next(iter(c[0]))}-{i}" for i, c in enumerate(CASES)])
def test_every_rule_kind_passes_and_fails(write_pipeline: Callable[..., Path], rule: dict[str, Any], good: Any,
                                         bad: Any) -> None:
    ok = run_rules(write_pipeline, good, [rule])
    assert ok.ok, ok.to_dict()
    failed = run_rules(write_pipeline, bad, [rule])
    task = failed.tasks["t"]
    assert task.status is goatclaw.TaskState.FAILED
    assert task.error_class == "validation"
    assert "rule 1" in (task.error or "")


def test_a_message_replaces_the_default_and_warnings_do_not_fail(write_pipeline: Callable[..., Path],
                                                                store_path: Path) -> None:
    result = run_rules(write_pipeline, {"confidence": 0.5}, [
        {"expr": "output.confidence > 0.9", "severity": "warn", "message": "low confidence"},
        {"type": "object"},
    ])
    assert result.ok
    with Store.open(store_path) as db:
        verdicts = [e["data"] for e in db.events(result.run_id) if e["topic"] == "task.rule"]
    assert [v["passed"] for v in verdicts] == [False, True]
    assert verdicts[0]["message"] == "low confidence" and verdicts[0]["severity"] == "warn"

    failed = run_rules(write_pipeline, 7, [{"type": "string", "message": "must be text"}])
    assert failed.tasks["t"].error == "the output failed validation: rule 1 (type): must be text"


def test_a_custom_validator_from_python(write_pipeline: Callable[..., Path]) -> None:
    seen: list[tuple[Any, dict[str, Any]]] = []

    def short(output: Any, *, limit: int = 5) -> str | None:
        seen.append((output, {"limit": limit}))
        return None if len(output) <= limit else f"{len(output)} characters, over {limit}"

    registry = goatclaw.Registry(entry_points=False)
    registry.register_validator("short", short)
    ok = run_rules(write_pipeline, "tiny", [{"use": "short", "with": {"limit": 4}}], registry)
    assert ok.ok and seen == [("tiny", {"limit": 4})]
    bad = run_rules(write_pipeline, "far too long", [{"use": "short"}], registry)
    assert bad.tasks["t"].error == "the output failed validation: rule 1 (use): 12 characters, over 5"


def test_a_validator_that_raises_is_a_failed_rule_not_a_crash(write_pipeline: Callable[..., Path]) -> None:
    def broken(output: Any) -> bool:
        raise RuntimeError("oops")

    registry = goatclaw.Registry(entry_points=False)
    registry.register_validator("broken", broken)
    result = run_rules(write_pipeline, 1, [{"use": "broken"}], registry)
    assert result.tasks["t"].error_class == "validation"
    assert "raised RuntimeError: oops" in (result.tasks["t"].error or "")


def test_a_catastrophic_regex_on_a_long_input_finishes_quickly(write_pipeline: Callable[..., Path]) -> None:
    began = time.monotonic()
    result = run_rules(write_pipeline, "a" * 50_000 + "!", [{"regex": "^(a+)+$"}])
    assert time.monotonic() - began < 2.0  # Python's re would take longer than the universe's age
    assert result.tasks["t"].error_class == "validation"


def test_schema_ref_loads_a_file_beside_the_pipeline(write_pipeline: Callable[..., Path], project: Path) -> None:
    (project / "answer.schema.json").write_text(json.dumps({"type": "object", "required": ["answer"]}))
    assert run_rules(write_pipeline, {"answer": 42}, [{"schema": {"$ref": "answer.schema.json"}}]).ok
    assert not run_rules(write_pipeline, {"nope": 1}, [{"schema": {"$ref": "answer.schema.json"}}]).ok


def test_validation_failures_are_not_retried_as_infrastructure_errors(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          t:
            uses: echo
            with: {value: 1}
            retry: {attempts: 5, delay: 0}
            validate: [{type: string}]
        """)
    result = goatclaw.run(goatclaw.load(path))
    assert result.tasks["t"].attempts == 1 and result.tasks["t"].error_class == "validation"


def test_validate_checks_rules_statically(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          t:
            uses: echo
            with: {value: 1}
            validate:
              - regex: "(a)\\\\1"
              - schema: {type: nonsense}
              - expr: "output >"
        """)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert any(":7:" in line and "RE2" in line and "validate[0].regex" in line for line in lines), lines
    assert any(":8:" in line and "not a valid JSON Schema" in line for line in lines), lines
    assert any(":9:" in line and "invalid expression" in line for line in lines), lines
