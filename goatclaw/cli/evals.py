"""``goatclaw runs fork`` and ``goatclaw runs diff``: replay a stored run with one change, and compare two runs.

Registered on the app by importing this module (``goatclaw.cli.app`` does). Each command
parses, calls the public API (:func:`goatclaw.fork`, :func:`goatclaw.diff_runs`) and renders.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from goatclaw.cli import options
from goatclaw.cli.app import StoreOption, _err, _out, _store_file, handles_errors, runs_app

__all__ = ["runs_diff", "runs_fork"]


class DiffFormat(str, Enum):
    """How ``runs diff`` prints."""

    text = "text"
    markdown = "markdown"
    json = "json"


def _set_vars(pairs: list[str] | None) -> dict[str, object]:
    """``--set vars.x=VALUE`` (the value read as YAML, as ``--var`` does)."""
    import goatclaw.api as api
    from goatclaw.errors import GoatclawError

    found: dict[str, object] = {}
    for text in pairs or []:
        key, _, _value = text.partition("=")
        if not key.startswith("vars.") or len(key) <= len("vars."):
            raise typer.BadParameter(f"expected vars.NAME=VALUE, got '{text}'", param_hint="--set")
        try:
            name, value = api.parse_var(text.removeprefix("vars."))
        except GoatclawError as exc:
            raise typer.BadParameter(exc.message, param_hint="--set") from None
        found[name] = value
    return found


@runs_app.command("fork")
@handles_errors
def runs_fork(
    run: Annotated[str, typer.Argument(help="The run to fork: an id, a unique prefix of one, or 'last'.",
                                       autocompletion=options.complete_run_ids)],
    from_task: Annotated[str, typer.Option("--from", help="Re-run this task and every task after it.")],
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Change a variable: vars.NAME=VALUE (a YAML value); the others are the run's.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="The model of --from's task and the llm and agent tasks after it.")] = None,
    edit: Annotated[Path | None, typer.Option(
        "--edit", help="Run this pipeline file (an edited copy: a changed prompt) instead of the run's.")] = None,
    store: StoreOption = None,
) -> None:
    """Fork a stored run: tasks before --from keep their outputs, the rest run again, unchanged LLM calls are free."""
    import goatclaw
    from goatclaw.cli import border
    from goatclaw.cli.render import PlainView, print_result
    from goatclaw.money import usd

    changes = _set_vars(set_)
    path = _store_file(store)
    bus = goatclaw.Bus()
    calls: dict[str, float] = {"live": 0, "stored": 0, "cost": 0.0}

    def count(event: goatclaw.Event) -> None:
        source = str(event.data.get("source"))
        calls[source] = calls.get(source, 0) + 1
        calls["cost"] += float(event.data.get("cost_usd") or 0.0)

    bus.subscribe("llm.call", count)
    PlainView(bus, footer=False)
    result = border.run(goatclaw.afork(run, from_task, store=path, vars=changes, model=model, edit=edit, bus=bus))
    print_result(result, _out())
    _err().print(f"fork of {run} at '{from_task}': {calls['live']:.0f} LLM calls sent ({usd(calls['cost'])}), "
                 f"{calls['stored']:.0f} answered from the stored run; "
                 f"compare: goatclaw runs diff {result.run_id}",
                 highlight=False, markup=False, soft_wrap=True)
    if not result.ok:
        raise typer.Exit(1)


@runs_app.command("diff")
@handles_errors
def runs_diff(
    a: Annotated[str, typer.Argument(help="The first run (an id, a unique prefix, or 'last'); alone, a fork.",
                                     autocompletion=options.complete_run_ids)] = "last",
    b: Annotated[str | None, typer.Argument(
        help="The second run (default: A is a fork, compared with the run it forks).",
        autocompletion=options.complete_run_ids)] = None,
    fmt: Annotated[DiffFormat, typer.Option("--format", "-f", help="text, markdown (a PR comment) or json.")
                   ] = DiffFormat.text,
    changed: Annotated[bool, typer.Option("--changed", help="Only tasks where something changed.")] = False,
    store: StoreOption = None,
) -> None:
    """Compare two stored runs per task: status, output diff, cost, tokens, duration and rule verdicts."""
    import sys

    import goatclaw
    from goatclaw.cli.terminal import printable
    from goatclaw.rundiff import render

    d = goatclaw.diff_runs(a, b, store=_store_file(store))
    text = render(d, fmt.value, all_tasks=not changed)
    sys.stdout.write(printable(text))
