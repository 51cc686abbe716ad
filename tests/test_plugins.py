"""Plugins: the example package installed for real, broken packages, argument checks, hooks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import pytest
from typer.testing import CliRunner

import goatclaw
from goatclaw.cli.app import app
from goatclaw.plugin import TaskContext, task

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "plugins" / "goatclaw-example"


@pytest.fixture(scope="session", autouse=True)
def example_installed() -> str:
    """The example plugin package, pip-installed into this environment if it is not yet."""
    try:
        return metadata.version("goatclaw-example")
    except metadata.PackageNotFoundError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q",
                        str(EXAMPLE)], check=True, capture_output=True)
        return metadata.version("goatclaw-example")


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


# -- a broken plugin package: real .dist-info metadata on sys.path -----------------------


@pytest.fixture
def broken_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``goatclaw-broken 6.6.6``: one task fails to import, two have the wrong shape, one works."""
    site = tmp_path / "site"
    dist = site / "goatclaw_broken-6.6.6.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: goatclaw-broken\nVersion: 6.6.6\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""\
        [goatclaw.tasks]
        broken.import = goatclaw_broken_import:run
        broken.shape = goatclaw_broken_shape:no_context
        broken.positional = goatclaw_broken_shape:positional
        broken.fine = goatclaw_broken_shape:fine

        [goatclaw.hooks]
        broken.hook = goatclaw_broken_shape:not_a_hook
        """))
    (site / "goatclaw_broken_import.py").write_text("raise ImportError('needs libfoo, which is missing')\n")
    (site / "goatclaw_broken_shape.py").write_text(textwrap.dedent("""\
        def no_context():
            '''Takes no context.'''

        def positional(ctx, text, /):
            '''Takes its argument by position.'''

        def fine(ctx, *, n: int = 1):
            '''Works.'''
            return n

        not_a_hook = 42
        """))
    monkeypatch.syspath_prepend(str(site))
    yield site
    for name in ("goatclaw_broken_import", "goatclaw_broken_shape"):
        sys.modules.pop(name, None)


# -- the example package ---------------------------------------------------------------


def test_the_example_package_is_installed_and_discovered(example_installed: str) -> None:
    infos = {(i.kind, i.name): i for i in goatclaw.Registry().plugins()}
    for key in (("task", "text.stats"), ("task", "slugify"), ("validator", "example.slug"),
                ("hook", "example.timing")):
        assert infos[key].package == "goatclaw-example"
        assert infos[key].version == example_installed
        assert infos[key].error is None
    assert infos[("task", "echo")].package == "goatclaw"  # built-ins list through the same path


def test_plugins_command_lists_package_version_doc_and_arguments(example_installed: str) -> None:
    result = cli("plugins", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    stats = rows["text.stats"]
    assert (stats["kind"], stats["package"], stats["version"]) == ("task", "goatclaw-example", example_installed)
    assert stats["doc"].startswith("Count the characters")
    assert {a["name"]: a["type"] for a in stats["arguments"]} == {"text": "str", "words_per_minute": "int"}
    assert rows["example.timing"]["kind"] == "hook"
    assert rows["example.timing"]["spec"]["events"] == ["on_run_start", "before_task", "after_task", "on_run_end"]
    table = cli("plugins")
    assert table.exit_code == 0
    assert "goatclaw-example" in table.stdout and "text.stats" in table.stdout


def test_plugins_show_gives_the_details() -> None:
    result = cli("plugins", "show", "text.stats")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "goatclaw-example" in out and "words_per_minute" in out and "200" in out and "cacheable" in out
    missing = cli("plugins", "show", "text.stat")
    assert missing.exit_code == 1
    assert "text.stats" in missing.output  # suggested


def test_a_pipeline_uses_the_task_validator_and_hook(write_pipeline: Callable[..., Path], project: Path) -> None:
    path = write_pipeline("""
        version: 1
        name: example
        hooks:
          - use: example.timing
            with: {path: out/timings.json}
        tasks:
          stats:
            uses: text.stats
            with: {text: "Plugins are small. They are checked before anything runs."}
          slug:
            uses: slugify
            needs: stats
            with: {text: "Hello, ${{ tasks.stats.output.words }} Plugin Words!"}
            validate:
              - use: example.slug
                with: {max_length: 40}
        """)
    _, problems = goatclaw.check(path)
    assert problems == []
    result = goatclaw.run(path, store=False)
    assert result.ok, result.error
    assert result.tasks["stats"].output == {"chars": 57, "words": 9, "sentences": 2, "reading_minutes": 1}
    assert result.tasks["slug"].output == "hello-9-plugin-words"
    summary = json.loads((project / "out" / "timings.json").read_text())
    assert summary["status"] == "succeeded"
    assert set(summary["tasks"]) == {"stats", "slug"}


def test_the_example_validator_judges_the_output(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          slug:
            uses: echo
            with: {value: "Not A Slug!"}
            validate:
              - use: example.slug
        """)
    result = goatclaw.run(path, store=False)
    assert result.tasks["slug"].error_class == "validation", result.to_dict()
    assert "rule 1 (use)" in (result.tasks["slug"].error or "")


def test_validate_catches_bad_arguments_of_a_third_party_task(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          unknown:
            uses: text.stats
            with: {text: hi, wpm: 100}
          missing:
            uses: slugify
            with: {max_length: 10}
          mistyped:
            uses: text.stats
            with:
              text: [not, a, string]
              words_per_minute: fast
          templated:
            uses: text.stats
            with: {text: hi, words_per_minute: "${{ vars.n }}"}
          badrule:
            uses: slugify
            with: {text: hi}
            validate:
              - use: example.slugg
              - use: example.slug
                with: {max_length: long}
        hooks:
          - use: example.timing
            with: {file: x.json}
        vars: {n: 3}
        """)
    result = cli("validate", path.name)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if "p.yaml:" in line]
    assert lines == [
        "p.yaml:5:22: tasks.unknown.with.wpm: 'text.stats' takes no argument 'wpm' (it takes: text, words_per_minute)",
        "p.yaml:8:11: tasks.missing.with: 'slugify' needs argument 'text'",
        "p.yaml:12:7: tasks.mistyped.with.text: 'text.stats' argument 'text' expects str, got list "
        "['not', 'a', 'string']",
        "p.yaml:13:7: tasks.mistyped.with.words_per_minute: 'text.stats' argument 'words_per_minute' expects int, "
        "got string 'fast'",
        "p.yaml:21:14: tasks.badrule.validate[0].use: unknown validator 'example.slugg' (did you mean "
        "'example.slug'?)",
        "p.yaml:23:16: tasks.badrule.validate[1].with.max_length: 'example.slug' argument 'max_length' expects "
        "int, got string 'long'",
        "p.yaml:26:12: hooks[0].with.file: 'example.timing' takes no argument 'file' (it takes: path)",
    ]
    assert [line.split(":")[0] for line in lines] == ["p.yaml"] * len(lines)


# -- types and declared schemas ----------------------------------------------------------


def typed(ctx: TaskContext, *, mode: Literal["a", "b"] = "a", limit: int | None = None, ratio: float = 1.0,
          tags: list[str] | None = None, opts: dict[str, int] | None = None, flag: bool = False) -> None:
    """Every kind of hint."""


@task(schema={"type": "object", "required": ["url"], "additionalProperties": False,
              "properties": {"url": {"type": "string", "format": "uri"}, "tries": {"type": "integer", "minimum": 1}}})
def declared(ctx: TaskContext, **kwargs: Any) -> None:
    """Described by a JSON Schema."""


@pytest.mark.parametrize(("args", "bad"), [
    ({"mode": "a", "limit": None, "ratio": 2, "tags": ["x"], "opts": {"k": 1}, "flag": True}, []),
    ({"mode": "c"}, ["mode"]),
    ({"limit": True}, ["limit"]),  # a bool is not an int
    ({"ratio": "1.5"}, ["ratio"]),
    ({"tags": ["x", 2]}, ["tags"]),
    ({"opts": {"k": "v"}}, ["opts"]),
    ({"flag": "yes", "limit": "${{ vars.n }}"}, ["flag"]),
])
def test_constant_arguments_are_checked_against_type_hints(args: dict[str, Any], bad: list[str]) -> None:
    reg = goatclaw.Registry(entry_points=False)
    reg.register_task("typed", typed)
    assert [name for name, _ in reg.task("typed").check_args(args)] == bad


def test_a_declared_schema_checks_with(write_pipeline: Callable[..., Path]) -> None:
    reg = goatclaw.Registry(entry_points=False)
    reg.register_task("declared", declared)
    path = write_pipeline("""
        version: 1
        tasks:
          a:
            uses: declared
            with: {tries: 0, extra: 1}
          b:
            uses: declared
            with: {url: "${{ vars.u }}"}
        vars: {u: "https://example.com"}
        """)
    _, problems = goatclaw.check(path.name, registry=reg)
    assert [str(p) for p in problems] == [
        "p.yaml:5:11: tasks.a.with: 'declared': 'url' is a required property",
        "p.yaml:5:11: tasks.a.with: 'declared': Additional properties are not allowed ('extra' was unexpected)",
        "p.yaml:5:12: tasks.a.with.tries: 'declared': tries: 0 is less than the minimum of 1",
    ]


# -- broken plugins ----------------------------------------------------------------------


def test_a_broken_plugin_package_is_reported_and_the_others_work(broken_package: Path) -> None:
    infos = {i.name: i for i in goatclaw.Registry().plugins()}
    imp = infos["broken.import"].error or ""
    assert "goatclaw-broken 6.6.6" in imp and "ImportError: needs libfoo" in imp
    assert "wrong shape" in (infos["broken.shape"].error or "") and "TaskContext" in (infos["broken.shape"].error or "")
    assert "keyword arguments" in (infos["broken.positional"].error or "")
    assert "implements none of" in (infos["broken.hook"].error or "")
    assert infos["broken.fine"].error is None and infos["broken.fine"].package == "goatclaw-broken"
    assert infos["text.stats"].error is None and infos["echo"].error is None


def test_the_plugins_command_survives_a_broken_package(broken_package: Path) -> None:
    result = cli("plugins", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert "needs libfoo" in rows["broken.import"]["error"]
    assert rows["slugify"]["error"] is None
    table = cli("plugins")
    assert table.exit_code == 0
    assert "broken.import" in table.stdout and "slugify" in table.stdout


def test_a_broken_plugin_fails_its_task_only(broken_package: Path, write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          bad:
            uses: broken.import
          good:
            uses: broken.fine
            with: {n: 3}
          other:
            uses: text.stats
            with: {text: still works}
        """)
    reg = goatclaw.Registry()
    _, problems = goatclaw.check(path.name, registry=reg)
    assert [str(p) for p in problems] == [
        "p.yaml:4:11: tasks.bad.uses: task 'broken.import' from goatclaw-broken 6.6.6 failed to load: "
        "ImportError: needs libfoo, which is missing"]
    result = goatclaw.run(_unchecked(path), registry=reg, store=False)
    assert result.tasks["bad"].status.value == "failed"
    assert "goatclaw-broken 6.6.6" in (result.tasks["bad"].error or "")
    assert result.tasks["good"].output == 3
    assert result.tasks["other"].output["words"] == 2


def _unchecked(path: Path) -> goatclaw.Pipeline:
    """The pipeline as built, even though validate rejects it (to watch the engine cope)."""
    pipeline, _ = goatclaw.check(path)
    assert pipeline is not None
    return pipeline


def test_a_denied_plugin_is_reported_as_disabled(write_pipeline: Callable[..., Path], project: Path) -> None:
    (project / "goatclaw.yaml").write_text("version: 1\nplugins:\n  deny: [slugify]\n")
    path = write_pipeline("""
        version: 1
        tasks:
          a: {uses: slugify, with: {text: hi}}
          b: {uses: text.stats, with: {text: hi}}
        """)
    _, problems = goatclaw.check(path)
    assert [p.message for p in problems] == [
        "task 'slugify' (goatclaw-example 0.1.0) is disabled in goatclaw.yaml"]


# -- hooks ----------------------------------------------------------------------------------


class Recorder:
    """A hook from Python that records every call and its keyword arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def on_run_start(self, **kw: Any) -> None:
        self.calls.append(("on_run_start", kw))

    def before_task(self, **kw: Any) -> None:
        self.calls.append(("before_task", kw))

    async def after_task(self, **kw: Any) -> None:
        self.calls.append(("after_task", kw))

    def on_task_success(self, *, task_id: str, output: Any) -> None:  # takes only what it names
        self.calls.append(("on_task_success", {"task_id": task_id, "output": output}))

    def on_task_failure(self, **kw: Any) -> None:
        self.calls.append(("on_task_failure", kw))

    def on_run_end(self, **kw: Any) -> None:
        self.calls.append(("on_run_end", kw))


def test_hooks_are_called_in_order_with_keyword_arguments(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        name: hooked
        concurrency: 1
        tasks:
          a: {uses: echo, with: {value: 1}}
          b: {uses: shell, needs: a, with: {run: [sh, -c, "exit 3"]}}
        """)
    rec = Recorder()
    result = goatclaw.run(path, store=False, hooks=[rec])
    assert not result.ok
    assert [c[0] for c in rec.calls] == ["on_run_start", "before_task", "after_task", "on_task_success",
                                         "before_task", "after_task", "on_task_failure", "on_run_end"]
    start, before_a, after_a, success_a, _, after_b, failure_b, end = (c[1] for c in rec.calls)
    assert start["run_id"] == result.run_id and start["pipeline"] == "hooked" and start["tasks"] == ["a", "b"]
    assert before_a == {"run_id": result.run_id, "pipeline": "hooked", "task_id": "a", "uses": "echo"}
    assert after_a["status"] == "succeeded" and after_a["output"] == 1 and after_a["attempts"] == 1
    assert success_a == {"task_id": "a", "output": 1}
    assert after_b["status"] == "failed" and failure_b["task_id"] == "b" and "3" in failure_b["error"]
    assert end["status"] == "failed" and end["run_id"] == result.run_id


class Exploding:
    """A hook that fails in before_task."""

    def before_task(self, *, task_id: str) -> None:
        raise RuntimeError(f"boom at {task_id}")


def test_a_failing_hook_is_reported_and_does_not_fail_the_run(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          a: {uses: echo, with: {value: 1}}
        """)
    bus = goatclaw.Bus()
    seen: list[goatclaw.Event] = []
    bus.subscribe("hook.*", seen.append)
    rec = Recorder()
    result = goatclaw.run(path, store=False, hooks=[Exploding(), rec], bus=bus)
    assert result.ok
    assert [(e.topic, e.task, e.data["hook"], e.data["event"], e.data["error"]) for e in seen] == [
        ("hook.failed", "a", "Exploding", "before_task", "RuntimeError: boom at a")]
    assert "on_run_end" in [c[0] for c in rec.calls]  # the other hook still ran


def test_plain_output_warns_about_a_failing_hook(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        hooks:
          - use: example.timing
            with: {path: /proc/nope/timings.json}
        tasks:
          a: {uses: echo, with: {value: 1}}
        """)
    result = cli("apply", str(path), "--output", "plain")
    assert result.exit_code == 0, result.output
    assert "! hook 'example.timing' failed in on_run_end:" in result.stdout


def test_fail_run_true_makes_a_failing_hook_fail_the_run(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        hooks:
          - use: example.timing
            with: {path: /proc/nope/timings.json}
            fail_run: true
        tasks:
          a: {uses: echo, with: {value: 1}}
        """)
    result = goatclaw.run(path, store=False)
    assert result.status.value == "failed"
    assert result.tasks["a"].status.value == "succeeded"
    assert (result.error or "").startswith("hook 'example.timing' failed in on_run_end: ")


def test_hooks_from_python_by_name_and_a_registered_hook(write_pipeline: Callable[..., Path]) -> None:
    rec = Recorder()
    reg = goatclaw.Registry()
    reg.register_hook("recorder", rec)
    path = write_pipeline("""
        version: 1
        hooks: [recorder]
        tasks:
          a: {uses: echo, with: {value: 1}}
        """)
    assert goatclaw.check(path, registry=reg)[1] == []
    assert goatclaw.run(goatclaw.load(path, registry=reg), registry=reg, store=False).ok
    assert rec.calls[0][0] == "on_run_start"
    assert goatclaw.check(path)[1][0].message.startswith("unknown hook 'recorder'")


# -- lazy discovery ------------------------------------------------------------------------


def test_help_and_validate_import_no_plugin_module(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        tasks:
          a: {uses: echo, with: {value: 1}}
        """)
    probe = ("import sys\nfrom goatclaw.cli import main\n"
             "for argv in (['--help'], ['validate', sys.argv[1]]):\n"
             "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
             "print('LOADED' if any(m.startswith('goatclaw_example') for m in sys.modules) else 'LAZY')\n")
    out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "LAZY"
