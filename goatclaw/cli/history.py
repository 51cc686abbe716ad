"""Commands over stored runs: ``runs events|replay|prune``, ``dlq list|show|replay``, ``stats``, ``health``.

Registered on the app by importing this module (``goatclaw.cli.app`` does). Each command
parses, calls :mod:`goatclaw.history` or the store, and hands the result to a renderer.
"""


import json
from typing import Annotated, Any

import typer

from goatclaw.cli import options
from goatclaw.cli.app import (
    JsonOption,
    Output,
    StoreOption,
    _err,
    _open_store,
    _out,
    _output_mode,
    _store_file,
    app,
    handles_errors,
    runs_app,
)

__all__ = ["dlq_app"]

dlq_app = typer.Typer(help="Dead letters: tasks that failed for good, subscribers that raised.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")




def _seconds(text: str, option: str) -> float:
    """A duration option in seconds (already checked where it was parsed: see :func:`options.duration`)."""
    return options.seconds(text)


@runs_app.command("events")
@handles_errors
def runs_events(
    run: Annotated[str, typer.Argument(help="A run id, a unique prefix of one, or 'last'.")] = "last",
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the run ends.")] = False,
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document per line.")] = False,
) -> None:
    """Print a run's event log (seq, time, topic, task, data)."""
    from goatclaw import history
    from goatclaw.cli.render import event_line
    from goatclaw.cli.terminal import printable

    for ev in history.events(_store_file(store), run, follow=follow):
        print(json.dumps(ev, ensure_ascii=False, default=str) if as_json else printable(event_line(ev)), flush=True)


@runs_app.command("logs")
@handles_errors
def runs_logs(
    run: Annotated[str, typer.Argument(help="A run id, a unique prefix of one, or 'last'.")] = "last",
    task: Annotated[str | None, typer.Argument(help="Only this task's lines.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the run ends.")] = False,
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document per line.")] = False,
) -> None:
    """Print what a run's tasks logged (plugins' log records, shell stderr, warnings), in order, secrets masked."""
    from goatclaw import history
    from goatclaw.cli.render import level_name, log_line
    from goatclaw.cli.terminal import printable

    for line in history.logs(_store_file(store), run, task, follow=follow):
        if as_json:
            shown = {**line, "level": level_name(line["level"]), "levelno": line["level"]}
            print(json.dumps(shown, ensure_ascii=False), flush=True)
        else:
            print(printable(log_line(line)), flush=True)


@runs_app.command("replay")
@handles_errors
def runs_replay(
    run: Annotated[str, typer.Argument(help="A run id, a unique prefix of one, or 'last'.")] = "last",
    speed: Annotated[float | None, typer.Option("--speed", callback=options.positive,
                                                help="Replay in real time times this (e.g. 10).")] = None,
    output: Annotated[Output, typer.Option("--output", "-o", help="rich or plain.")] = Output.auto,
    store: StoreOption = None,
) -> None:
    """Show a past run again, event by event, through the live view; nothing runs."""
    import goatclaw
    from goatclaw import history
    from goatclaw.cli.render import LiveView, PlainView

    path = _store_file(store)
    bus = goatclaw.Bus()
    if _output_mode(output) == "rich":
        with LiveView(bus, _out()):
            count = history.replay(path, run, bus, speed=speed)
    else:
        PlainView(bus)
        count = history.replay(path, run, bus, speed=speed)
    _err().print(f"replayed {count} events")


@runs_app.command("prune")
@handles_errors
def runs_prune(
    older_than: Annotated[str, typer.Option("--older-than", callback=options.duration,
                                            help="Delete runs started before this (30d, 12h).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what would go.")] = False,
    store: StoreOption = None,
) -> None:
    """Delete old runs with their tasks, attempts, events and dead letters (running runs stay)."""
    from goatclaw import history

    counts = history.prune(_store_file(store), older_than=_seconds(older_than, "--older-than"), dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    _err().print(f"{verb} {counts['runs']} run{'s' if counts['runs'] != 1 else ''}"
                 + ("" if dry_run else f" ({counts.get('events', 0)} events, {counts.get('cache', 0)} cached outputs)"))


@dlq_app.command("list")
@handles_errors
def dlq_list(
    run: Annotated[str | None, typer.Option("--run", help="Only this run's dead letters.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=options.MAX_ID, help="How many.")] = 50,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """The newest dead letters."""
    from goatclaw.cli.render import print_dead_letters

    with _open_store(store) as db:
        run_id = None
        if run is not None:
            row = db.run(run)
            run_id = row.id if row else run
        letters = db.dead_letters(limit=limit, run_id=run_id)
    if as_json:
        print(json.dumps([d.__dict__ for d in letters], indent=2, default=str))
    else:
        print_dead_letters(letters, _out())


@dlq_app.command("show")
@handles_errors
def dlq_show(
    letter: Annotated[int, typer.Argument(min=1, max=options.MAX_ID, help="The dead letter's id.")],
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """One dead letter: the task or event, its inputs (secrets masked) and the error."""
    from goatclaw.cli.render import print_dead_letter
    from goatclaw.errors import GoatclawError

    with _open_store(store) as db:
        found = db.dead_letter(letter)
    if found is None:
        raise GoatclawError(f"no dead letter {letter}")
    if as_json:
        print(json.dumps(found.__dict__, indent=2, default=str))
    else:
        print_dead_letter(found, _out())


@dlq_app.command("replay")
@handles_errors
def dlq_replay(
    letter: Annotated[int, typer.Argument(min=1, max=options.MAX_ID, help="The dead letter's id.")],
    force: Annotated[bool, typer.Option("--force", help="Replay even if the pipeline file changed.")] = False,
    store: StoreOption = None,
) -> None:
    """Re-run a dead letter's task in its original run's context (its needs' stored outputs, same vars)."""
    import goatclaw
    from goatclaw import history
    from goatclaw.cli import border
    from goatclaw.cli.render import PlainView, print_result

    bus = goatclaw.Bus()
    PlainView(bus, footer=False)  # print_result writes the last line
    result = border.run(history.replay_dead_letter(_store_file(store), letter, force=force, bus=bus))
    print_result(result, _out())
    if not result.ok:
        raise typer.Exit(1)


@app.command()
@handles_errors
def stats(
    since: Annotated[str | None, typer.Option("--since", callback=options.duration,
                                              help="Only runs started within this (7d, 12h).")] = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Per plugin and per task: runs, success rate, p50/p95 duration, attempts, cache hits, LLM tokens and cost."""
    from goatclaw import history
    from goatclaw.cli.render import print_stats

    data = history.stats(_store_file(store), since=None if since is None else _seconds(since, "--since"))
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        print_stats(data, _out())


@app.command()
@handles_errors
def health(
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """The store's size, integrity and WAL; open breakers, dead letters, the last day's error rate."""
    from goatclaw import history
    from goatclaw.cli.render import print_health

    data: dict[str, Any] = history.health(_store_file(store))
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        print_health(data, _out())
    if not data["ok"]:
        raise typer.Exit(1)
