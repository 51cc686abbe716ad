"""The example plugins, called directly and through goatclaw."""

from __future__ import annotations

import json
from pathlib import Path

from goatclaw_example.hooks import TimingHook
from goatclaw_example.tasks import slugify, text_stats
from goatclaw_example.validators import is_slug

import goatclaw
from goatclaw.plugin import TaskContext


def ctx() -> TaskContext:
    return TaskContext(run_id="r", task_id="t")


def test_text_stats_counts() -> None:
    out = text_stats(ctx(), text="One two three. Four five!", words_per_minute=2)
    assert out == {"chars": 25, "words": 5, "sentences": 2, "reading_minutes": 3}


def test_text_stats_of_nothing() -> None:
    assert text_stats(ctx(), text="") == {"chars": 0, "words": 0, "sentences": 0, "reading_minutes": 0}


def test_slugify() -> None:
    assert slugify(ctx(), text="Héllo, Wörld!  Again") == "hello-world-again"
    assert slugify(ctx(), text="a b c d", max_length=3) == "a-b"


def test_is_slug() -> None:
    assert is_slug("hello-world") is None
    assert "not a slug" in (is_slug("Hello World") or "")
    assert "longer" in (is_slug("abcdef", max_length=3) or "")
    assert "expected a slug string" in (is_slug(3) or "")


def test_the_entry_points_are_found() -> None:
    registry = goatclaw.Registry()
    assert registry.task("text.stats").package == "goatclaw-example"
    assert registry.source("example.timing", "goatclaw.hooks") is not None


def test_timing_hook_writes_its_summary(tmp_path: Path) -> None:
    hook = TimingHook("out/t.json")
    hook.on_run_start(run_id="r", workspace=tmp_path)
    hook.before_task(task_id="a")
    hook.after_task(task_id="a", status="succeeded")
    hook.on_run_end(run_id="r", pipeline="p", status="succeeded")
    summary = json.loads((tmp_path / "out" / "t.json").read_text())
    assert summary["tasks"]["a"]["status"] == "succeeded"
    assert summary["tasks"]["a"]["seconds"] >= 0
