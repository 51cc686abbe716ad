"""Permissions: layers (project, pipeline, task), host patterns, and what validate and plan show."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

import goatclaw
from goatclaw.cli.app import app
from goatclaw.errors import PermissionDenied
from goatclaw.plugin import TaskContext
from goatclaw.security.permissions import Grant, build_grant, covers, host_matches, model_hosts
from goatclaw.spec.model import Permissions


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GOATCLAW_STORE", raising=False)
    return tmp_path


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.mark.parametrize(("host", "port", "pattern", "ok"), [
    ("api.example.com", None, "api.example.com", True),
    ("API.Example.com.", None, "api.example.com", True),
    ("x.api.example.com", None, "*.example.com", True),
    ("example.com", None, "*.example.com", False),
    ("example.com.evil.org", None, "*.example.com", False),
    ("evilexample.com", None, "*.example.com", False),
    ("127.0.0.1", 8080, "127.0.0.1:8080", True),
    ("127.0.0.1", 8081, "127.0.0.1:8080", False),
    ("::1", None, "[::1]", True),
    ("anything.at.all", None, "*", True),
])
def test_host_patterns(host: str, port: int | None, pattern: str, ok: bool) -> None:
    assert host_matches(host, port, pattern) is ok


def test_each_field_comes_from_the_innermost_layer_that_says_it(folder: Path) -> None:
    grant = build_grant([(Permissions(shell=("git",), network=("a.com",)), "project"),
                         (Permissions(network=("a.com",), files_write=("out/",)), "pipeline"),
                         (Permissions(network=False), "task")], folder)
    assert (grant.shell, grant.network, grant.files_read, grant.files_write) == (("git",), False, (".",), ("out/",))
    assert grant.sources["shell"] == "project" and grant.sources["network"] == "task"
    assert grant.sources["env"] == "embedded default" and grant.env is False


def test_covers_says_what_an_inner_layer_adds(folder: Path) -> None:
    assert covers("network", ("*.example.com",), ("api.example.com", "*.a.example.com")) == []
    assert covers("network", ("*.example.com",), ("example.com",)) == ["example.com"]
    assert covers("python", ("json",), ("json.decoder", "json:dumps", "os")) == ["os"]
    assert covers("python", ("builtins:min",), ("builtins",)) == ["builtins"]
    assert covers("files.read", ("data/",), ("data/sub/", "data/*.json", "../data/"), folder) == ["../data/"]
    assert covers("shell", False, ("git",)) == ["git"] and covers("shell", True, True) == []
    assert covers("shell", ("git",), True) == ["true"] and covers("shell", ("git",), False) == []


def test_the_project_grant_is_the_default_of_a_silent_pipeline(folder: Path) -> None:
    write(folder, "goatclaw.yaml", "version: 1\npermissions: {shell: [printf]}\n")
    path = write(folder, "p.yaml", """
        version: 1
        tasks:
          x: {uses: shell, with: {run: [printf, hi]}}
        """)
    result = goatclaw.run(path, store=False)
    assert result.ok and result.tasks["x"].output["stdout"] == "hi"


def test_a_task_narrows_its_pipeline(folder: Path) -> None:
    path = write(folder, "p.yaml", """
        version: 1
        permissions: {shell: [printf, echo]}
        tasks:
          wide: {uses: shell, with: {run: [printf, ok]}}
          narrow: {uses: shell, permissions: {shell: [echo]}, with: {run: [printf, no]}}
        """)
    result = goatclaw.run(path, store=False)
    assert result.tasks["wide"].status.value == "succeeded"
    assert result.tasks["narrow"].error_class == "permission_denied"
    assert "program 'printf' is not in permissions.shell [echo] (task narrow" in (result.tasks["narrow"].error or "")


def test_validate_warns_when_a_plugin_needs_what_nothing_grants(folder: Path) -> None:
    path = write(folder, "p.yaml", """
        version: 1
        tasks:
          x: {uses: shell, with: {run: [printf, hi]}}
        """)
    _, problems = goatclaw.check(path)
    assert [(p.severity, p.path, p.location.line if p.location else None) for p in problems] == [
        ("warn", "tasks.x.uses", 3)]
    assert "'shell' needs permissions.shell, which nothing grants (embedded default)" in problems[0].message


def test_plan_permissions_shows_each_task(folder: Path) -> None:
    path = write(folder, "p.yaml", """
        version: 1
        permissions:
          network: [api.example.com]
          files: {write: [out/]}
        tasks:
          fetch: {uses: http, with: {url: "https://api.example.com/x"}}
          save:
            uses: file.write
            needs: fetch
            permissions: {files: {write: [out/reports/]}}
            with: {path: out/reports/x.json, content: "${{ tasks.fetch.output.body }}"}
        """)
    runner = CliRunner()
    text = runner.invoke(app, ["plan", str(path), "--permissions"])
    assert text.exit_code == 0, text.output
    assert "fetch  uses http, needs network  (output untrusted)" in text.stdout
    assert "api.example.com" in text.stdout and "out/reports/" in text.stdout
    data = json.loads(runner.invoke(app, ["plan", str(path), "--permissions", "--format", "json"]).stdout)
    save = next(r for r in data if r["task"] == "save")
    assert save["granted"]["files.write"]["value"] == ["out/reports/"]
    assert save["granted"]["files.write"]["from"].startswith("task save ")
    assert save["granted"]["network"]["from"].startswith("pipeline ")
    assert save["refused_flows"] == []  # content is not a sink; the path is constant


def test_a_context_without_permissions_may_do_nothing(tmp_path: Path) -> None:
    ctx = TaskContext(run_id="r", task_id="t", workspace=tmp_path)
    for check, arg in ((ctx.require_shell, "ls"), (ctx.require_network, "https://a.com"),
                       (ctx.require_write, "x"), (ctx.require_module, "json")):
        with pytest.raises(PermissionDenied):
            check(arg)
    everything = TaskContext(run_id="r", task_id="t", workspace=tmp_path, permissions=Grant.everything(tmp_path))
    assert everything.require_write("x") == (tmp_path / "x").resolve()


def test_model_hosts() -> None:
    assert model_hosts("openai/gpt-4o-mini", None, {}) == "https://api.openai.com"
    assert model_hosts("gpt-4o", None, {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}) == "http://127.0.0.1:9/v1"
    assert model_hosts("anthropic/claude", "http://localhost:1", {}) == "http://localhost:1"
    assert model_hosts("madeup/x", None, {}) is None
