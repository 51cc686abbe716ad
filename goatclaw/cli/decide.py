"""``goatclaw approve``, ``goatclaw reject`` and ``goatclaw approvals``: decisions on waiting runs.

Registered on the app by importing this module. Each command calls the public API
(:func:`goatclaw.adecide`, :func:`goatclaw.approvals`) and renders. After a decision the run
resumes in this process, shown like ``apply``, and the command exits with the run's code
(0 succeeded, 1 failed, 4 waiting again for another approval); ``--no-resume`` records the
decision only (exit 0). Inputs that do not fit the request's schema are exit code 2.

(``goatclaw/cli/approve.py`` is another thing: the terminal question for an agent's tool call.)
"""

from __future__ import annotations

import getpass
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from goatclaw.cli import options
from goatclaw.cli.app import (
    JsonOption,
    Output,
    StoreOption,
    _open_store,
    _out,
    _output_mode,
    _plain,
    app,
    handles_errors,
)
from goatclaw.cli.text import shown

if TYPE_CHECKING:  # rich is imported when a command prints with it, not when the app is built
    from rich.console import Console

__all__ = ["approvals_list", "approve", "print_approvals", "reject"]

RunArg = Annotated[str, typer.Argument(help="A run id, a unique prefix of one, or 'last'.",
                                       autocompletion=options.complete_run_ids)]
TaskArg = Annotated[str | None, typer.Argument(help="The task whose approval this is (needed when the run waits for "
                                                     "several).")]
WhoOption = Annotated[str | None, typer.Option("--as", metavar="WHO", help="Who decides (default: $USER).")]
NoResumeOption = Annotated[bool, typer.Option("--no-resume", help="Record the decision only; resume the run later "
                                              "(goatclaw apply FILE --resume --run RUN).")]
OutputOption = Annotated[Output, typer.Option("--output", "-o", help="How the resumed run is shown: rich, plain "
                                              "or json.")]


@app.command()
@handles_errors
def approve(
    run: RunArg,
    task: TaskArg = None,
    input_: Annotated[list[str] | None, typer.Option(
        "--input", "-i", callback=options.var_pairs, metavar="KEY=VALUE",
        help="A value the approval asks for (its inputs schema): key=value, the value read as YAML. Repeatable.")
    ] = None,
    who: WhoOption = None,
    no_resume: NoResumeOption = False,
    output: OutputOption = Output.auto,
    store: StoreOption = None,
) -> None:
    """Approve a waiting run's approval; the run resumes under its own id (finished tasks do not run again)."""
    from goatclaw.api import parse_var

    values = dict(parse_var(text) for text in input_ or [])  # checked as key=value by the option's callback
    _decide(run, task, approve=True, who=who, inputs=values, reason=None, resume=not no_resume, output=output,
            store=store)


@app.command()
@handles_errors
def reject(
    run: RunArg,
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why (kept with the decision and in the audit chain).")],
    task: TaskArg = None,
    who: WhoOption = None,
    no_resume: NoResumeOption = False,
    output: OutputOption = Output.auto,
    store: StoreOption = None,
) -> None:
    """Reject a waiting run's approval: the task fails (error class rejected), what needs it does not run."""
    _decide(run, task, approve=False, who=who, inputs=None, reason=reason, resume=not no_resume, output=output,
            store=store)


@app.command("approvals")
@handles_errors
def approvals_list(
    all_: Annotated[bool, typer.Option("--all", help="Decided requests too, with their decisions.")] = False,
    run: Annotated[str | None, typer.Option("--run", help="Only this run's (an id, a prefix, or 'last').")] = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """The approval requests waiting for a decision, with their evidence (requests past their timeout are rejected)."""
    import goatclaw

    rows = goatclaw.approvals(store=store, run_id=run, waiting=not all_)
    if as_json:
        from goatclaw.jsontext import dumps_pretty

        print(dumps_pretty(rows))
    else:
        print_approvals(rows, _out())


def _who(given: str | None) -> str:
    """The decider: ``--as``, else the login name."""
    if given:
        return given
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return "unknown"


def _decide(run: str, task: str | None, *, approve: bool, who: str | None, inputs: dict[str, Any] | None,
            reason: str | None, resume: bool, output: Output, store: Path | None) -> None:
    """Record the decision, resume the run as ``apply`` shows it, exit with the run's code."""
    import goatclaw
    from goatclaw.cli import border, ci
    from goatclaw.cli.render import LiveView, PlainView, print_result

    mode = _output_mode(output)
    bus = goatclaw.Bus()
    decision = goatclaw.adecide(run, task, approve=approve, who=_who(who), inputs=inputs, reason=reason,
                                store=store, resume=resume, bus=bus)
    if mode == "rich":
        with LiveView(bus, _out()):
            result = border.run(decision)
    else:
        if mode == "plain":
            PlainView(bus, footer=False)
        result = border.run(decision)
    verb = "approved" if approve else "rejected"
    if result is None:
        why = ("resume it with: goatclaw apply FILE --resume --run RUN" if not resume else
               "it is going on in another process, which takes the decision when it reaches the task")
        print(f"{verb}: {run}{' ' + task if task else ''}; the run was not resumed here: {why}")
        return
    if mode == "json":
        from goatclaw.api import redactor_for
        from goatclaw.jsontext import dumps_pretty

        with _open_store(store) as db:  # the run's own pipeline declares the secrets to mask
            row = db.run(result.run_id)
        pipeline = goatclaw.load(row.file) if row is not None and row.file else None
        text = dumps_pretty(result.to_dict())
        print(redactor_for(pipeline).mask(text) if pipeline is not None else text)
    else:
        print_result(result, _out() if mode == "rich" else _plain())
    code = ci.exit_code(result)
    if code:
        raise typer.Exit(code)


def print_approvals(rows: list[dict[str, Any]], console: Console) -> None:
    """Each request: run, task, pipeline, since when, until when, the message, then its evidence (escaped)."""
    from rich.text import Text

    if not rows:
        console.print("no approval is waiting")
        return
    for row in rows:
        ev = row.get("evidence") or {}
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["requested_at"]))
        until = "" if row.get("expires_at") is None else \
            f", expires {time.strftime('%Y-%m-%d %H:%M', time.localtime(row['expires_at']))}"
        state = row["decision"] or "waiting"
        head = Text(f"⏸ {row['run_id']} {row['task_id']}" if state == "waiting" else
                    f"· {row['run_id']} {row['task_id']}: {state} by {row['decided_by']}", style="bold")
        head.append(f"  ({row.get('pipeline') or '?'}, since {since}{until})", style="dim")
        console.print(head, soft_wrap=True)
        if ev.get("message"):
            console.print(Text(f"  {shown(ev['message'], lines=5)}"), soft_wrap=True)
        if row.get("reason"):
            console.print(Text(f"  reason: {shown(row['reason'])}"), soft_wrap=True)
        for tid, value in (ev.get("upstream") or {}).items():
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
            console.print(Text(f"  from {tid}: {shown(text, width=120)}", style="dim"), soft_wrap=True)
        _print_follows(ev, console)
        schema = ev.get("inputs") or {}
        for name, prop in (schema.get("properties") or {}).items():
            need = "required" if name in (schema.get("required") or ()) else "optional"
            kind = prop.get("type", "any") if isinstance(prop, dict) else "any"
            console.print(Text(f"  --input {name}=…  ({kind}, {need})"), soft_wrap=True)


def print_run_approvals(run_id: str, requests: list[dict[str, Any]], console: Console) -> None:
    """Each approval request of the run: what it asks and who decided it, or how to decide it."""
    import datetime

    from rich.text import Text

    for r in requests:
        message = shown(str((r.get("evidence") or {}).get("message") or ""), lines=5)  # may quote task output
        if r["decision"] is None:
            line = Text.assemble("  approval of ", (r["task_id"], "bold"), " waiting: ", message)
            if r.get("timeout"):
                ends = datetime.datetime.fromtimestamp(r["requested_at"] + r["timeout"]).isoformat(" ", "seconds")
                line.append(f" (a rejection at {ends})")
            line.append(f"\n    goatclaw approve {run_id} {r['task_id']}  |  goatclaw reject {run_id} "
                        f"{r['task_id']} --reason …", style="dim")
        else:
            when = datetime.datetime.fromtimestamp(r["decided_at"]).isoformat(" ", "seconds") if r["decided_at"] else ""
            line = Text.assemble("  approval of ", (r["task_id"], "bold"), f" {r['decision']} by ",
                                 shown(str(r["decided_by"])), f" at {when}",
                                 *((": ", shown(str(r["reason"]))) if r.get("reason") else ()))
        console.print(line, soft_wrap=True, highlight=False)


def _print_follows(evidence: dict[str, Any], console: Console) -> None:
    """What approving lets run: each task with what its plugin needs, and the cost estimate."""
    from rich.text import Text

    needs = {p["task"]: p.get("needs") or [] for p in evidence.get("permissions") or []}
    follows = evidence.get("downstream") or []
    if follows:
        parts = [f"{t} [{', '.join(needs[t])}]" if needs.get(t) else t for t in follows]
        console.print(Text(f"  then runs: {shown(', '.join(parts), width=200)}"), soft_wrap=True)
    cost = evidence.get("cost") or {}
    if cost.get("tasks"):
        from goatclaw.money import usd

        unpriced = f" (+ {cost['unpriced']} not priced)" if cost.get("unpriced") else ""
        console.print(Text(f"  llm cost estimate: {usd(cost.get('usd') or 0.0)}{unpriced}"), soft_wrap=True)
