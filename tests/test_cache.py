"""The task cache: unchanged cacheable tasks reuse their stored output; everything else runs.

Plugins that count their calls are registered on a fresh Registry; the store is a real
SQLite file in the test's project folder.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

import goatclaw
from goatclaw.cli.app import app
from goatclaw.store import Store

PIPELINE = """
    version: 1
    name: cachey
    vars: {word: hello}
    tasks:
      upper: {uses: shout, with: {text: "${{ vars.word }}"}}
      twice: {uses: shout, needs: [upper], with: {text: "${{ tasks.upper.output }} again"}}
      effect: {uses: poke, needs: [twice], with: {text: "${{ tasks.twice.output }}"}}
      opted_out: {uses: shout, cache: false, with: {text: plain}}
      each: {uses: shout, foreach: [a, b], with: {text: "${{ item }}"}}
    """


class Calls:
    """Counting plugins: ``shout`` is declared cacheable, ``poke`` has side effects."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()

    def registry(self) -> goatclaw.Registry:
        calls = self.count

        @goatclaw.task(cacheable=True)
        async def shout(ctx: goatclaw.TaskContext, text: str) -> str:
            calls[f"{ctx.task_id}[{ctx.index}]" if ctx.index is not None else ctx.task_id] += 1
            return text.upper()

        @goatclaw.task(side_effects=True)
        async def poke(ctx: goatclaw.TaskContext, text: str) -> str:
            calls[ctx.task_id] += 1
            return f"poked {text}"

        reg = goatclaw.Registry(entry_points=False)
        reg.register_task("shout", shout)
        reg.register_task("poke", poke)
        return reg


def _run(path: Path, calls: Calls, **options: Any) -> goatclaw.RunResult:
    reg = calls.registry()
    return goatclaw.run(goatclaw.load(path, registry=reg), registry=reg, **options)


def test_an_unchanged_rerun_takes_cacheable_tasks_from_the_cache(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline(PIPELINE)
    calls = Calls()
    first = _run(path, calls)
    assert first.ok and set(first.counts()) == {"succeeded"}
    second = _run(path, calls)
    assert second.ok
    assert second.outputs == first.outputs
    states = {tid: t.status.value for tid, t in second.tasks.items()}
    assert states == {"upper": "cached", "twice": "cached", "each": "cached", "effect": "succeeded",
                      "opted_out": "succeeded"}
    assert calls.count == {"upper": 1, "twice": 1, "each[0]": 1, "each[1]": 1, "effect": 2, "opted_out": 2}


def test_a_changed_input_reruns_only_what_it_changes(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline(PIPELINE)
    calls = Calls()
    _run(path, calls)
    changed = _run(path, calls, vars={"word": "bye"})
    assert changed.outputs["twice"] == "BYE AGAIN"
    assert calls.count["upper"] == 2 and calls.count["twice"] == 2 and calls.count["each[0]"] == 1


def test_no_cache_runs_everything(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline(PIPELINE)
    calls = Calls()
    _run(path, calls)
    again = _run(path, calls, cache=False)
    assert "cached" not in again.counts()
    assert calls.count["upper"] == 2


def test_a_fan_out_reuses_the_items_that_did_not_change(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline(PIPELINE)
    calls = Calls()
    _run(path, calls)
    path.write_text(path.read_text().replace("foreach: [a, b]", "foreach: [a, b, c]"))
    result = _run(path, calls)
    assert result.outputs["each"] == ["A", "B", "C"]
    assert result.tasks["each"].status.value == "succeeded"  # one item ran: not all from the cache
    assert calls.count["each[0]"] == 1 and calls.count["each[2]"] == 1


def test_the_ttl_expires_stored_outputs(write_pipeline: Callable[..., Path], store_path: Path) -> None:
    path = write_pipeline(PIPELINE.replace('upper: {uses: shout, with', 'upper: {uses: shout, cache: {ttl: 1h}, with'))
    calls = Calls()
    _run(path, calls)
    assert _run(path, calls).tasks["upper"].status.value == "cached"
    with Store.open(store_path) as db, db.transaction() as conn:
        conn.execute("UPDATE cache SET created_at = created_at - 7200")
    assert _run(path, calls).tasks["upper"].status.value == "succeeded"
    assert calls.count["upper"] == 2
    assert calls.count["twice"] == 1  # no ttl: still cached, since its input did not change


def test_outputs_holding_a_secret_are_not_cached(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        name: secretive
        secrets: [TOKEN]
        tasks:
          leak: {uses: shout, with: {text: "${{ secrets.TOKEN }}"}}
        """)
    calls = Calls()
    _run(path, calls, secrets={"TOKEN": "SEKRIT-VALUE"})
    assert _run(path, calls, secrets={"TOKEN": "SEKRIT-VALUE"}).tasks["leak"].status.value == "succeeded"


def test_the_cli_says_what_came_from_the_cache(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline("""
        version: 1
        name: echoes
        tasks:
          a: {uses: echo, with: {value: 1}}
          b: {uses: echo, needs: [a], with: {value: "${{ tasks.a.output }}"}}
        """)
    runner = CliRunner()
    first = runner.invoke(app, ["apply", str(path), "-o", "plain"], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert "from cache" not in first.output
    second = runner.invoke(app, ["apply", str(path), "-o", "plain"], catch_exceptions=False)
    assert second.exit_code == 0
    assert "2 tasks from cache, nothing ran" in second.output
    third = runner.invoke(app, ["apply", str(path), "-o", "plain", "--no-cache"], catch_exceptions=False)
    assert "from cache" not in third.output and "2 succeeded" in third.output


# -- a cached output still meets the task's rules ---------------------------------------------


def _ruled(rule: str) -> str:
    return f"""
        version: 1
        name: ruled
        vars: {{least: 1}}
        tasks:
          count:
            uses: echo
            with: {{value: {{n: 3}}}}
            validate:
              - {rule}
        """


def test_a_changed_rule_does_not_reuse_an_output_it_rejects(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline(_ruled('expr: "output.n >= 1"'))
    first = goatclaw.run(path)
    assert first.ok and first.tasks["count"].status.value == "succeeded"
    path.write_text(path.read_text().replace("output.n >= 1", "output.n >= 5"))
    second = goatclaw.run(path)
    task = second.tasks["count"]
    assert not second.ok and task.status.value == "failed" and task.error_class == "validation", task.error


def test_a_rule_reading_the_run_is_checked_again_on_a_hit(write_pipeline: Callable[..., Path]) -> None:
    path = write_pipeline(_ruled('expr: "output.n >= vars.least"'))
    assert goatclaw.run(path).ok
    assert goatclaw.run(path).tasks["count"].status.value == "cached"  # the same rules, the same vars: reused
    stricter = goatclaw.run(path, vars={"least": 5})
    task = stricter.tasks["count"]
    assert task.status.value == "failed" and task.error_class == "validation", task.error
    with Store.open(stricter.store_path) as db:
        stale = [e for e in db.events(stricter.run_id) if e["topic"] == "task.cache.stale"]
    assert stale and "vars.least" in stale[0]["data"]["reason"]
