"""``goatclaw audit show`` and ``goatclaw audit verify``: the store's tamper-evident record of side effects.

Registered on the app by importing this module (``goatclaw.cli.app`` does). ``verify``
exits 0 with the row count when the chain is intact, 1 naming the first altered or
missing row when it is not.
"""


import json
from datetime import datetime
from typing import Annotated, Any

import typer

from goatclaw.cli import options
from goatclaw.cli.app import JsonOption, StoreOption, _out, _store_file, app, handles_errors
from goatclaw.cli.lines import escape

__all__ = ["audit_app"]

audit_app = typer.Typer(help="The audit chain: every side effect of every run, hash-linked.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")




@audit_app.command("show")
@handles_errors
def audit_show(
    run: Annotated[str | None, typer.Option("--run", "-r", help="Only this run (id, prefix or 'last').")] = None,
    action: Annotated[str | None, typer.Option("--action", "-a", help="Only this action (e.g. file.written, "
                                                                       "or 'threat').")] = None,
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1, max=options.MAX_ID,
                                              help="Only the newest N rows.")] = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """The audit rows in chain order: when, which run and task, what happened."""
    from goatclaw.audit import audit_log

    rows = audit_log(_store_file(store), run=run, action=action, limit=limit)
    if as_json:
        print(json.dumps([r.to_dict() for r in rows], indent=2, ensure_ascii=False, default=str))
        return
    console = _out()
    if not rows:
        console.print("no audit rows")
        return
    for r in rows:
        when = datetime.fromtimestamp(r.ts).strftime("%Y-%m-%d %H:%M:%S")
        where = f"{r.run_id or '-'} {r.task_id or '-'}"
        style = "red" if r.action in ("permission.denied", "threat.detected", "run.blocked") else "cyan"
        console.print(f"{r.seq:>6} {when} [{style}]{escape(r.action):<18}[/] [dim]{escape(where)}[/dim] "
                      f"{escape(_summary(r.data))}", markup=True, soft_wrap=True)


def _summary(data: Any) -> str:
    if not isinstance(data, dict):
        return str(data)
    return " ".join(f"{k}={json.dumps(v, ensure_ascii=False, default=str)}" for k, v in data.items()
                    if v is not None and k != "item")


@audit_app.command("verify")
@handles_errors
def audit_verify(
    store: StoreOption = None,
    as_json: JsonOption = False,
    keyed_from: Annotated[int | None, typer.Option(
        "--keyed-from", min=1, max=options.MAX_ID,
        help="Every row from this one on must be keyed (with GOATCLAW_AUDIT_KEY).")] = None,
) -> None:
    """Check every row's hash and link and the chain's head; exit 1 at the first altered or missing row.

    Keyed rows (written while GOATCLAW_AUDIT_KEY was set) are checked with that key.
    """
    from goatclaw.audit import verify_audit

    verdict = verify_audit(_store_file(store), keyed_from=keyed_from)
    if as_json:
        print(json.dumps(verdict.to_dict(), indent=2))
    elif verdict.ok:
        _out().print(f"[green]✓[/] {escape(str(verdict))}", markup=True)
    else:
        typer.echo(f"✗ {verdict}", err=True)
    if not verdict.ok:
        raise typer.Exit(1)
