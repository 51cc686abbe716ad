"""Pipelines as CI steps: ``apply``'s reports, ``--fail-on warn`` and ``--max-cost``; ``runs report``.

``goatclaw.cli.app`` calls :func:`report_targets` and :func:`load_checked` before a run
and :func:`finish` after it; importing this module registers ``goatclaw runs report``.
Reports are built from the store (:mod:`goatclaw.reports`), never from the live run.
"""


import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from goatclaw.cli import options
from goatclaw.cli.app import FailOn, _err, _open_store, handles_errors, runs_app
from goatclaw.cli.applying import RUN_EXIT_CODES, exit_code  # a run's exit code: the typer-free `apply` needs it too
from goatclaw.cli.lines import escape

__all__ = ["RUN_EXIT_CODES", "exit_code", "finish", "load_checked", "report_targets"]



class ReportFormat(str, Enum):
    """The formats of ``runs report``."""

    junit = "junit"
    json = "json"
    markdown = "markdown"


def report_targets(specs: list[str] | None) -> list[tuple[str, Path]]:
    """``--report FORMAT:PATH`` options, checked before anything runs (a bad one is a usage error)."""
    if not specs:  # the common case: no report, and no import of the reports module (the store, XML) for it
        return []
    from goatclaw.errors import GoatclawError
    from goatclaw.reports import parse_target

    targets = []
    for spec in specs or []:
        try:
            targets.append(parse_target(spec))
        except GoatclawError as exc:
            raise typer.BadParameter(exc.message, param_hint="--report") from None
    return targets


def load_checked(file: Path, fail_on: FailOn, llm: str | None = None) -> Any:
    """Load and check ``file`` like ``goatclaw.load``, printing its warnings; with ``--fail-on warn`` they fail it.

    ``llm`` is the run's ``--llm`` mode: a replay needs no API key, so none is warned about.
    """
    import goatclaw
    from goatclaw.cli.problems import print_problems
    from goatclaw.errors import SpecError

    pipeline, problems = goatclaw.check(file, llm=llm)
    errors = [p for p in problems if p.severity == "error" or fail_on is FailOn.warn]
    if errors or pipeline is None:
        raise SpecError(errors or problems)
    if problems:
        print_problems(problems, _err())
    return pipeline


def finish(result: Any, targets: list[tuple[str, Path]], *, fail_on: FailOn, max_cost: float | None,
           warnings_shown: bool = False) -> int:
    """After a run: write the reports, then the exit code (a failed run, warnings that fail, a cost over the cap).

    A run that ended well still fails with 1 when ``--fail-on warn`` and a ``warn`` rule
    rejected an output, or when its LLM calls cost more than ``--max-cost``.
    """
    code = exit_code(result)
    if result.store_path is None or not (targets or max_cost is not None or fail_on is FailOn.warn):
        return code  # nothing asks for the stored run to be read back
    from goatclaw.money import usd
    from goatclaw.reports import build, write

    report = build(result.store_path, result.run_id, max_cost=max_cost)
    for path in write(report, targets):
        _err().print(f"report: {path}", highlight=False, soft_wrap=True)
    stopped = [t for t in report.tasks if t.error_class == "budget"]
    if max_cost is not None and stopped:
        names = escape(", ".join(t.id for t in stopped))
        _err().print(f"[red]error:[/] --max-cost {usd(max_cost)} stopped the run: "
                     f"{names} could not afford a call (spent {usd(report.cost_usd)})",
                     markup=True, soft_wrap=True)
    if report.over_budget:
        _err().print(f"[red]error:[/] run {result.run_id} cost {usd(report.cost_usd)}, over --max-cost "
                     f"{usd(max_cost)}", markup=True, soft_wrap=True)
        code = code or 1
    if fail_on is FailOn.warn and report.warnings:
        if not warnings_shown:  # the live view or the plain log showed each one as it came
            from goatclaw.cli.render import warning_text

            for tid, verdict in report.warnings:
                _err().print(warning_text(tid, verdict) or "", style="yellow", markup=False, soft_wrap=True)
        _err().print(f"[red]error:[/] {len(report.warnings)} warning(s) and --fail-on warn", markup=True,
                     soft_wrap=True)
        code = code or 1
    return code


@runs_app.command("report")
@handles_errors
def runs_report(
    run: Annotated[str, typer.Argument(help="A run id, a unique prefix of one, or 'last'.")] = "last",
    fmt: Annotated[ReportFormat, typer.Option("--format", "-f", help="junit, json or markdown.")] = ReportFormat.junit,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout "
                                                "(markdown appends, as $GITHUB_STEP_SUMMARY wants).")] = None,
    max_cost: Annotated[float | None, typer.Option("--max-cost", metavar="USD", min=0, callback=options.finite,
                                                   help="Report the run as failed if it cost more.")] = None,
    store: Annotated[Path | None, typer.Option("--store", help="The store file.")] = None,
) -> None:
    """A stored run as a JUnit, JSON or Markdown report (one test case per task and fan-out item)."""
    from goatclaw.cli.terminal import printable
    from goatclaw.reports import build, render, write

    with _open_store(store) as db:
        report = build(db, run, max_cost=max_cost)
    if output is None:  # on a terminal, a task's error cannot drive it (newlines and tabs stay)
        sys.stdout.write(printable(render(report, fmt.value)))
    else:
        write(report, [(fmt.value, output)])
        _err().print(f"report: {output}", highlight=False, soft_wrap=True)

