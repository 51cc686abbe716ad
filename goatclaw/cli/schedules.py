"""``goatclaw schedules list``: the project's scheduled pipelines and when each schedule fires next.

Registered on the app by importing this module (``goatclaw.cli.app`` does). The data comes
from :func:`goatclaw.schedules`; the server's scheduler (``goatclaw serve``) is what fires them.
Exit codes: 0, or 2 when a pipeline with a ``schedule:`` is invalid (it is listed with its error).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from goatclaw.cli.app import _err, _out, app, handles_errors

__all__ = ["schedules_app"]

schedules_app = typer.Typer(help="Scheduled pipelines (schedule: in a pipeline file; docs/schedules.md).",
                            no_args_is_help=True)
app.add_typer(schedules_app, name="schedules")


@schedules_app.command("list")
@handles_errors
def schedules_list(
    next_n: Annotated[int, typer.Option("--next", "-n", min=1, max=1000, help="How many next fires to show.")] = 3,
    store: Annotated[Path | None, typer.Option("--store", help="The store whose last fires to show.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List each schedule of the project's pipelines: cron, time zone, overlap, catch-up and the next fires."""
    import goatclaw

    entries = goatclaw.schedules(next=next_n, store=store if store is not None else True)
    if as_json:
        print(json.dumps(entries, indent=2, default=str))
    else:
        _print(entries)
    if any("error" in e for e in entries):
        raise typer.Exit(2)


def _print(entries: list[dict[str, Any]]) -> None:
    from goatclaw.cli.terminal import printable

    out, err = _out(), _err()
    if not entries:
        out.print("no scheduled pipelines (add schedule: to a pipeline file; see docs/schedules.md)", markup=False)
        return
    for e in entries:
        if "error" in e:
            err.print(f"error: {printable(e['error'])}", markup=False, highlight=False, soft_wrap=True)
            continue
        last = ""
        if e.get("last_fire"):
            from datetime import datetime

            when = datetime.fromtimestamp(e["last_fire"]).strftime("%Y-%m-%d %H:%M")
            last = f"  last {when} {e.get('last_run') or ''} {e.get('last_status') or ''}".rstrip()
        out.print(printable(f"{e['file']}  {e['pipeline']}#{e['schedule']}  '{e['cron']}' {e['timezone']}  "
                            f"overlap={e['overlap']} catch_up={e['catch_up']}{last}"),
                  markup=False, highlight=False, soft_wrap=True)
        for when in e["next"]:
            out.print(f"    {when}", markup=False, highlight=False)
