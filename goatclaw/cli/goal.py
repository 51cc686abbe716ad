"""``goatclaw run "GOAL"``: a model plans a pipeline for the goal, goatclaw shows it, then runs it like ``apply``.

Registered on the app by importing this module; planning is :mod:`goatclaw.planner`.
Exit codes: those of ``apply`` when the plan runs; 0 when it is shown (no terminal and no
``--yes``), saved or cancelled; 2 when the model never produced a valid pipeline within
the bound (its last problems shown, nothing run).
"""


import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from goatclaw.cli import options
from goatclaw.cli.app import _err, _in_ci, _out, _print_costs, app, apply, handles_errors
from goatclaw.cli.text import shown

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["ask_choice", "run_goal", "show_plan"]

CHOICES = ("run", "edit", "save", "cancel")


@app.command("run")
@handles_errors
def run_goal(
    goal: Annotated[str, typer.Argument(help="What the pipeline should do, in plain words.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Run the plan without asking.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan and show it; save and run nothing.")] = False,
    model: Annotated[str | None, typer.Option("--model", "-m", help="The model that plans (default: goatclaw.yaml's, "
                                              "else the one goatclaw finds: goatclaw doctor).")] = None,
    max_cost: Annotated[float | None, typer.Option(
        "--max-cost", metavar="USD", min=0, callback=options.finite,
        help="The most planning and the run together may spend on LLM calls.")] = None,
    llm: Annotated[str | None, typer.Option("--llm", metavar="MODE", callback=options.llm_mode,
                                            help="LLM calls (planning too): live, record or replay.")] = None,
    repairs: Annotated[int, typer.Option("--repairs", min=0, max=20,
                                         help="How many times an invalid draft goes back to the model.")] = 3,
    store: Annotated[Path | None, typer.Option("--store", help="The store file (default from goatclaw.yaml).")] = None,
) -> None:
    """Plan a pipeline for GOAL with a model, show it (graph, permissions, cost, YAML), then run, edit or save it."""
    from goatclaw.planner import plan_goal

    out = _out()
    planned = plan_goal(goal, model=model, llm=llm, max_cost=max_cost, repairs=repairs,
                        on_draft=lambda d: _draft_line(d, _err()))
    if not planned.ok:
        _refuse(planned)
    if dry_run:
        show_plan(planned, None, out)
        return
    path = _save(planned)
    show_plan(planned, path, out)
    choice = "run" if yes else ask_choice(path) if _interactive() else None
    if choice is None:
        _err().print(f"saved {path}; not run (no terminal: pass --yes to run it, or goatclaw apply {path})",
                     highlight=False, soft_wrap=True)
        return
    if choice in ("save", "cancel"):
        if choice == "cancel":
            path.unlink(missing_ok=True)
        _err().print(f"saved {path}" if choice == "save" else "cancelled: nothing run", highlight=False)
        return
    remaining = None if max_cost is None else max(0.0, max_cost - planned.spent_usd)
    try:
        apply(file=path, llm=llm, max_cost=remaining, store=store)
    finally:
        _record_planning(planned, path, store)


def _interactive() -> bool:
    """Asking is for a person at a terminal: never in CI, never without a TTY."""
    try:
        return not _in_ci() and sys.stdin.isatty() and sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def ask_choice(path: Path) -> str:
    """``run / edit / save / cancel`` on the terminal; ``edit`` opens $EDITOR and checks the file again."""
    import goatclaw
    from goatclaw.cli.problems import print_problems
    from goatclaw.errors import SpecError

    while True:
        choice = typer.prompt("run / edit / save / cancel", default="run", err=True).strip().lower()
        if choice not in CHOICES:
            _err().print(f"choose one of: {', '.join(CHOICES)}", highlight=False)
            continue
        if choice != "edit":
            return choice
        typer.edit(filename=str(path))
        try:
            goatclaw.load(path)
        except SpecError as exc:
            print_problems(exc.problems, _err())
            continue
        _err().print(f"{path}: valid", highlight=False)


def _draft_line(draft: Any, console: "Console") -> None:
    if draft.text is None:
        console.print(f"draft {draft.attempt}: not a JSON object", highlight=False)
    elif draft.errors:
        console.print(f"draft {draft.attempt}: {len(draft.errors)} problem{'s' if len(draft.errors) != 1 else ''}, "
                      "sent back for repair", highlight=False)
    else:
        console.print(f"draft {draft.attempt}: valid", highlight=False)


def _refuse(planned: Any) -> None:
    """The model never produced a valid pipeline: its last problems, exit 2, nothing run."""
    from goatclaw.cli.problems import print_problems

    err = _err()
    err.print(f"error: {planned.model} gave no valid pipeline in {len(planned.drafts)} drafts; the last one's "
              "problems:", highlight=False, soft_wrap=True)
    last = planned.drafts[-1] if planned.drafts else None
    if last is None or last.text is None:
        err.print("  the answer was not a JSON object", highlight=False)
    else:
        print_problems(last.errors, err)
    raise typer.Exit(2)


def _save(planned: Any) -> Path:
    """Save the plan; a different file already at its path is never overwritten (``<slug>-2.yaml``, …)."""
    path = planned.path
    n = 1
    while path.exists() and path.read_text(encoding="utf-8", errors="replace") != planned.text:
        n += 1
        path = planned.path.with_name(f"{planned.path.stem}-{n}.yaml")
    planned.path = path
    return planned.save()


def show_plan(planned: Any, path: Path | None, out: "Console") -> None:
    """The plan: the graph, each task's permissions, the cost estimate, and the YAML (shown escaped)."""
    from rich.text import Text

    import goatclaw
    from goatclaw.api import permissions_of
    from goatclaw.cli.render import print_permissions, print_plan
    from goatclaw.money import usd

    if planned.chosen:
        out.print(f"model: {shown(planned.chosen, width=300)}", highlight=False, soft_wrap=True)
    file = path or _scratch(planned)
    pipeline = goatclaw.load(file)
    print_plan(goatclaw.plan(pipeline), out)
    out.print("[bold]permissions[/]", markup=True)
    print_permissions(permissions_of(pipeline), out)
    _print_costs(pipeline, file, False)
    out.print(f"  planning: {len(planned.calls)} call{'s' if len(planned.calls) != 1 else ''}, "
              f"{usd(planned.spent_usd)}", highlight=False)
    out.print(Text(shown(str(path or planned.path)), style="bold"), soft_wrap=True)
    for line in planned.text.splitlines():
        out.print(shown(line, width=300), highlight=False, soft_wrap=True, markup=False)
    if path is None:
        file.unlink(missing_ok=True)


def _scratch(planned: Any) -> Path:
    """For ``--dry-run``: the plan in a hidden file beside where it would go (removed after showing)."""
    planned.path.parent.mkdir(parents=True, exist_ok=True)
    file = planned.path.with_name(f".{planned.path.stem}.dry-run.yaml")
    file.write_text(planned.text, encoding="utf-8")
    return file


def _record_planning(planned: Any, path: Path, store: Path | None) -> None:
    """The planning calls' ``llm.call`` events, added to the run the plan just made (its latest)."""
    import os

    from goatclaw.api import append_run_events, load_project_for, past_runs
    from goatclaw.planner import slug

    project = load_project_for(path)
    target = store or Path(os.environ.get("GOATCLAW_STORE") or project.store_path)
    runs = past_runs(target, slug(planned.goal), limit=1)
    if runs and planned.calls:
        append_run_events(target, runs[0]["id"], planned.calls)
